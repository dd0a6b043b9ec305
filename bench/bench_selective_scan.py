"""Selective scan on CPU at VideoMamba-M shapes: the per-timestep reference loop vs the project's scan.

d_model 576 -> d_inner 1152, d_state 16, L = 8 frames x 196 patches + CLS = 1569, batch 1. Measured side by side
in one run (median of repeats), for one scan direction and for the bidirectional call VideoMamba makes (both
directions as one grouped scan vs the reference run once per direction). Outputs are checked to agree.

    python bench/bench_selective_scan.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gemma3.model.selective_scan import selective_scan_reference, selective_scan_torch  # noqa: E402


def _inputs(b: int, d: int, n: int, length: int, g: torch.Generator):
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(
        u=r(b, d, length),
        delta=0.5 * r(b, d, length),
        A=-torch.exp(0.5 * r(d, n)),
        B=r(b, n, length),
        C=r(b, n, length),
        D=r(d),
        z=r(b, d, length),
        delta_bias=0.1 * r(d),
        delta_softplus=True,
    )


def _time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--d_model", type=int, default=576)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b, d, n, length = 1, 2 * args.d_model, 16, 8 * 196 + 1
    g = torch.Generator().manual_seed(0)
    fwd, bwd = _inputs(b, d, n, length, g), _inputs(b, d, n, length, g)
    print(f"shapes: batch {b}, d_inner {d}, d_state {n}, L {length}; threads {args.threads}")

    t_ref, y_ref = _time(lambda: selective_scan_reference(**fwd), args.repeats)
    t_new, y_new = _time(lambda: selective_scan_torch(**fwd), args.repeats)
    err = (y_ref - y_new).abs().max().item()
    print(
        f"one direction : reference {t_ref * 1e3:8.1f} ms | project {t_new * 1e3:7.1f} ms | "
        f"ratio {t_ref / t_new:5.2f}x | max |diff| {err:.2e}"
    )

    both = dict(
        u=torch.cat([fwd["u"], bwd["u"]], 1),
        delta=torch.cat([fwd["delta"], bwd["delta"]], 1),
        A=torch.cat([fwd["A"], bwd["A"]]),
        B=torch.stack([fwd["B"], bwd["B"]], 1),
        C=torch.stack([fwd["C"], bwd["C"]], 1),
        D=torch.cat([fwd["D"], bwd["D"]]),
        z=torch.cat([fwd["z"], bwd["z"]], 1),
        delta_bias=torch.cat([fwd["delta_bias"], bwd["delta_bias"]]),
        delta_softplus=True,
    )
    t_ref2, y_ref2 = _time(
        lambda: torch.cat([selective_scan_reference(**fwd), selective_scan_reference(**bwd)], 1), args.repeats
    )
    t_new2, y_new2 = _time(lambda: selective_scan_torch(**both), args.repeats)
    err2 = (y_ref2 - y_new2).abs().max().item()
    print(
        f"bidirectional : reference {t_ref2 * 1e3:8.1f} ms | project {t_new2 * 1e3:7.1f} ms | "
        f"ratio {t_ref2 / t_new2:5.2f}x | max |diff| {err2:.2e}"
    )
    print(
        f"goal >= 5x: one direction {'met' if t_ref / t_new >= 5 else 'NOT met'}, "
        f"bidirectional {'met' if t_ref2 / t_new2 >= 5 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
