"""Video multiple-choice QA in the MVBench format: ``{"question", "candidates", "answer", "task"}``."""

from __future__ import annotations

import string
from collections import defaultdict
from pathlib import Path

from gemma3.evaluation import metrics as M
from gemma3.evaluation.benchmarks.base import Benchmark, EvalSample, register_benchmark
from gemma3.evaluation.plots import bars_png


@register_benchmark
class VideoMCQ(Benchmark):
    name = "mcq"

    def __init__(self, **_) -> None:
        pass

    def build_prompt(self, record: dict) -> str:
        opts = "\n".join(f"({string.ascii_uppercase[i]}) {c}" for i, c in enumerate(record.get("candidates", [])))
        return f"{self.tag}\nQuestion: {record.get('question', '')}\nOptions:\n{opts}\nAnswer with the option's letter."

    def candidates(self, sample: EvalSample) -> list[str]:
        return list(sample.extra.get("candidates", []))

    def score(self, predictions: list[dict], references: dict | None = None) -> dict:
        per_task: dict[str, list[bool]] = defaultdict(list)
        records, unparsed = [], 0
        for p in predictions:
            ref = (references or {}).get(str(p["id"]), {})
            cands = p.get("candidates") or ref.get("candidates")
            answer = p.get("reference") if p.get("reference") is not None else ref.get("answer", ref.get("reference"))
            if not cands or answer is None:
                raise ValueError(f"prediction {p['id']!r}: candidates and answer are needed (pass --annotations)")
            gold = cands.index(answer) if answer in cands else M.extract_choice(str(answer), cands)
            choice = M.extract_choice(p.get("prediction", ""), cands)
            unparsed += choice is None
            ok = choice is not None and choice == gold  # unparsable answers count as wrong, never dropped
            task = p.get("task") or ref.get("task") or "all"
            per_task[task].append(ok)
            records.append({"id": p["id"], "choice": choice, "gold": gold, "correct": ok, "task": task})
        total = sum(len(v) for v in per_task.values())
        return {
            "benchmark": self.name,
            "num_samples": total,
            "num_unparsed": unparsed,
            "accuracy": sum(sum(v) for v in per_task.values()) / total if total else 0.0,
            "per_task": {t: sum(v) / len(v) for t, v in sorted(per_task.items())},
            "records": records,
        }

    def plot(self, results: dict, out_png: str | Path) -> Path:
        tasks = list(results["per_task"])
        return bars_png(
            tasks, [results["per_task"][t] for t in tasks], out_png, f"MCQ accuracy {results['accuracy']:.3f}"
        )
