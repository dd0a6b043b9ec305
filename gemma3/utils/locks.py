"""One writer per output: an exclusive, advisory file lock that the operating system drops when its process ends
(a run killed with -9 leaves no stale lock behind)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from gemma3.utils.errors import UserError


class BusyError(UserError, RuntimeError):
    """Another process holds the output this one would write."""


@contextlib.contextmanager
def exclusive_lock(lock: Path, busy: str) -> Iterator[None]:
    """Hold ``lock`` (created when missing) for the block; when another process holds it, raise `BusyError` with
    ``busy`` (what is being written and what to do) and the lock's path and holder."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    f = lock.open("a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise BusyError(f"{busy} (lock {lock}, held by {holder})") from err
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()
