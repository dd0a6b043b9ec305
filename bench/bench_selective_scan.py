"""Selective scan on CPU at VideoMamba-M shapes: the project's scan against every CPU path users have today, the
machine's bound for it, and the whole VideoMamba-M forward per clip.

Baselines (each called as users call it, once per direction for a bidirectional scan, measured, not doubled):
- mamba-ssm 2.3.1's own ``selective_scan_ref`` (what a user without the CUDA kernels runs), compiled unchanged from
  its published source (`gemma3.model.upstream`; the sdist is in .cache/upstream, or ``$MAMBA_SSM_SOURCE``);
- transformers' Mamba slow path: ``mamba_selective_scan`` (transformers.models.mamba), the function
  ``MambaMixer`` calls without the kernels (its per-timestep loop);
- the same with ``use_mambapy=True``: mambapy's parallel ``pscan`` (``pip install mambapy``; the row is left out
  when it is not installed).
Shapes: d_model 576 -> d_inner 1152, d_state 16, L = 8 frames x 196 patches + CLS = 1569, batch 1, fp32,
delta_softplus with a bias, D and z, as VideoMamba calls it. Forward, and forward + backward (sum of squares loss,
gradients of every input), one direction and bidirectional (the project: one grouped call; its training path is the
fused kernel's forward and backward, the blocked PyTorch scan through autograd printed beside it). Every output and
gradient is checked against mamba-ssm's reference.

The bound: the bytes the forward must read and write over this machine's measured copy bandwidth, and its exps and
multiply-adds over this machine's peak rates (the kernel library's vectorised exp and multiply-add loops on
register-resident data, `gemma3_peak_loop`); the forward is compared with the larger of the two. Last, VideoMamba-M
(32 bidirectional blocks, random weights, 8 frames at 224) per clip, with the scan's share (its grouped call at
the blocks' shapes x depth).

    python bench/bench_selective_scan.py [--repeats 5] [--grad_repeats 1] [--threads 2] [--skip_slow_grad]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from timing import cpu_line, median_time  # noqa: E402

from gemma3.model.native_kernels import load_kernel  # noqa: E402
from gemma3.model.selective_scan import selective_scan_fused, selective_scan_torch  # noqa: E402
from gemma3.model.upstream import mamba_selective_scan_ref  # noqa: E402

TENSORS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _inputs(b: int, d: int, n: int, length: int, g: torch.Generator) -> dict:
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(
        u=r(b, d, length), delta=0.5 * r(b, d, length), A=-torch.exp(0.5 * r(d, n)), B=r(b, n, length),
        C=r(b, n, length), D=r(d), z=r(b, d, length), delta_bias=0.1 * r(d),
    )  # fmt: skip


def _bidirectional(fwd: dict, bwd: dict) -> dict:
    """Both directions as one grouped call: channels concatenated, B/C stacked as 2 groups."""
    cat = {k: torch.cat([fwd[k], bwd[k]], 1 if fwd[k].dim() == 3 else 0) for k in ("u", "delta", "z", "A", "D")}
    return {**cat, "B": torch.stack([fwd["B"], bwd["B"]], 1), "C": torch.stack([fwd["C"], bwd["C"]], 1),
            "delta_bias": torch.cat([fwd["delta_bias"], bwd["delta_bias"]])}  # fmt: skip


def _forward_backward(fn, inputs: dict) -> tuple[torch.Tensor, dict]:
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y = fn(**leaves, delta_softplus=True)
    y.pow(2).sum().backward()
    return y.detach(), {k: v.grad for k, v in leaves.items()}


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() / max(1.0, b[k].abs().max().item()) for k in a)


def _baselines(source: str | None) -> dict:
    """name -> scan function with ``selective_scan_ref``'s signature; mambapy's only when it is installed."""
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan
    from transformers.utils.import_utils import is_mambapy_available

    out = {
        "mamba-ssm ref": mamba_selective_scan_ref(source),
        "transformers slow path": lambda **kw: mamba_selective_scan(kw.pop("u"), kw.pop("delta"), **kw),
    }
    if is_mambapy_available():
        out["mambapy pscan"] = lambda **kw: mamba_selective_scan(kw.pop("u"), kw.pop("delta"), use_mambapy=True, **kw)
    else:
        print("mambapy not installed (pip install mambapy): its row is left out")
    return out


def _per_direction(fn, fwd: dict, bwd: dict):
    """A bidirectional scan the way a baseline runs it: one call per direction."""
    return lambda **_: torch.cat([fn(**fwd, delta_softplus=True), fn(**bwd, delta_softplus=True)], 1)


def _bidirectional_forward_backward(fn, fwd: dict, bwd: dict) -> tuple[torch.Tensor, dict]:
    """Forward + backward of a baseline's two one-direction calls (one loss over both), gradients as the grouped
    call's (channels concatenated, B/C stacked)."""
    lf = {k: v.clone().requires_grad_(True) for k, v in fwd.items()}
    lb = {k: v.clone().requires_grad_(True) for k, v in bwd.items()}
    y = torch.cat([fn(**lf, delta_softplus=True), fn(**lb, delta_softplus=True)], 1)
    y.pow(2).sum().backward()
    grads = _bidirectional({k: v.grad for k, v in lf.items()}, {k: v.grad for k, v in lb.items()})
    return y.detach(), grads


