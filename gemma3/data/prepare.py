"""Prepare real QEVD-style data: clips + a labels file -> annotation files with a seeded 60/20/20 split.

    python -m gemma3.data.prepare --videos data/qevd/videos --labels labels.json --out data/qevd --seed 42

The labels file is a JSON list, JSONL or CSV with ``video_path`` (relative to ``--videos``) and
``labels_descriptive``. The answer is ``<exercise> - <feedback>``: a ``labels_descriptive`` string that already has
the form is kept; a list gives the exercise (``exercise`` field if present, else its first item) and the rest as
feedback joined with "; ".

Grouping: a clip and its variants share a source id, the file stem without a trailing ``_aug<N>``, ``_var<N>``,
``_v<N>``, ``_flip`` or ``_copy<N>``; whole groups go to one split. Missing or unreadable videos and duplicate
label rows are reported in ``validation_report.json`` and left out (a run where nothing is usable is an error).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import sys
from pathlib import Path

from gemma3.data.media import MediaError, read_video
from gemma3.data.synthetic import split_groups, write_dataset
from gemma3.data.validate import validate_annotations
from gemma3.utils.errors import run_main

logger = logging.getLogger(__name__)

QUESTION = "Which exercise is being performed, and what feedback would you give on the form?"
_VARIANT = re.compile(r"(_aug\d*|_var\d*|_v\d+|_flip|_copy\d*)$")


def source_id(video_path: str) -> str:
    """Group key: the stem without variant suffixes (``clip_001_aug2.mp4`` -> ``clip_001``)."""
    stem = Path(video_path).stem
    while True:
        new = _VARIANT.sub("", stem)
        if new == stem:
            return stem
        stem = new


def read_labels(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    return data if isinstance(data, list) else list(data.values())


def build_answer(rec: dict) -> str:
    labels = rec.get("labels_descriptive")
    if isinstance(labels, str):
        try:
            parsed = json.loads(labels)  # CSV cells may hold a JSON list
            labels = parsed if isinstance(parsed, list) else labels
        except json.JSONDecodeError:
            pass
    if isinstance(labels, str):
        return labels.strip()
    if not labels:
        raise ValueError("empty labels_descriptive")
    labels = [str(x).strip() for x in labels if str(x).strip()]
    exercise = rec.get("exercise") or labels[0]
    feedback = [x for x in labels if x != exercise]
    return f"{exercise} - {'; '.join(feedback)}" if feedback else exercise


def prepare(
    videos: str | Path,
    labels: str | Path,
    out: str | Path,
    seed: int = 42,
    split: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> dict:
    """Write annotations/{train,val,test}.json, classes.txt, checksums, dataset_info and validation_report."""

    videos, out = Path(videos).resolve(), Path(out)
    if not videos.is_dir():
        raise FileNotFoundError(f"--videos {videos}: no such folder")
    if not Path(labels).is_file():
        raise FileNotFoundError(f"--labels {labels}: no such file")
    try:
        rows = read_labels(labels)
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as err:
        raise ValueError(f"{labels}: unreadable labels file ({err})") from err
    out.mkdir(parents=True, exist_ok=True)
    problems, groups, seen = [], {}, {}
    for i, rec in enumerate(rows):
        if not isinstance(rec, dict):
            problems.append({"index": i, "field": "record", "problem": "not an object"})
            continue
        rel = str(rec.get("video_path", "")).strip()
        if not rel:
            problems.append({"index": i, "field": "video_path", "problem": "missing video_path"})
            continue
        if rel in seen:
            problems.append(
                {"index": i, "field": "video_path", "path": rel, "problem": f"duplicate of label row {seen[rel]}"}
            )
            continue
        seen[rel] = i
        if not (videos / rel).is_file():
            problems.append({"index": i, "field": "video_path", "path": rel, "problem": "file not found"})
            continue
        try:
            read_video(videos / rel, 1)
        except MediaError as err:
            problems.append({"index": i, "field": "video_path", "path": rel, "problem": f"unreadable: {err}"})
            continue
        try:
            answer = build_answer(rec)
        except ValueError as err:
            problems.append({"index": i, "field": "labels_descriptive", "path": rel, "problem": str(err)})
            continue
        media = (
            Path(videos / rel).relative_to(out.resolve())
            if (videos / rel).is_relative_to(out.resolve())
            else videos / rel
        )
        groups.setdefault(source_id(rel), []).append(
            {
                "id": Path(rel).with_suffix("").as_posix().replace("/", "__"),
                "video": str(media),
                "group": source_id(rel),
                "conversations": [{"from": "human", "value": f"<video>\n{QUESTION}"}, {"from": "gpt", "value": answer}],
            }
        )
    if not groups:
        raise ValueError(
            f"{labels}: no usable clip among {len(rows)} label rows ({len(problems)} problems, e.g. "
            f"{problems[0] if problems else 'empty file'})"
        )
    assignment = split_groups(list(groups), split, seed)
    records = {"train": [], "val": [], "test": []}
    for gid, recs in groups.items():
        records[assignment[gid]] += recs
    classes = sorted({r["conversations"][1]["value"].partition(" - ")[0] for rs in groups.values() for r in rs})
    info = write_dataset(
        out,
        records,
        classes,
        {
            "source_videos": str(videos),
            "labels": str(labels),
            "seed": seed,
            "split": list(split),
            "skipped": len(problems),
        },
    )

    reports = {s: validate_annotations(out / "annotations" / f"{s}.json", out).to_dict() for s in records}
    (out / "validation_report.json").write_text(json.dumps({"labels_file_problems": problems, **reports}, indent=1))
    if problems:
        logger.warning("%d label records skipped; see %s", len(problems), out / "validation_report.json")
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = prepare(args.videos, args.labels, args.out, args.seed)
    print(json.dumps(info["counts"]))


if __name__ == "__main__":
    sys.exit(run_main(main))
