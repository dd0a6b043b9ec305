"""Document functions and per-sample scoring of the project's lmms-eval tasks (loaded by lmms-eval through
``!function utils.*``). Scores use the project's own metrics
(`gemma3.evaluation.metrics`, `gemma3.evaluation.benchmarks`), so the means lmms-eval reports equal
``eval/evaluate.py``'s on the same predictions."""

from __future__ import annotations

from gemma3.evaluation.benchmarks.action_recognition import ActionRecognition
from gemma3.evaluation.benchmarks.qevd import QEVDFeedback


def doc_to_visual(doc: dict) -> list:
    """The document's video (a file, or its frame files as a list) or image."""
    return [doc["video"] if "video" in doc else doc["image"]]


def doc_to_text(doc: dict) -> str:
    return doc["question"]


def doc_to_choice(doc: dict) -> list[str]:
    return list(doc["choices"])


def action_results(doc: dict, results: list[str]) -> dict:
    """Top-1 correctness of a generated answer, matched to the class list as `action_recognition` does."""

    bench = ActionRecognition(classes=doc["choices"])
    pred = [{"id": doc["id"], "prediction": results[0], "reference": doc["answer_text"]}]
    return {"top1_accuracy": bench.score(pred)["top1_accuracy"]}


def feedback_results(doc: dict, results: list[str]) -> dict:
    """Exercise accuracy, METEOR and ROUGE-L of one generated feedback (the `qevd` benchmark's metrics)."""

    pred = [{"id": doc["id"], "prediction": results[0], "reference": doc["answer"]}]
    scores = QEVDFeedback().score(pred)
    return {k: scores[k] for k in ("exercise_accuracy", "meteor", "rouge_l")}
