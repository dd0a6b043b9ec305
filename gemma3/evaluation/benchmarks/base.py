"""Benchmark interface and registry: each benchmark reads its data, builds prompts, and scores predictions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from gemma3.data.formats import load_annotations, parse_record, read_records
from gemma3.data.releases import DEFAULT_MAX_MISSING_FRACTION, get_release, parse_spec

BENCHMARKS: dict[str, type[Benchmark]] = {}


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    BENCHMARKS[cls.name] = cls
    return cls


def benchmark_class(name: str) -> type[Benchmark]:
    """The registered class of a benchmark name (a clear error naming the registered ones)."""
    if name not in BENCHMARKS:
        raise KeyError(f"Unknown benchmark {name!r}; registered: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def get_benchmark(name: str, **kwargs) -> Benchmark:
    return benchmark_class(name)(**kwargs)


@dataclass
class EvalSample:
    id: str
    media: str | None
    prompt: str
    reference: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def read_predictions(path: str | Path, report: dict | None = None) -> list[dict]:
    """Predictions JSONL (``id``, ``prediction``, optional ``reference`` and extras), one record per id.

    Unreadable lines are skipped and listed in ``report["unreadable_lines"]`` (a torn last line is what an
    interrupted write leaves); an id written more than once keeps its last record and is listed in
    ``report["duplicate_ids"]``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    by_id: dict[str, dict] = {}
    unreadable, counts = [], {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            unreadable.append(n)
            continue
        if not isinstance(rec, dict) or "id" not in rec:
            raise ValueError(f"{path}:{n}: prediction record has no 'id'")
        rec.setdefault("prediction", "")
        rid = str(rec["id"])
        counts[rid] = counts.get(rid, 0) + 1
        by_id.pop(rid, None)
        by_id[rid] = rec
    if report is not None:
        report["unreadable_lines"] = unreadable
        report["duplicate_ids"] = sorted(i for i, c in counts.items() if c > 1)
    return list(by_id.values())


def references_from_annotations(
    path: str | Path, max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION
) -> dict[str, dict]:
    """id -> {reference, question, media, extras} from an annotation file (either format, or MVBench-style) or a
    ``FORMAT:ROOT[:SPLIT]`` release (its samples whose media are on disk, with what the release records for scoring;
    refused when more than ``max_missing_fraction`` of its clips are missing)."""
    if parse_spec(path) is not None:
        return {s.id: _sample_reference(s) for s in load_annotations(path, max_missing_fraction=max_missing_fraction)}
    refs = {}
    for i, rec in enumerate(read_records(path)):
        rid = str(rec.get("id", i))
        if "conversations" in rec or "messages" in rec:
            sample = parse_record(rec, f"{path}:{i}")
            ref = sample.reference
            q = next((m["content"] for m in sample.messages if m["role"] == "user"), "")
        else:
            ref, q = rec.get("answer"), rec.get("question", "")
        refs[rid] = {
            **{k: v for k, v in rec.items() if k not in ("conversations", "messages")},
            "reference": ref,
            "question": q,
        }
    return refs


def _sample_reference(sample) -> dict:
    media = sample.media[0] if sample.media else None
    media_key = {} if media is None or not isinstance(media.path, str) else {media.kind: media.path}
    question = next((m["content"] for m in sample.messages if m["role"] == "user"), "")
    return {**sample.extra, **media_key, "id": sample.id, "reference": sample.reference, "question": question}


def release_classes(path: str | Path) -> list[str] | None:
    """The class list of a ``FORMAT:ROOT[:SPLIT]`` classification release (None for a file or a non-class one)."""
    spec = parse_spec(path)
    return (get_release(spec).classes() or None) if spec is not None else None


class Benchmark:
    """One benchmark: ``load_samples`` -> ``build_prompt`` -> (model) -> ``score`` -> ``plot``."""

    name: ClassVar[str] = ""
    tag: ClassVar[str] = "<video>"
    takes_classes: ClassVar[bool] = False  # scored against a class list (``--classes``, ``--synonyms``)
    ranks: ClassVar[bool] = False  # with --model_path its class list is also ranked by log-likelihood (top-1 / top-5)
    streams: ClassVar[bool] = False  # scores what a model said over long videos (stream outputs), not one reply each

    def load_samples(self, annotation_path: str | Path, media_root: str | Path | None = None) -> list[EvalSample]:
        refs = references_from_annotations(annotation_path)
        root = Path(media_root or Path(annotation_path).parent)
        out = []
        for rid, r in refs.items():
            media = r.get("video") or r.get("image")
            out.append(EvalSample(rid, str(root / media) if media else None, self.build_prompt(r), r["reference"], r))
        return out

    def build_prompt(self, record: dict) -> str:
        q = record.get("question") or ""
        return q if self.tag in q else f"{self.tag}\n{q}"

    def score(self, predictions: list[dict], references: dict[str, dict] | None = None) -> dict:
        raise NotImplementedError

    def plot(self, results: dict, out_png: str | Path) -> Path | None:
        return None

    @staticmethod
    def pair(predictions: list[dict], references: dict[str, dict] | None) -> list[tuple[dict, str]]:
        """(prediction record, reference) for every prediction; missing references are an error."""
        out = []
        for p in predictions:
            ref = p.get("reference")
            if references is not None and str(p["id"]) in references:
                ref = references[str(p["id"])]["reference"]
            if ref is None:
                raise ValueError(f"prediction {p['id']!r} has no reference (pass --annotations)")
            out.append((p, ref))
        return out
