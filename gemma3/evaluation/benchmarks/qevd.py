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
        pairs = self.pair(predictions, references)
        records, ex_ok, met, rl, cos = [], [], [], [], []
        embs = None
        if self.embedder is not None and pairs:
            texts = [p.get("prediction", "") or " " for p, _ in pairs] + [r for _, r in pairs]
            embs = self.embedder(texts)
        for k, (p, r) in enumerate(pairs):
            pe, pf = split_answer(p.get("prediction", ""))
            re_, rf = split_answer(r)
            ok = bool(pe) and M.normalize(pe) == M.normalize(re_)
            m = M.meteor(p.get("prediction", ""), r)
            rouge = M.rouge_l(p.get("prediction", ""), r) if p.get("prediction") else 0.0
            c = M.cosine(embs[k], embs[len(pairs) + k]) if embs is not None else None
            ex_ok.append(ok)
            met.append(m)
            rl.append(rouge)
            if c is not None:
                cos.append(c)
            records.append({"id": p["id"], "exercise_correct": ok, "meteor": m, "rouge_l": rouge, "cosine": c})
        n = len(pairs) or 1
        out = {
            "benchmark": self.name,
            "num_samples": len(pairs),
            "exercise_accuracy": sum(ex_ok) / n,
            "meteor": sum(met) / n,
            "rouge_l": sum(rl) / n,
            "records": records,
        }
        if cos:
            out["embedding_cosine"] = sum(cos) / len(cos)
        return out

    def plot(self, results: dict, out_png: str | Path) -> Path:
        keys = [k for k in ("exercise_accuracy", "meteor", "rouge_l", "embedding_cosine") if k in results]
        return bars_png(keys, [results[k] for k in keys], out_png, "QEVD feedback")
