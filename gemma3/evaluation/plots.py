"""PNG plots for evaluation results (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from gemma3.utils.plotting import pyplot


def confusion_png(matrix: list[list[int]], rows: list[str], cols: list[str], out: str | Path, title: str) -> Path:
    plt = pyplot()
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
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(labels), 4))
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
