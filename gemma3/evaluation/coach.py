"""The rendered coach (`gemma3.data.coach`) evaluated as QEVD is: the short clips scored as ``qevd_fit_300k``
(exercise and form-error accuracy, official METEOR / ROUGE-L, the copy-the-most-frequent-feedback baseline), and
the long sessions streamed through the model and scored as ``qevd_fit_coach`` with causal timing.

Causal timing: a window's answer exists only once the window has ended, so every emitted feedback is timed at
the end of the window that settles it (``feedback_time="end"``), never at its middle. The coach speaks when the
form label of its answer changes (`gemma3.serve.feedback.form_label_key`: the reply's nearest phrasing),
settled over ``min_windows`` consecutive windows, and stays silent while the person rests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gemma3.data.releases.qevd import QEVDFit300K
from gemma3.evaluation.evaluate import evaluate, stream_model_then_evaluate
from gemma3.serve.feedback import COACH_SETTLE_WINDOWS, form_label_key
from gemma3.serve.stream import StreamConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamPlan:
    """How the long sessions are streamed: window (the training clips' length) and stride in seconds, windows that
    settle a change, windows per batch."""

    window: float = 2.0
    stride: float = 0.5
    min_windows: int = COACH_SETTLE_WINDOWS
    batch_size: int = 16
    max_new_tokens: int = 32


def score_short_clips(predictions: Path, test_spec: str, output_dir: Path) -> dict:
    """``qevd_fit_300k`` on the test clips: exercise / form accuracy, METEOR, ROUGE-L and the baseline."""
    return evaluate("qevd_fit_300k", predictions, annotations=test_spec, output_dir=output_dir)


def stream_sessions(model_dir: Path, sessions_spec: str, output_dir: Path, plan: StreamPlan | None = None) -> dict:
    """Stream every long session through the model (resumable per session) and score the feedback it spoke, timed
    causally, as ``qevd_fit_coach`` (FitCoach's tolerance and matching, single-exercise segments)."""
    plan = plan or StreamPlan()
    stream = StreamConfig(window=plan.window, stride=plan.stride, prompt=QEVDFit300K.prompt,
                          batch_size=plan.batch_size)  # fmt: skip
    results = stream_model_then_evaluate("qevd_fit_coach", model_dir, sessions_spec, output_dir, stream,
                                         feedback_time="end", min_windows=plan.min_windows, key=form_label_key,
                                         max_new_tokens=plan.max_new_tokens)  # fmt: skip
    results["stream"] = {"window_s": plan.window, "stride_s": plan.stride, "min_windows": plan.min_windows,
                         "feedback_time": "end"}  # fmt: skip
    return results


def short_clip_figures(short: dict) -> dict:
    """The figures the main job reports for the test clips (`score_short_clips`' results)."""
    base = short.get("baseline") or {}
    return {
        "exercise_accuracy": short["exercise_accuracy"],
        "form_accuracy": short.get("form_accuracy"),
        "meteor": short["meteor"],
        "rouge_l": short["rouge_l"],
        "baseline_reply": base.get("reply"),
        "baseline_meteor": base.get("meteor"),
        "baseline_rouge_l": base.get("rouge_l"),
        "num_test": short["num_samples"],
    }


def session_figures(sessions: dict) -> dict:
    """The figures the main job reports for the long sessions (`stream_sessions`' results)."""
    return {
        "temporal_precision": sessions["temporal_precision"],
        "temporal_recall": sessions["temporal_recall"],
        "temporal_f_score": sessions["temporal_f_score"],
        "session_meteor": sessions["meteor"],
        "session_rouge_l": sessions["rouge_l"],
        "sessions": sessions["num_samples"],
    }


def table_rows(s: dict) -> list[str]:
    """Markdown rows of the figures (`short_clip_figures`, with `session_figures` where sessions were streamed)."""
    rows = [
        f"| exercise accuracy (test clips) | {s['exercise_accuracy']:.3f} |",
        f"| form-error accuracy | {s['form_accuracy'] or 0:.3f} |",
        f"| METEOR / ROUGE-L (official) | {s['meteor']:.3f} / {s['rouge_l']:.3f} |",
        f"| baseline: the most frequent feedback | {s['baseline_meteor'] or 0:.3f} / {s['baseline_rouge_l'] or 0:.3f}"
        f" ({s['baseline_reply']!r}) |",
        f"| test clips | {s['num_test']} |",
    ]
    if "temporal_f_score" in s:
        rows += [
            f"| long sessions: temporal F (causal, P / R) | {s['temporal_f_score']:.3f} ({s['temporal_precision']:.3f}"
            f" / {s['temporal_recall']:.3f}) |",
            f"| long sessions: METEOR / ROUGE-L of matched feedback | {s['session_meteor']:.3f} / "
            f"{s['session_rouge_l']:.3f} |",
        ]
    return rows
