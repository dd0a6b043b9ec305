"""Video multiple-choice QA: ``mcq`` for annotation files in the MVBench JSON format (``{"question", "candidates",
"answer", "task"}``), and ``mvbench`` / ``nextqa`` / ``perceptiontest`` for the releases, each scored with its
reference evaluation's answer extraction."""

from __future__ import annotations

import re
import string
from collections import defaultdict
from pathlib import Path
from typing import ClassVar

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


# ---- the released benchmarks, scored as their reference evaluations extract the answer


def mvbench_correct(prediction: str, reference: str) -> bool:
    """VideoChat2's ``check_ans`` for MVBench: the reply (what the model wrote after ``Best option:(``) is right when
    its first word, dots removed, is within the reference's option ``(c)`` or contains it; a first word without
    any option letter is wrong."""
    words = (prediction or "").lower().split(" ")
    pred_option = words[0]
    gt_option = reference.lower().split(" ")[0]
    if not any(c in pred_option for c in "abcdefg"):
        return False
    return pred_option.replace(".", "") in gt_option or gt_option in pred_option


def mmmu_choice(response: str, options: list[str]) -> str | None:
    """The option letter lmms-eval's NExT-QA task parses from a reply (MMMU's ``parse_multi_choice_response``):
    ``(B)``, then ``B `` , then ``B.``, then (replies over five words) the option text; the last of several hits.
    Where nothing parses lmms-eval draws a random letter; this returns None (scored wrong, and counted)."""
    letters = list(string.ascii_uppercase[: len(options)])
    index2ans = {letter: o.strip() for letter, o in zip(letters, options)}
    for char in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(char)
    response = f" {response} "
    hits = [c for c in letters if f"({c})" in response]
    brackets, by_letter = bool(hits), True
    if not hits:
        hits = [c for c in letters if f"{c} " in response]
    if not hits:
        hits = [c for c in letters if f"{c}." in response]
    if not hits and len(response.split()) > 5:
        hits = [c for c in letters if index2ans[c].lower() in response.lower()]
        by_letter = False
    if len(hits) <= 1:
        return hits[0] if hits else None
    if by_letter:
        where = [response.rfind(f"({c})" if brackets else f" {c} ") for c in hits]
    else:
        where = [response.lower().rfind(index2ans[c].lower()) for c in hits]
    return hits[max(range(len(hits)), key=lambda i: (where[i], -i))]


_LETTER_AD = re.compile(r"\b([A-D])\b")


def first_letter_ad(prediction: str) -> str | None:
    """lmms-eval's Perception Test extraction: the first standalone A-D in the reply."""
    m = _LETTER_AD.search((prediction or "").strip())
    return m.group(1).upper() if m else None


class ReleaseMCQ(Benchmark):
    """Multiple-choice QA of a release (`gemma3.data.releases.videoqa`): accuracy overall and per ``group`` field,
    the answer found in each reply the way the benchmark's reference evaluation finds it (`correct`)."""

    group: ClassVar[str] = "task"

    def __init__(self, **_) -> None:
        pass

    def correct(self, prediction: str, ref: dict) -> tuple[bool, bool]:
        """(whether the reply is right, whether an answer could be read from it)."""
        raise NotImplementedError

    def score(self, predictions: list[dict], references: dict | None = None) -> dict:
        per_group: dict[str, list[bool]] = defaultdict(list)
        records, unparsed = [], 0
        for p in predictions:
            ref = (references or {}).get(str(p["id"]))
            if ref is None or ref.get("answer_letter") is None:
                raise ValueError(f"prediction {p['id']!r}: no answer for it (pass --annotations {self.name}:ROOT:...)")
            ok, parsed = self.correct(p.get("prediction", ""), ref)
            unparsed += not parsed
            group = str(ref.get(self.group) or "all")
            per_group[group].append(ok)
            records.append({"id": p["id"], "prediction": p.get("prediction", ""), "answer": ref["answer_letter"],
                            "correct": ok, self.group: group})  # fmt: skip
        total = sum(len(v) for v in per_group.values())
        per = {g: sum(v) / len(v) for g, v in sorted(per_group.items())}
        return {
            "benchmark": self.name,
            "num_samples": total,
            "num_unparsed": unparsed,
            "accuracy": sum(sum(v) for v in per_group.values()) / total if total else 0.0,
            f"mean_{self.group}_accuracy": sum(per.values()) / len(per) if per else 0.0,
            "per_task": per,
            "records": records,
        }

    def plot(self, results: dict, out_png: str | Path) -> Path:
        groups = list(results["per_task"])
        title = f"{self.name} accuracy {results['accuracy']:.3f}"
        return bars_png(groups, [results["per_task"][g] for g in groups], out_png, title)


@register_benchmark
class MVBenchBenchmark(ReleaseMCQ):
    """MVBench (``mvbench:ROOT[:task]``): the notebook's prompt, the reply opened with ``Best option:(``, VideoChat2's
    ``check_ans``; accuracy per task and their mean (the figure papers report)."""

    name = "mvbench"

    def correct(self, prediction: str, ref: dict) -> tuple[bool, bool]:
        gold = ref.get("reference") or f"({ref['answer_letter']})"
        first = (prediction or "").lower().split(" ")[0]
        return mvbench_correct(prediction, gold), any(c in first for c in "abcdefg")


@register_benchmark
class NExTQABenchmark(ReleaseMCQ):
    """NExT-QA multiple choice (``nextqa:ROOT:val``), parsed as lmms-eval's ``nextqa_mc`` task; per question type."""

    name = "nextqa"
    group = "type"

    def correct(self, prediction: str, ref: dict) -> tuple[bool, bool]:
        letter = mmmu_choice(prediction or "", list(ref["options"]))
        return letter == ref["answer_letter"], letter is not None


@register_benchmark
class PerceptionTestBenchmark(ReleaseMCQ):
    """Perception Test multiple choice (``perceptiontest:ROOT:valid``), parsed as lmms-eval's ``perceptiontest_val_mc``;
    per skill area."""

    name = "perceptiontest"
    group = "area"

    def correct(self, prediction: str, ref: dict) -> tuple[bool, bool]:
        letter = first_letter_ad(prediction)
        return letter == ref["answer_letter"], letter is not None
