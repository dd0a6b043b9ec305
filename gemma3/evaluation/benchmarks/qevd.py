"""QEVD exercise feedback: short clips answered ``<exercise> - <feedback>`` (``qevd``), and QEVD-FIT-COACH's long
videos scored in time as the official evaluation scores them (``qevd_fit_coach``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from gemma3.evaluation import metrics as M
from gemma3.evaluation.benchmarks.base import Benchmark, register_benchmark
from gemma3.evaluation.plots import bars_png
from gemma3.evaluation.timed import DEFAULT_TOLERANCE, events_from, temporal_scores
from gemma3.serve.feedback import Event, feedback_events
from gemma3.utils.text import nearest

logger = logging.getLogger(__name__)


def split_answer(text: str) -> tuple[str, str]:
    """``"squat - knees out"`` -> ("squat", "knees out"); no separator -> (text, "")."""
    head, sep, tail = (text or "").partition(" - ")
    return (head.strip(), tail.strip()) if sep else (text.strip(), "")


def phrase_bank(references: dict[str, dict]) -> dict[str, str]:
    """Every feedback sentence of the references -> its form label (QEVD-FIT-300K's ``labels_descriptive`` and
    ``labels``, paired in order); empty when the references carry no labels."""
    bank = {}
    for ref in references.values():
        for sentence, label in zip(ref.get("labels_descriptive") or [], ref.get("labels") or []):
            bank.setdefault(str(sentence), str(label))
    return bank


def nearest_label(reply: str, bank: dict[str, str]) -> str | None:
    """The form label of the bank's sentence nearest to ``reply`` by the official ROUGE-L (None for an empty
    reply): a reply worded like any phrasing of a label counts as that label."""
    if not reply.strip() or not bank:
        return None
    return nearest(reply, bank, M.rouge_l)


@register_benchmark
class QEVDFeedback(Benchmark):
    name = "qevd"

    def __init__(self, embedder=None, bertscore_model: str | None = None, **_) -> None:
        self.embedder = embedder
        self.bertscore_model = bertscore_model

    def score(self, predictions: list[dict], references: dict | None = None) -> dict:
        """Exercise accuracy (the part before " - ") and the official text metrics of each reply against its
        reference (`metrics.text_scores`: METEOR, ROUGE-L, BERTScore where present, the stemmed variants).

        Where the references carry form labels (QEVD-FIT-300K's ``labels`` beside ``labels_descriptive``) also
        ``form_accuracy`` (the reply's nearest reference sentence, `nearest_label`, has one of the clip's labels)
        and ``baseline``: the same metrics for copying the most frequent reference sentence to every clip."""
        pairs = self.pair(predictions, references)
        references = references or {}
        bank = phrase_bank(references)
        results = self._scores([(p["id"], p.get("prediction", ""), r) for p, r in pairs], references, bank)
        if bank and pairs:
            counts = M.counts([r for _, r in pairs])
            frequent = max(counts, key=lambda text: (counts[text], text))
            base = self._scores([(p["id"], frequent, r) for p, r in pairs], references, bank)
            results["baseline"] = {"reply": frequent, **{k: v for k, v in base.items() if k != "records"}}
        return {"benchmark": self.name, **results}

    def _scores(self, rows: list[tuple[str, str, str]], references: dict, bank: dict[str, str]) -> dict:
        texts = M.text_scores([(r, reply) for _, reply, r in rows], self.embedder, self.bertscore_model)
        labels: dict[str, str | None] = {}  # reply -> its nearest label, once per distinct reply
        records, ex_ok, form_ok = [], [], []
        for (pid, reply, r), row in zip(rows, texts.pop("per_pair")):
            pe, _ = split_answer(reply)
            ok = bool(pe) and M.normalize(pe) == M.normalize(split_answer(r)[0])
            ex_ok.append(ok)
            record = {"id": pid, "exercise_correct": ok, **row}
            if bank:
                if reply not in labels:
                    labels[reply] = nearest_label(reply, bank)
                record["label"] = labels[reply]
                form_ok.append(record["label"] in (references.get(str(pid)) or {}).get("labels", []))
                record["form_correct"] = form_ok[-1]
            records.append(record)
        out = {"num_samples": len(rows), "exercise_accuracy": sum(ex_ok) / (len(rows) or 1), **texts}
        if bank:
            out["form_accuracy"] = sum(form_ok) / (len(rows) or 1)
        return {**out, "records": records}

    def plot(self, results: dict, out_png: str | Path) -> Path:
        keys = [
            k
            for k in ("exercise_accuracy", "form_accuracy", "meteor", "rouge_l", "bertscore", "embedding_similarity")
            if isinstance(results.get(k), float)
        ]
        return bars_png(keys, [results[k] for k in keys], out_png, "QEVD feedback")


@register_benchmark
class QEVDFit300KBenchmark(QEVDFeedback):
    """QEVD-FIT-300K short clips (``qevd_fit_300k:ROOT:test``): the ``qevd`` scoring against the release's labels."""

    name = "qevd_fit_300k"


@register_benchmark
class QEVDFitCoachBenchmark(Benchmark):
    """QEVD-FIT-COACH as its official evaluation scores it (FitCoach ``InteractiveFeedbackEvaluator``): the
    feedback a model emitted over each long video (``events``: ``[{"t": seconds, "text"}]`` per video id, e.g. from
    `gemma3.serve.stream` outputs) matched in time to the release's feedback events (nearest only, < 1.5 s, order
    kept, one-to-one, in both directions), precision / recall / F pooled over the whole set, and the text metrics
    over the recall direction's (reference, prediction) pairs, averaged over all pairs.

    ``mode="single_exercise"`` (FitCoach's default): each exercise segment of the release is scored on its own,
    with the feedback emitted inside it (start < t <= end) against its non-transition events;
    ``mode="full_workout"``: the whole video against all its events, transitions included."""

    name = "qevd_fit_coach"
    streams = True
    MODES = ("single_exercise", "full_workout")

    def __init__(self, embedder=None, mode: str = "single_exercise", tolerance: float = DEFAULT_TOLERANCE,
                 bertscore_model: str | None = None, **_) -> None:  # fmt: skip
        if mode not in self.MODES:
            raise ValueError(f"mode={mode!r}: one of {self.MODES}")
        self.embedder, self.mode, self.tolerance, self.bertscore_model = embedder, mode, tolerance, bertscore_model

    def units(self, reference: dict, predicted: list[Event]) -> list[tuple[list[Event], list[Event]]]:
        """(reference events, predicted events) of each scored unit of one video: its segments, or the video."""
        ref_events = events_from(reference.get("events") or [], where=f"{reference.get('id')}.events")
        if self.mode == "full_workout":
            return [(ref_events, predicted)]
        raw = reference.get("events") or []
        out = []
        for seg in reference.get("segments") or []:
            gt = [Event(float(raw[i]["t"]), raw[i]["text"]) for i in seg["events"]]
            out.append((gt, [e for e in predicted if seg["start"] < e.t <= seg["end"]]))
        return out

    def score(self, predictions: list[dict], references: dict | None = None) -> dict:
        if references is None:
            raise ValueError("qevd_fit_coach scores against the release: pass --annotations qevd_fit_coach:ROOT:SPLIT")
        by_id = {str(p["id"]): p for p in predictions}
        units, per_video = [], []
        for vid, ref in references.items():
            pred = by_id.get(vid)
            predicted = events_from((pred or {}).get("events") or [], where=f"predictions[{vid}].events")
            video_units = self.units(ref, predicted)
            units += video_units
            per_video.append({"id": vid, "has_prediction": pred is not None, "units": len(video_units),
                              "references": sum(len(g) for g, _ in video_units),
                              "predictions": sum(len(p) for _, p in video_units)})  # fmt: skip
        temporal = temporal_scores(units, self.tolerance)
        texts = M.text_scores(temporal.pairs, self.embedder, self.bertscore_model)
        per_pair = texts.pop("per_pair")
        return {
            "benchmark": self.name,
            "num_samples": len(references),
            "mode": self.mode,
            "tolerance_s": self.tolerance,
            "num_units": len(units),
            "temporal_precision": temporal.precision,
            "temporal_recall": temporal.recall,
            "temporal_f_score": temporal.f_score,
            "references": temporal.references,
            "predictions": temporal.predictions,
            "matched_references": temporal.matched_references,
            "matched_predictions": temporal.matched_predictions,
            **texts,
            "records": per_video,
            "pairs": [{"reference": r, "prediction": p, **row} for (r, p), row in zip(temporal.pairs, per_pair)],
        }

    def plot(self, results: dict, out_png: str | Path) -> Path:
        keys = ["temporal_f_score", "meteor", "rouge_l"] + (["bertscore"] if results.get("bertscore") else [])
        return bars_png(keys, [results[k] for k in keys], out_png, f"QEVD-FIT-COACH ({results['mode']})")


def stream_predictions(streams: str | Path, ids: list[str], when: str = "end", min_windows: int = 1,
                       key=None) -> list[dict]:  # fmt: skip
    """Prediction records (``id``, ``events``) from the stream outputs ``<streams>/<id>.jsonl`` that exist (the
    coverage check then counts the videos without one; scored anyway, they are silent). ``when``, ``min_windows``
    and ``key``: when a stream speaks (`gemma3.serve.feedback.feedback_events`)."""
    out = []
    for vid in ids:
        path = Path(streams) / f"{vid}.jsonl"
        if not path.is_file():
            continue
        records = []
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s:%d: unreadable stream record skipped", path, n)
        events = feedback_events(records, when, min_windows, key)
        out.append({"id": vid, "events": [{"t": e.t, "text": e.text} for e in events], "prediction": ""})
    return out
