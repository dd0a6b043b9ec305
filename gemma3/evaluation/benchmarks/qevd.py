"""QEVD exercise feedback: answers ``<exercise> - <feedback>``."""

from __future__ import annotations

from pathlib import Path

from gemma3.evaluation import metrics as M
from gemma3.evaluation.benchmarks.base import Benchmark, register_benchmark
from gemma3.evaluation.plots import bars_png


def split_answer(text: str) -> tuple[str, str]:
    """``"squat - knees out"`` -> ("squat", "knees out"); no separator -> (text, "")."""
    head, sep, tail = (text or "").partition(" - ")
    return (head.strip(), tail.strip()) if sep else (text.strip(), "")


@register_benchmark
class QEVDFeedback(Benchmark):
    name = "qevd"

    def __init__(self, embedder=None, **_) -> None:
        self.embedder = embedder

    def score(self, predictions: list[dict], references: dict | None = None) -> dict:
        """Exercise accuracy (the part before " - ") and the official text metrics of each reply against its
        reference (`metrics.text_scores`: METEOR, ROUGE-L, BERTScore where present, the stemmed variants)."""
        pairs = self.pair(predictions, references)
        texts = M.text_scores([(r, p.get("prediction", "")) for p, r in pairs], self.embedder)
        records, ex_ok = [], []
        for (p, r), row in zip(pairs, texts.pop("per_pair")):
            pe, _ = split_answer(p.get("prediction", ""))
            ok = bool(pe) and M.normalize(pe) == M.normalize(split_answer(r)[0])
            ex_ok.append(ok)
            records.append({"id": p["id"], "exercise_correct": ok, **row})
        return {
            "benchmark": self.name,
            "num_samples": len(pairs),
            "exercise_accuracy": sum(ex_ok) / (len(pairs) or 1),
            **texts,
            "records": records,
        }

    def plot(self, results: dict, out_png: str | Path) -> Path:
        keys = [
            k
            for k in ("exercise_accuracy", "meteor", "rouge_l", "bertscore", "embedding_similarity")
            if isinstance(results.get(k), float)
        ]
        return bars_png(keys, [results[k] for k in keys], out_png, "QEVD feedback")
