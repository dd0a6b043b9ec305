"""What the machine is: the CPU's feature flags, which decide the fast paths (bf16 arithmetic, vector width)."""

from __future__ import annotations

from pathlib import Path


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (``avx2``, ``avx512f``, ``avx512_bf16``, ``amx_bf16`` ...) from the first processor of
    ``cpuinfo``; empty where it cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.split(":", 1)[0].strip() == "flags"), "")
    return frozenset(line.split(":", 1)[1].split()) if ":" in line else frozenset()
