"""Action recognition: open answers matched to a class list, and top-1 / top-5 by log-likelihood ranking.

``action_recognition`` scores any annotation file against ``--classes``; ``kinetics400`` / ``kinetics600`` /
``kinetics700`` / ``ssv2`` / ``ucf101`` / ``hmdb51`` are the same scoring named like the release formats
(`gemma3.data.releases`), whose class lists they take."""

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
        ranking = self.score_ranking(pairs) if any(p.get("ranking") for p, _ in pairs) else {}
        return {
            "benchmark": self.name,
            "num_samples": len(pairs),
            "top1_accuracy": M.accuracy(pred_cls, ref_cls),
            "mean_class_accuracy": M.mean_class_accuracy(pred_cls, ref_cls),
            **ranking,
            "match_kinds": M.counts(how),
            "classes": classes,
            "confusion": M.confusion(pred_cls, ref_cls, classes),
            "records": records,
        }

    def score_ranking(self, pairs: list[tuple[dict, str]]) -> dict:
        """Top-1 / top-5 by ranking: each prediction's ``ranking`` (classes by log-likelihood, best first, as
        `gemma3.serve.inference.predict` writes it) against its reference; predictions without one are left out."""
        ranked = [(p["ranking"], M.normalize(r)) for p, r in pairs if p.get("ranking")]
        hits = [[M.normalize(c) for c in ranking].index(ref) if ref in map(M.normalize, ranking) else None
                for ranking, ref in ranked]  # fmt: skip
        n = len(hits)
        return {
            "num_ranked": n,
            "rank_top1_accuracy": sum(h == 0 for h in hits) / n if n else 0.0,
            "rank_top5_accuracy": sum(h is not None and h < 5 for h in hits) / n if n else 0.0,
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


class ReleaseActionRecognition(ActionRecognition):
    """A classification benchmark named like its release format (``--annotations kinetics400:ROOT:val``): the class
    list is the release's; top-1 by generation (the reply matched to a class) and, with ``--model_path``, top-1 /
    top-5 by ranking every class name by its log-likelihood as the reply."""

    ranks = True


for _name in ("kinetics400", "kinetics600", "kinetics700", "ssv2", "ucf101", "hmdb51"):
    register_benchmark(type(f"Release_{_name}", (ReleaseActionRecognition,), {"name": _name}))
