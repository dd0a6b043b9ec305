"""matplotlib with the file-only Agg backend, imported when a plot is drawn (matplotlib is an optional extra)."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib  # optional extra: only where a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
