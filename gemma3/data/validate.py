"""``validate``: every problem of every sample of an annotation file or dataset release, before a long run.

The command is ``video-gemma validate`` (or ``python dataset.py validate``); with ``--model_path`` the length of
each sample is counted exactly as training counts it (the model family's media plugin, given as ``encode``). A
``FORMAT:ROOT[:SPLIT]`` release is read as training reads it, every missing clip reported (none refused). The
report also says what was downloaded: samples per class, clip durations, frame rates and resolutions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gemma3.data.media import MediaError, read_image, read_video
from gemma3.data.records import AnnotationError, check_tags, parse_record, read_records
from gemma3.data.releases import ReleaseError, get_release, parse_spec
from gemma3.data.sample import Sample


@dataclass
class Problem:
    index: int
    id: str
    field: str
    path: str
    problem: str


@dataclass
class MediaStats:
    """What the clips are: samples per class (the reply), and the videos' durations, frame rates, resolutions."""

    per_class: Counter = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)
    frame_rates: Counter = field(default_factory=Counter)
    resolutions: Counter = field(default_factory=Counter)

    def add_video(self, frames) -> None:
        """Record one read clip (`gemma3.data.media.VideoFrames`)."""
        h, w = frames.frames.shape[1:3]
        self.resolutions[f"{w}x{h}"] += 1
        if frames.source_fps:
            self.frame_rates[round(float(frames.source_fps), 2)] += 1
            self.durations.append(frames.source_frames / float(frames.source_fps))

    def to_dict(self) -> dict:
        d = self.durations
        return {
            "per_class": dict(sorted(self.per_class.items())),
            "durations_s": {"min": min(d), "mean": sum(d) / len(d), "max": max(d)} if d else {},
            "frame_rates": {str(k): v for k, v in sorted(self.frame_rates.items())},
            "resolutions": dict(self.resolutions.most_common()),
        }


@dataclass
class ValidationReport:
    annotation: str
    total: int
    problems: list[Problem]
    stats: MediaStats = field(default_factory=MediaStats)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "annotation": self.annotation,
            "total": self.total,
            "num_bad_samples": len({p.index for p in self.problems}),
            "problems": [dataclasses.asdict(p) for p in self.problems],
            **self.stats.to_dict(),
        }


def _file_samples(path, media_root, problems: list[Problem]) -> tuple[int, Iterator[tuple[int, Sample]]]:
    """(record count, the parsed samples with their index) of an annotation file; bad records become problems."""
    records = read_records(path)
    root = Path(path).parent if media_root is None else media_root

    def parsed() -> Iterator[tuple[int, Sample]]:
        for i, rec in enumerate(records):
            try:
                yield i, parse_record(rec, f"{path}:{i}", root)
            except AnnotationError as err:
                rid = str(rec.get("id", "")) if isinstance(rec, dict) else ""
                problems.append(Problem(i, rid, "record", "", str(err)))

    return len(records), parsed()


def _release_samples(spec, problems: list[Problem]) -> tuple[int, Iterator[tuple[int, Sample]]]:
    """(record count, the samples with their index) of a release; a missing clip is a problem naming its path."""
    reader = get_release(spec, max_missing_fraction=1.0)
    records = reader.records()

    def parsed() -> Iterator[tuple[int, Sample]]:
        for i, r in enumerate(records):
            paths = ([r.media] if isinstance(r.media, str) else list(r.media)) + list(r.files)
            gone = [p for p in paths if not Path(p).exists()]
            if gone:
                problems.append(Problem(i, r.id, r.kind, gone[0], f"not found ({r.source})"))
                continue
            try:
                yield i, reader.to_sample(r)
            except (ReleaseError, AnnotationError, ValueError, OSError) as err:
                problems.append(Problem(i, r.id, "record", r.source, str(err)))

    return len(records), parsed()


