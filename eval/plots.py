"""PNG plots for evaluation results (matplotlib, Agg backend)."""

from __future__ import annotations

import warnings
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(matrix: list[list[int]], rows: list[str], cols: list[str], out: str | Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(cols), 1.0 + 0.5 * len(rows)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def bars_png(labels: list[str], values: list[float], out: str | Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(labels), 4))
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def stream_png(records: list[dict], feedback_times: list[float], out: str | Path, title: str = "") -> Path:
    """One stream over time: each window's predicted action as a coloured bar from its start to its end (rows by
    action), and ticks where feedback was emitted. ``records`` are `gemma3.stream` JSONL records."""
    plt = _plt()
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