def _rate(fn, items: float, repeats: int = 5) -> float:
    """Items per second of ``fn`` (median of repeats)."""
    return items / median_time(fn, repeats)


def peak_rates(threads: int) -> tuple[float, float]:
    """This machine's peak exps and multiply-adds per second on ``threads`` threads: the kernel library's
    ``gemma3_peak_loop`` (the scan's own exp and an FMA over 256 register-resident lanes, compiled -march=native)."""
    library = load_kernel("selective_scan_cpu")
    if library is None:
        raise SystemExit("the bound needs the compiled kernel library (a C++ compiler)")
    loop = library.gemma3_peak_loop
    loop.restype, loop.argtypes = ctypes.c_float, [ctypes.c_int64] * 3
    rates = []
    for kind, iters in ((0, 100_000), (1, 1_000_000)):
        rates.append(_rate(lambda kind=kind, iters=iters: loop(kind, iters, threads), iters * 256 * threads))
    return rates[0], rates[1]


def machine_bound(b: int, d: int, n: int, length: int, threads: int) -> dict:
    """This machine's lower bound for one forward scan: memory time (bytes / copy bandwidth) and compute time (exps /
    peak exp rate + multiply-adds / peak FMA rate, both in registers)."""
    big = torch.empty(64 * 2**20)  # 256 MB, far past the caches
    dst = torch.empty_like(big)
    bandwidth = _rate(lambda: dst.copy_(big), 2 * big.numel() * 4)  # bytes read + written per second
    exp_rate, madd_rate = peak_rates(threads)
    elements = b * d * length * n
    # read u, delta, z [B,D,L], B, C [B,N,L]; write y [B,D,L] (A, D and the bias are negligible)
    bytes_moved = (4 * b * d * length + 2 * b * n * length) * 4
    # per (b, d, l, n): exp(delta*A); multiply-adds: delta*A, delta*u*B, h = dA*h + x, y += C*h
    memory_s = bytes_moved / bandwidth
    compute_s = elements / exp_rate + 4 * elements / madd_rate
    print(
        f"machine: copy bandwidth {bandwidth / 1e9:.1f} GB/s, peak exp {exp_rate / 1e9:.2f} G/s, multiply-add "
        f"{madd_rate / 1e9:.1f} G/s (vectorised, in registers, {threads} threads)\n"
        f"scan forward needs {bytes_moved / 1e6:.0f} MB moved ({memory_s * 1e3:.1f} ms), {elements / 1e6:.0f} M exps "
        f"and {4 * elements / 1e6:.0f} M multiply-adds ({compute_s * 1e3:.1f} ms): "
        f"bound {max(memory_s, compute_s) * 1e3:.1f} ms"
    )
    return {"memory_s": memory_s, "compute_s": compute_s, "bound_s": max(memory_s, compute_s)}


def videomamba_m_per_clip(repeats: int, scan_bidirectional_s: float) -> None:
    """VideoMamba-M forward (random weights, 8 frames at 224, batch 1) and the scan's share of it."""
    from gemma3.model.configuration import VideoMambaConfig
    from gemma3.model.videomamba import VideoMambaModel

    cfg = VideoMambaConfig.from_size("middle", num_frames=8, image_size=224, use_cuda_kernels=False)
    model = VideoMambaModel(cfg).eval()
    clip = torch.randn(1, 8, 3, 224, 224)
    with torch.inference_mode():
        t = median_time(lambda: model(clip), repeats)
    scan = cfg.depth * scan_bidirectional_s
    print(
        f"VideoMamba-M forward per clip (8 x 224, {cfg.depth} bidirectional blocks): {t:.2f} s; the scan "
        f"{scan:.2f} s of it ({100 * scan / t:.0f}%: {cfg.depth} x its grouped bidirectional call at these shapes)"
    )