def validate_annotations(
    path: str | Path,
    media_root: str | Path | None = None,
    tokenizer=None,
    max_length: int | None = None,
    check_media: bool = True,
    encode=None,
) -> ValidationReport:
    """Every problem of every sample: bad record, missing file, unreadable or zero-frame video, no assistant
    turn or an empty reply, tag count not matching media, and a sample over ``max_length`` tokens.

    With ``encode`` (a model's data plugin: sample -> tensors, see `gemma3.model.families.Family.data_side`) the length
    is the exact training length: chat template, expanded video placeholders or image soft tokens included.
    Without it, only the raw text is counted with ``tokenizer`` (a lower bound)."""
    problems: list[Problem] = []
    stats = MediaStats()
    spec = parse_spec(path)
    try:
        total, samples = _release_samples(spec, problems) if spec else _file_samples(path, media_root, problems)
    except (AnnotationError, ReleaseError, json.JSONDecodeError) as err:
        return ValidationReport(str(path), 0, [Problem(-1, "", "file", str(path), str(err))])
    for i, s in samples:
        before = len(problems)  # encode only samples with no problem so far
        if s.reference is not None:
            stats.per_class[s.reference] += 1
        replies = [m["content"] for m in s.messages if m["role"] == "assistant"]
        if not replies:
            problems.append(Problem(i, s.id, "conversations", "", "no assistant turn"))
        elif any(isinstance(r, str) and not r.strip() for r in replies):
            problems.append(Problem(i, s.id, "conversations", "", "empty assistant reply (training skips it)"))
        try:
            check_tags(s)
        except AnnotationError as err:
            problems.append(Problem(i, s.id, "tags", "", str(err)))
        if check_media:
            for m in s.media:
                paths = list(m.path) if isinstance(m.path, tuple) else [m.path]
                try:
                    if m.kind == "video" and not isinstance(m.path, tuple):
                        stats.add_video(read_video(m.path, 1))
                    else:
                        for p in paths:
                            read_image(p)
                except MediaError as err:
                    problems.append(Problem(i, s.id, m.kind, str(paths[0]), str(err)))
        if encode is not None and max_length is not None and len(problems) == before:
            try:
                n = len(encode(s)["input_ids"])
            except (MediaError, AnnotationError, ValueError, OSError) as err:
                problems.append(Problem(i, s.id, "encode", "", str(err)))
            else:
                if n > max_length:
                    why = f"{n} tokens with template and media, over max_length={max_length}"
                    problems.append(Problem(i, s.id, "length", "", why))
        elif tokenizer is not None and max_length is not None:
            text = "".join(m["content"] for m in s.messages if isinstance(m["content"], str))
            n = len(tokenizer(text, add_special_tokens=False).input_ids)
            if n > max_length:
                problems.append(Problem(i, s.id, "text", "", f"text is {n} tokens, over max_length={max_length}"))
    return ValidationReport(str(path), total, problems, stats)


def build_parser() -> argparse.ArgumentParser:
    """``validate ANNOTATION [--media-root] [--tokenizer | --model_path] [--max-length] [--json]``."""
    v = argparse.ArgumentParser(prog="validate", description="report every bad sample of an annotation file")
    v.add_argument("annotation", help="annotation file, or a dataset release as FORMAT:ROOT[:SPLIT]")
    v.add_argument("--media-root", default=None)
    v.add_argument("--tokenizer", default=None, help="tokenizer folder/id: --max-length on the raw text only")
    v.add_argument(
        "--model_path", default=None, help="model or training output: --max-length exactly as training counts"
    )
    v.add_argument("--max-length", type=int, default=None)
    v.add_argument("--json", default=None, help="also write the report here")
    return v


def print_report(args: argparse.Namespace, encode: Callable | None = None) -> int:
    """Validate as the parsed ``args`` say and print the report; ``encode``: the model's data plugin as a
    sample -> tensors function (what ``--model_path`` names; the command resolves it). Exit code: 0 clean, 1 some
    problem, 2 the annotation file is missing."""
    tok = None
    if args.tokenizer:
        from transformers import AutoTokenizer  # only when asked: the report needs no tokenizer otherwise

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    try:
        report = validate_annotations(args.annotation, args.media_root, tok, args.max_length, encode=encode)
    except FileNotFoundError as err:
        print(f"error: {err}")
        return 2
    for p in report.problems:
        print(f"[{p.index}] id={p.id} field={p.field} path={p.path}: {p.problem}")
    bad = len({p.index for p in report.problems})
    print(f"{report.total} samples, {bad} bad, {len(report.problems)} problems")
    summary = report.stats.to_dict()
    if summary["per_class"]:
        print(f"{len(summary['per_class'])} classes / answers; clips: durations {summary['durations_s'] or '-'}, "
              f"frame rates {summary['frame_rates'] or '-'}, resolutions {summary['resolutions'] or '-'}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 1 if report.problems else 0
