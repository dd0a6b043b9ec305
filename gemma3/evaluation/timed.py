"""Timed feedback evaluation on long videos, in the QEVD-FIT-COACH style.

Ground truth per video: ``{"video": ..., "events": [{"t": seconds, "text": ..., "label": ...}, ...]}``; predictions:
the feedback a streaming model emitted, ``[{"t": seconds, "text": ...}, ...]``.

Matching follows the official FitCoach evaluator (github:Qualcomm-AI-research/FitCoach, ``src/evaluators.py``,
``InteractiveFeedbackEvaluator``): walking one list in time order, each event looks only at the nearest event of the
other list and takes it when the two are less than ``tolerance / 2`` apart (default ``tolerance = 3.0`` s, i.e.
+-1.5 s), that event is later in its list than the previous match (matches keep their order) and its text is not
empty. Recall counts the ground-truth events matched this way; precision runs the same walk with the roles swapped
and counts the matched predictions. Counts are pooled over all videos before dividing:

    P = sum matched predictions / sum predictions,   R = sum matched references / sum references,
    F = 2PR / (P + R)

Text metrics (the official METEOR and ROUGE-L, BERTScore where its model is on disk, the earlier stemmed variants,
sentence-embedding cosine; `gemma3.evaluation.metrics.text_scores`) are averaged over the (reference, prediction)
pairs of the recall walk, over all videos; 0 when nothing matched. Per-window action accuracy compares the action each
window predicted with the label in force at the window's middle (the label of the last event at or before it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gemma3.evaluation.metrics import MiniLMEmbedder, normalize, text_scores
from gemma3.serve.feedback import Event, feedback_events
from gemma3.utils.errors import run_main
from gemma3.utils.plotting import pyplot

logger = logging.getLogger(__name__)
DEFAULT_TOLERANCE = 3.0  # seconds, the whole window (FitCoach's default): a match is < 1.5 s away


def events_from(records: Sequence[dict], where: str = "events") -> list[Event]:
    """``[{"t", "text", "label"}]`` -> events in time order (a clear error naming the record and field)."""
    out = []
    for i, r in enumerate(records):
        if "t" not in r:
            raise ValueError(f"{where}[{i}]: no 't' (seconds) in {r}")
        try:
            t = float(r["t"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}[{i}].t: not a number: {r['t']!r}") from err
        out.append(Event(t, str(r.get("text") or ""), r.get("label")))
    return sorted(out, key=lambda e: e.t)


def align(
    first: Sequence[Event], second: Sequence[Event], tolerance: float = DEFAULT_TOLERANCE
) -> list[tuple[int, int]]:
    """FitCoach's walk: for each event of ``first`` (time order), the nearest event of ``second`` if it is within
    ``tolerance / 2``, after the previous match, and has text. Returns (index in first, index in second) pairs."""
    pairs: list[tuple[int, int]] = []
    last = -1
    if not second:
        return pairs
    for i, event in enumerate(first):
        j = min(range(len(second)), key=lambda k: (second[k].t - event.t) ** 2)  # first nearest, like argmin
        if abs(second[j].t - event.t) < tolerance / 2 and j > last and second[j].text.strip():
            pairs.append((i, j))
            last = j
    return pairs


@dataclass
class TimedResult:
    precision: float
    recall: float
    f_score: float
    references: int
    predictions: int
    matched_references: int
    matched_predictions: int
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (reference text, predicted text)
    per_video: list[dict] = field(default_factory=list)


def temporal_scores(videos: Sequence[tuple[Sequence[Event], Sequence[Event]]],
                    tolerance: float = DEFAULT_TOLERANCE) -> TimedResult:  # fmt: skip
    """Pooled temporal precision / recall / F-score over ``(reference events, predicted events)`` per video."""
    refs = preds = hit_refs = hit_preds = 0
    pairs: list[tuple[str, str]] = []
    per_video = []
    for reference, predicted in videos:
        reference = sorted(reference, key=lambda e: e.t)
        predicted = sorted(predicted, key=lambda e: e.t)
        recall_pairs = align(reference, predicted, tolerance)
        precision_pairs = align(predicted, reference, tolerance)
        refs += len(reference)
        preds += len(predicted)
        hit_refs += len(recall_pairs)
        hit_preds += len(precision_pairs)
        pairs += [(reference[i].text, predicted[j].text) for i, j in recall_pairs]
        per_video.append({"references": len(reference), "predictions": len(predicted),
                          "matched_references": len(recall_pairs), "matched_predictions": len(precision_pairs),
                          "matches": [(reference[i].t, predicted[j].t) for i, j in recall_pairs]})  # fmt: skip
    p = hit_preds / preds if preds else 0.0
    r = hit_refs / refs if refs else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return TimedResult(p, r, f, refs, preds, hit_refs, hit_preds, pairs, per_video)


def label_at(events: Sequence[Event], t: float) -> str | None:
    """The label in force at time ``t``: that of the last labelled event at or before ``t``."""
    current = None
    for e in sorted(events, key=lambda e: e.t):
        if e.t > t:
            break
        if e.label is not None:
            current = e.label
    return current


def window_accuracy(windows: Sequence[dict], events: Sequence[Event]) -> tuple[float, int]:
    """Share of windows (``{"start", "end", "action"}``) whose predicted action equals the label in force at the
    window's middle (normalised text); windows before the first label are not counted. Returns (accuracy, n)."""
    scored = [(w, label_at(events, (float(w["start"]) + float(w["end"])) / 2)) for w in windows]
    scored = [(w, lab) for w, lab in scored if lab is not None]
    if not scored:
        return 0.0, 0
    hits = sum(normalize(str(w.get("action") or "")) == normalize(lab) for w, lab in scored)
    return hits / len(scored), len(scored)


