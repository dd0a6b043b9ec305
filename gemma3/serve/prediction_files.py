"""Prediction files: JSONL records written as they are made, read back line by line (a torn last line from a kill
is ignored), one writer per file (a lock), and sharding over processes.

Sharded inference (``torchrun --nproc_per_node N gemma3n_batch_inference.py ...``): rank r of N takes the samples at
positions r, r + N, ... of the full list and writes them to its own shard, ``<output>.shards/rankRRR-of-NNN.jsonl``
(resumable like any predictions file). Ids that any shard file or the output already holds with a result are
skipped, so a restart with another process count repeats nothing. The process that finds every id written merges
the shards and the earlier output into ``<output>`` (atomically, each id once, in the samples' order); the shards
stay beside it, so a rerun finds them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from gemma3.utils.errors import writing
from gemma3.utils.locks import exclusive_lock


def read_records_by_line(path: Path) -> list[tuple[str, dict | None]]:
    """Each line of a predictions file with its record (None for a torn or unreadable line)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        out.append((line, rec if isinstance(rec, dict) else None))
    return out


def drop_torn_tail(path: Path) -> int:
    """Cut a torn last line (a write that a kill interrupted) off a JSONL file; returns the bytes removed. Every
    record is one line ending in a newline, so the file is whole up to its last newline."""
    if not path.exists() or not path.stat().st_size:
        return 0
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            chunk = f.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
    return size - keep


def done_ids(lines: list[tuple[str, dict | None]]) -> set[str]:
    """Ids written with a result (a torn line from a kill is ignored; records with an ``error`` field do not count:
    they are retried)."""
    return {str(rec["id"]) for _, rec in lines if rec is not None and "id" in rec and "error" not in rec}


def drop_failed(path: Path, lines: list[tuple[str, dict | None]], retry: set[str]) -> int:
    """Rewrite ``path`` without the error records of ``retry`` ids (atomically), so a retried id is written once.
    ``lines``: the file as `read_records_by_line` read it (it is not read again)."""
    failed = [rec is not None and "error" in rec and str(rec.get("id")) in retry for _, rec in lines]
    if not any(failed):
        return 0
    kept = [line for (line, rec), drop in zip(lines, failed) if rec is not None and not drop]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return sum(failed)


def output_lock(path: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on a predictions file: a second process writing the same file stops with a clear error
    instead of interleaving records."""
    busy = f"{path}: another inference process is writing this file; wait for it or use another --output"
    return exclusive_lock(path.with_name(path.name + ".lock"), busy)


def append_records(path: Path, records: list[dict]) -> None:
    """Append records, one JSON line each, and make them durable (fsync); an OS error (a full disk) names ``path``
    and leaves the records before these intact (a torn last line is repaired on the next run)."""
    with writing(path), path.open("a") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def distributed_world() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them (``RANK`` / ``WORLD_SIZE``); (0, 1) without a launcher."""
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError as err:
        raise ValueError(f"RANK / WORLD_SIZE must be integers ({err})") from err
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not within WORLD_SIZE={world}")
    return rank, world


def shard_folder(output: Path) -> Path:
    return output.with_name(output.name + ".shards")


def shard_file(output: Path, rank: int, world: int) -> Path:
    """Where rank ``rank`` of ``world`` writes its records."""
    return shard_folder(output) / f"rank{rank:03d}-of-{world:03d}.jsonl"


def prediction_sources(output: Path) -> list[Path]:
    """The output (when there) and every shard file: the files whose records count as written."""
    folder = shard_folder(output)
    shards = sorted(folder.glob("rank*-of-*.jsonl")) if folder.is_dir() else []
    return ([output] if output.exists() else []) + shards


def finished_ids(paths: Iterable[Path]) -> set[str]:
    """Ids written with a result in any of ``paths``."""
    return {i for p in paths for i in done_ids(read_records_by_line(p))}


def merge_predictions(sample_ids: list[str], output: Path) -> dict | None:
    """Merge every source (`prediction_sources`) into ``output`` when each id of ``sample_ids`` has a record there
    (a result, or the error of its last attempt); None while some id has none, and None for every process of a
    torchrun launch but the first to merge (ranks that finish together would otherwise each merge, and each score).
    One record per id (a result before an error, a later file before an earlier one), in ``sample_ids`` order,
    written atomically under a lock."""
    import fcntl

    output.parent.mkdir(parents=True, exist_ok=True)
    launch = os.environ.get("TORCHELASTIC_RUN_ID")  # the same in every process of one torchrun launch
    marker = output.with_name(output.name + ".merged-by")
    with output.with_name(output.name + ".merge.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if launch and output.exists() and marker.exists() and marker.read_text() == launch:
            return None  # another process of this launch merged (and scores)
        best: dict[str, dict] = {}
        sources = prediction_sources(output)
        for path in sources:
            for _, rec in read_records_by_line(path):
                if rec is None or "id" not in rec:
                    continue
                rid = str(rec["id"])
                if rid not in best or "error" in best[rid] or "error" not in rec:
                    best[rid] = rec
        missing = [i for i in sample_ids if i not in best]
        if missing:
            return None
        tmp = output.with_name(output.name + f".merge{os.getpid()}")
        with tmp.open("w") as f:
            for rid in sample_ids:
                f.write(json.dumps(best[rid], ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
        if launch:
            marker.write_text(launch)
        errors = sum("error" in best[i] for i in sample_ids)
        return {"records": len(sample_ids), "errors": errors, "sources": len(sources), "output": str(output)}