def _row(label: str, name: str, t_base: float, t_new: float, err: float | None) -> float:
    ratio = t_base / t_new
    diff = "" if err is None else f" | diff {err:.1e}"
    print(f"{label:<32} | {name:<22} {t_base:9.3f} s | project {t_new:7.3f} s | {ratio:7.2f}x{diff}")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5, help="timings of the fast paths (median, after one warm-up)")
    ap.add_argument(
        "--grad_repeats",
        type=int,
        default=1,
        help="forward+backward timings of the per-timestep baselines (mamba-ssm's ref, transformers' slow path: "
        "~4 min each per direction at these shapes: each timestep's indexing makes a full-size gradient buffer)",
    )
    ap.add_argument("--skip_slow_grad", action="store_true", help="no forward+backward of the per-timestep baselines")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--d_model", type=int, default=576)
    ap.add_argument("--length", type=int, default=8 * 196 + 1)
    ap.add_argument("--mamba_ssm_source", default=None, help="mamba-ssm sdist / source folder (default: looked up)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_line()}; torch {torch.__version__}")
    baselines = _baselines(args.mamba_ssm_source)
    ref = baselines["mamba-ssm ref"]
    b, d, n, length = 1, 2 * args.d_model, 16, args.length
    g = torch.Generator().manual_seed(0)
    fwd, bwd = _inputs(b, d, n, length, g), _inputs(b, d, n, length, g)
    both = _bidirectional(fwd, bwd)
    print(f"shapes: batch {b}, d_inner {d}, d_state {n}, L {length}; fp32, {args.threads} threads")
    slow = {"mamba-ssm ref", "transformers slow path"}

    # The project's scan on CPU is the fused kernel: without gradients one call (inference), with them the kernel's
    # forward and its own backward (training: the forward+backward rows).
    def ours_one():
        return selective_scan_fused(**fwd, delta_softplus=True)

    def ours_both():
        return selective_scan_fused(**both, delta_softplus=True)

    blocked_one = median_time(lambda: selective_scan_torch(**fwd, delta_softplus=True), args.repeats)
    blocked_both = median_time(lambda: selective_scan_torch(**both, delta_softplus=True), args.repeats)

    y_ref, y_ref_both = ref(**fwd, delta_softplus=True), _per_direction(ref, fwd, bwd)()
    t_one, t_both = median_time(ours_one, args.repeats), median_time(ours_both, args.repeats)
    print(f"project forward: fused kernel {t_one * 1e3:.1f} / {t_both * 1e3:.1f} ms (one direction / bidirectional), "
          f"the blocked PyTorch scan {blocked_one * 1e3:.1f} / {blocked_both * 1e3:.1f} ms")  # fmt: skip
    err_one, err_both = _max_diff({"y": ours_one()}, {"y": y_ref}), _max_diff({"y": ours_both()}, {"y": y_ref_both})
    ratios = {}
    for name, fn in baselines.items():
        y = fn(**fwd, delta_softplus=True)
        print(f"{name}: forward within {_max_diff({'y': y}, {'y': y_ref}):.1e} of mamba-ssm's reference")
        ratios[("forward, one direction", name)] = _row(
            "forward, one direction", name,
            median_time(lambda fn=fn: fn(**fwd, delta_softplus=True), args.repeats), t_one, err_one,
        )  # fmt: skip
        ratios[("forward, bidirectional", name)] = _row(
            "forward, bidirectional", name, median_time(_per_direction(fn, fwd, bwd), args.repeats), t_both, err_both
        )

    grads_one = _forward_backward(selective_scan_fused, fwd)[1]
    grads_both = _forward_backward(selective_scan_fused, both)[1]
    t_one = median_time(lambda: _forward_backward(selective_scan_fused, fwd), args.repeats)
    t_both = median_time(lambda: _forward_backward(selective_scan_fused, both), args.repeats)
    blocked_one = median_time(lambda: _forward_backward(selective_scan_torch, fwd), args.repeats)
    blocked_both = median_time(lambda: _forward_backward(selective_scan_torch, both), args.repeats)
    print(f"project forward+backward: fused kernel {t_one * 1e3:.1f} / {t_both * 1e3:.1f} ms (one direction / "
          f"bidirectional), the blocked PyTorch scan through autograd {blocked_one * 1e3:.1f} / "
          f"{blocked_both * 1e3:.1f} ms")  # fmt: skip
    for name, fn in baselines.items():
        if name in slow and args.skip_slow_grad:
            continue
        reps, warm = (args.grad_repeats, False) if name in slow else (args.repeats, True)
        got: dict = {}
        t_base = median_time(lambda fn=fn, got=got: got.update(_forward_backward(fn, fwd)[1]), reps, warmup=warm)
        ratios[("forward+backward, one direction", name)] = _row(
            "forward+backward, one direction", name, t_base, t_one, _max_diff(grads_one, got)
        )
        t_base = median_time(lambda fn=fn, got=got: got.update(_bidirectional_forward_backward(fn, fwd, bwd)[1]), reps,
                             warmup=warm)  # fmt: skip
        ratios[("forward+backward, bidirectional", name)] = _row(
            "forward+backward, bidirectional", name, t_base, t_both, _max_diff(grads_both, got)
        )
    missed = [k for k, r in ratios.items() if r < 1]
    print("ahead of every baseline: " + ("yes" if not missed else f"NO: {missed}"))

    bound = machine_bound(b, d, n, length, args.threads)
    t_fwd = median_time(ours_one, args.repeats)
    verdict = "met" if t_fwd <= 2 * bound["bound_s"] else "NOT met"
    print(f"project forward {t_fwd * 1e3:.1f} ms = {t_fwd / bound['bound_s']:.1f}x the bound (goal <= 2x: {verdict})")
    videomamba_m_per_clip(max(1, args.repeats // 2), median_time(ours_both, args.repeats))


if __name__ == "__main__":
    main()