def timeline_png(reference: Sequence[Event], predicted: Sequence[Event], out: str | Path, title: str = "",
                 tolerance: float = DEFAULT_TOLERANCE) -> Path:  # fmt: skip
    """Ground-truth events vs emitted feedback over time; matched pairs joined, the tolerance shaded."""

    plt = pyplot()
    reference = sorted(reference, key=lambda e: e.t)
    predicted = sorted(predicted, key=lambda e: e.t)
    end = max([e.t for e in reference] + [e.t for e in predicted] + [1.0])
    fig, ax = plt.subplots(figsize=(min(20, 3 + end / 6), 2.6))
    for e in reference:
        ax.axvspan(e.t - tolerance / 2, e.t + tolerance / 2, ymin=0.55, ymax=0.95, color="tab:green", alpha=0.12)
    ax.scatter(
        [e.t for e in reference], [1] * len(reference), marker="|", s=300, color="tab:green", label="ground truth"
    )
    ax.scatter([e.t for e in predicted], [0] * len(predicted), marker="|", s=300, color="tab:blue", label="feedback")
    for i, j in align(reference, predicted, tolerance):
        ax.plot([reference[i].t, predicted[j].t], [1, 0], color="gray", linewidth=0.8)
    ax.set_yticks([0, 1], ["emitted", "ground truth"])
    ax.set_ylim(-0.6, 1.6)
    ax.set_xlim(0, end + 1)
    ax.set_xlabel("seconds")
    ax.set_title(title or f"feedback timeline (tolerance {tolerance:g} s)")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def evaluate_streams(ground_truth: str | Path, streams: str | Path, out: str | Path | None = None,
                     tolerance: float = DEFAULT_TOLERANCE, when: str = "end", embed=None,
                     min_windows: int = 1) -> dict:  # fmt: skip
    """Score stream outputs (``<streams>/<video stem>.jsonl``) against a ``timed.json`` ground truth: temporal
    P/R/F, text metrics on matched pairs, per-window action accuracy; a timeline PNG per video in ``out``."""
    records = json.loads(Path(ground_truth).read_text())
    videos, windows_ok, windows_n, missing = [], 0.0, 0, []
    out = Path(out) if out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for i, rec in enumerate(records):
        reference = events_from(rec.get("events") or [], where=f"{ground_truth}[{i}].events")
        path = Path(streams) / f"{Path(rec['video']).stem}.jsonl"
        if not path.exists():
            missing.append(str(path))
            stream = []
        else:
            stream = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        predicted = feedback_events(stream, when, min_windows)
        videos.append((reference, predicted))
        acc, n = window_accuracy(stream, reference)
        windows_ok += acc * n
        windows_n += n
        if out:
            timeline_png(reference, predicted, out / f"{Path(rec['video']).stem}_timeline.png", rec["video"], tolerance)
    if missing:
        logger.warning("%d videos have no stream output (counted as silent): %s", len(missing), missing[:5])
    temporal = temporal_scores(videos, tolerance)
    result = {"tolerance_s": tolerance, "feedback_time": when, "min_windows": min_windows,
              "precision": temporal.precision, "recall": temporal.recall, "f_score": temporal.f_score,
              "references": temporal.references, "predictions": temporal.predictions,
              **{k: v for k, v in text_scores(temporal.pairs, embed).items() if k != "per_pair"},
              "window_accuracy": windows_ok / windows_n if windows_n else 0.0, "windows": windows_n,
              "missing_streams": len(missing)}  # fmt: skip
    if out:
        (out / "timed_metrics.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ground_truth", required=True, help="timed.json")
    ap.add_argument("--streams", required=True, help="folder of <video stem>.jsonl stream outputs")
    ap.add_argument("--out", default=None, help="folder for timed_metrics.json and timeline PNGs")
    ap.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    ap.add_argument("--feedback_time", choices=("end", "middle"), default="end")
    ap.add_argument("--embeddings", action="store_true", help="add MiniLM cosine on matched pairs")
    ap.add_argument("--min_windows", type=int, default=1, help="consecutive windows that settle a new action")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    embed = None
    if args.embeddings:
        embed = MiniLMEmbedder()
    result = evaluate_streams(args.ground_truth, args.streams, args.out, args.tolerance, args.feedback_time, embed,
                              args.min_windows)  # fmt: skip
    logger.info("%s", json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
