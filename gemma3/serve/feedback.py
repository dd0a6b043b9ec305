"""What a stream said as feedback: events (time, text, label) from its JSONL window records, and a plot of a stream
over time. The timed evaluation (`gemma3.evaluation.timed`) scores these events; the demo shows them."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gemma3.data import exercises as X
from gemma3.utils.plotting import pyplot
from gemma3.utils.text import normalize


@dataclass
class Event:
    t: float  # seconds from the start of the video
    text: str = ""
    label: str | None = None


REST_LABEL = X.label(X.REST, X.REST_FORM)


def form_label_key(record: dict) -> str | None:
    """A stream window's key for a coach (`feedback_events`): the form label of its reply (the nearest phrasing
    of the rendered coach's, `gemma3.data.exercises.label_of`), so a new wording of the same feedback says nothing;
    ``""`` (silence) while the person rests; None for an empty reply."""
    found = X.label_of(record.get("reply") or "")
    if found is None:
        return None
    return "" if found == REST_LABEL else found


# Windows that settle the coach's feedback: a change is spoken once this many consecutive windows (2 s each, every
# 0.5 s) agree. On the rendered coach's seed-0 sessions, scored causally: temporal F 0.32 / 0.35 / 0.48 / 0.31 for
# 1 / 2 / 3 / 4 windows (fewer: flicker is spoken; more: the feedback comes too late to match).
COACH_SETTLE_WINDOWS = 3


def feedback_events(records: Sequence[dict], when: str = "end", min_windows: int = 1,
                    key: Callable[[dict], str | None] | None = None) -> list[Event]:  # fmt: skip
    """The feedback a stream emitted (`gemma3.serve.stream` JSONL records): an event whenever what the stream says
    changes, at the end (``when="end"``: when a live system could speak) or middle of the window that settles it.
    With ``min_windows`` k > 1 a change must be predicted by k consecutive windows first (a single window that
    flickers says nothing), and the event is timed at the k-th.

    ``key`` says what counts as a change: a window's key (default: its normalised action); ``None`` skips the
    window (no answer), ``""`` is silence (nothing to say: once settled, the next key speaks even when it is the
    one spoken before the silence)."""
    if when not in ("end", "middle"):
        raise ValueError(f"when={when!r}: end or middle")
    if min_windows < 1:
        raise ValueError(f"min_windows={min_windows}: at least 1")
    key = key or (lambda r: normalize(r.get("action") or "") or None)
    events, spoken, run, count = [], None, None, 0
    for r in sorted(records, key=lambda r: r["start"]):
        k = key(r)
        if k is None:
            continue
        count = count + 1 if k == run else 1
        run = k
        if count == min_windows and k != spoken:
            if k:
                t = r["end"] if when == "end" else (r["start"] + r["end"]) / 2
                events.append(Event(float(t), r.get("reply") or r.get("action") or "", r.get("action")))
            spoken = k
    return events


def stream_png(records: list[dict], feedback_times: list[float], out: str | Path, title: str = "") -> Path:
    """One stream over time: each window's predicted action as a coloured bar from its start to its end (rows by
    action), and ticks where feedback was emitted. ``records`` are `gemma3.serve.stream` JSONL records."""
    plt = pyplot()
    actions = sorted({r.get("action") or "(none)" for r in records})
    end = max([float(r["end"]) for r in records] + list(feedback_times) + [1.0])
    fig, ax = plt.subplots(figsize=(min(20, 7 + end / 6), 1.6 + 0.35 * max(1, len(actions))))
    colors = plt.get_cmap("tab10")
    for r in records:
        row = actions.index(r.get("action") or "(none)")
        ax.broken_barh([(float(r["start"]), float(r["end"]) - float(r["start"]))], (row + 0.6, 0.8),
                       color=colors(row % 10), alpha=0.35)  # fmt: skip
    ax.scatter(feedback_times, [0] * len(feedback_times), marker="|", s=300, color="black", label="feedback")
    ax.set_yticks(range(len(actions) + 1), ["feedback"] + [a[:28] for a in actions])
    ax.set_ylim(-0.6, len(actions) + 0.6)
    ax.set_xlim(0, end + 0.5)
    ax.set_xlabel("seconds")
    ax.set_title(title or "action per window and feedback over time", fontsize=10)
    with warnings.catch_warnings():  # a model's reply may hold glyphs the plot font lacks: drawn as boxes
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        fig.tight_layout()
        fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
