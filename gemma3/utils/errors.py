"""The errors a command-line user is expected to meet, and the top level that turns them into one message.

Every command's entry point (``video-gemma SUB``, the scripts, the ``python -m gemma3...`` forms) runs its
``main`` through `run_main`: an expected error -- a missing path, a bad argument, unreadable media, an incompatible
or half-written checkpoint, a full disk -- prints ``error: <message>`` on stderr and exits 2 (1 for a full disk
or another OS error, 130 for Ctrl-C); anything else is a bug and keeps its traceback. ``--debug`` (or
``VIDEO_GEMMA_DEBUG=1``) shows the traceback of expected errors too.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

DEBUG_FLAG = "--debug"
DEBUG_ENV = "VIDEO_GEMMA_DEBUG"


class UserError(Exception):
    """An error in what the user gave (a path, an argument, a file's contents), not in the project: its message
    says which file, sample or field and what to do. The project's specific errors (`MediaError`,
    `AnnotationError`, `CheckpointError`, ...) derive from it."""


class CheckpointError(UserError, ValueError):
    """A checkpoint folder that cannot be used: a missing or truncated file, a config of another family, weights
    that do not fit the model. Nothing is trained or predicted on partially loaded weights."""


# ValueError: the standard library's and the project's own 'this argument / value is not acceptable'; OSError: a
# missing file, a permission, a full disk, an unreachable hub (huggingface_hub's errors are OSErrors).
EXPECTED: tuple[type[BaseException], ...] = (UserError, ValueError, OSError)


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Name ``path`` in an OS error raised while writing it (a write on a full disk does not say which file)."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def describe(err: BaseException) -> str:
    """One line for the user: the message, with what filled when the disk is full."""
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = err.filename or "the output folder"
        text = (
            f"no space left on the device while writing {where}: free space there and rerun (finished outputs are kept)"
        )
    return text


def exit_code(err: BaseException) -> int:
    """2 for a bad input (argparse's convention), 1 for an OS error (full disk, permission), 130 for Ctrl-C."""
    if isinstance(err, KeyboardInterrupt):
        return 130
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return 1
    return 2


def run_main(main: Callable[[list[str]], object], argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run a command's ``main(argv)`` and return its exit code; expected errors become ``prog: error: message``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if DEBUG_FLAG in argv:
        argv.remove(DEBUG_FLAG)
        debug = True
    name = prog or os.path.basename(sys.argv[0] or "video-gemma")
    try:
        result = main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{name}: interrupted (finished outputs are kept; rerun the same command to resume)", file=sys.stderr)
        return 130
    except EXPECTED as err:
        if debug:
            raise
        print(f"{name}: error: {describe(err)}", file=sys.stderr)
        print(f"{name}: (rerun with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return exit_code(err)
    return result if isinstance(result, int) else 0
