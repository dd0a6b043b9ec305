"""Kinetics-style action recognition: open answers matched to a class list; optional log-likelihood ranking."""

from __future__ import annotations

from pathlib import Path

from gemma3.evaluation import metrics as M
from gemma3.evaluation.benchmarks.base import Benchmark, register_benchmark
from gemma3.evaluation.plots import confusion_png


@register_benchmark
class ActionRecognition(Benchmark):
    name = "action_recognition"
    takes_classes = True

    def __init__(
        self,
        classes: list[str] | None = None,
        synonyms: dict[str, list[str]] | None = None,
        embedder=None,
        min_similarity: float = 0.5,
    ) -> None:
        self.classes = list(classes) if classes else None
        self.synonyms = synonyms or {}
        self.embedder = embedder
        self.min_similarity = min_similarity

    def candidates(self, sample=None) -> list[str]:
        if not self.classes:
            raise ValueError("action recognition needs a class list (--classes)")
        return self.classes

    def score(self, predictions: list[dict], references: dict | None = None) -> dict:
        pairs = self.pair(predictions, references)
        refs = [M.normalize(r) for _, r in pairs]
        classes = self.classes or sorted({r for _, r in pairs})
        norm_classes = {M.normalize(c): c for c in classes}
        preds, how, records = [], [], []
        for (p, r), nr in zip(pairs, refs):
            cls, kind = M.match_class(
                p.get("prediction", ""), classes, self.synonyms, self.embedder, self.min_similarity
            )
            preds.append(cls)
            how.append(kind)
            records.append(
                {
                    "id": p["id"],
                    "prediction": p.get("prediction", ""),
                    "matched": cls,
                    "match": kind,
                    "reference": norm_classes.get(nr, r),
                    "correct": cls is not None and M.normalize(cls) == nr,
                }
            )
        ref_cls = [norm_classes.get(nr, nr) for nr in refs]
        pred_cls = [c if c is not None else "<unmatched>" for c in preds]
        return {
            "benchmark": self.name,
            "num_samples": len(pairs),
            "top1_accuracy": M.accuracy(pred_cls, ref_cls),
            "mean_class_accuracy": M.mean_class_accuracy(pred_cls, ref_cls),
            "match_kinds": M.counts(how),
            "classes": classes,
            "confusion": M.confusion(pred_cls, ref_cls, classes),
            "records": records,
        }

    def score_ranking(self, ranked: dict[str, list[float]], references: dict[str, str]) -> dict:
        """Top-1 / top-5 from per-class scores (e.g. log-likelihoods), classes in ``self.classes`` order."""
        classes = self.candidates()
        norm = [M.normalize(c) for c in classes]
        ids = [i for i in ranked if i in references]
        ref_idx = [norm.index(M.normalize(references[i])) for i in ids]
        scores = [ranked[i] for i in ids]
        return {
            "num_samples": len(ids),
            "top1_accuracy": M.topk_accuracy(scores, ref_idx, 1),
            "top5_accuracy": M.topk_accuracy(scores, ref_idx, 5),
        }

    def plot(self, results: dict, out_png: str | Path) -> Path:
        labels = results["classes"] + ["(unmatched)"]
        return confusion_png(
            results["confusion"],
            results["classes"],
            labels,
            out_png,
            f"{self.name}: top-1 {results['top1_accuracy']:.3f}",
        )
