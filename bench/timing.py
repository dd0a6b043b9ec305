"""Shared by the bench scripts: median wall time of repeated calls after one warm-up, and the CPU they ran on."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

from gemma3.utils.machine import cpu_flags


def cpu_line() -> str:
    """The CPU model and the vector features that decide the speed here (AVX2 / AVX512 / BF16 / AMX)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = cpu_flags()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                 platform.processor())  # fmt: skip
    return f"{model} ({', '.join(f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags)})"


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


def interleaved_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each of ``fns`` (name: call), their calls taken in turn (one warm-up each first), so a
    machine whose speed drifts during the run slows each of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
