"""Shared timing for the bench scripts: median wall time of repeated calls after one warm-up."""

from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int, warmup: bool = True) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call (``warmup=False`` skips it, for
    calls that take minutes and gain nothing from one)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
