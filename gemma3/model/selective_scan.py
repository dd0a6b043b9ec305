"""Mamba selective scan and causal depthwise conv: a pure-PyTorch path for CPU / any GPU, CUDA kernels if present.

Conventions follow ``mamba_ssm.selective_scan_fn``: u, delta, z ``[B, D, L]``; A ``[D, N]``; B, C ``[B, N, L]``
(or grouped ``[B, G, N, L]``);
D ``[D]``; output ``[B, D, L]``. The recurrence, per channel d and state n:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,    y_t = <C_t, h_t> + D * u_t,    y *= silu(z)

`selective_scan` discretises a block of timesteps at once (cache-sized tensors, laid out time-major so each step
reads contiguous memory), runs the recurrence with one in-place op per step over views made once, and contracts
with C per block as a batched row-vector x matrix product (state axis before channels, so no copies).
`selective_scan_reference` is the plain per-timestep loop, kept as the ground truth for tests and benchmarks.
The ``mamba_ssm`` / ``causal_conv1d`` CUDA kernels are imported lazily and used only for CUDA tensors.

On CPU, `selective_scan_fused` runs the whole recurrence, the C contraction, the D skip and the silu gate in one
pass per 16-channel tile with the tile's state in L1 (``csrc/selective_scan_cpu.cpp``, compiled once per machine for
its own vector width, `gemma3.model.native_kernels`). With gradients (training) the same kernel runs the recurrence
inside an autograd function whose backward is the kernel's reverse pass (`_FusedScan`), while the D skip, the gate
and delta's softplus stay PyTorch ops; autograd through the blocked path's per-timestep steps cost 45% of a
VideoMamba encoder's training step. Where the kernel cannot be built (no C++ compiler) the blocked PyTorch path runs
instead.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gemma3.model.native_kernels import load_kernel

logger = logging.getLogger(__name__)


_IMPORT_ERRORS: dict[str, str] = {}


@functools.lru_cache(maxsize=1)
def _cuda_scan_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as err:  # ImportError, or an extension that fails to load without CUDA
        _IMPORT_ERRORS["mamba_ssm"] = f"{type(err).__name__}: {err}"
        return None
    return selective_scan_fn


@functools.lru_cache(maxsize=1)
def _cuda_conv_fn():
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception as err:
        _IMPORT_ERRORS["causal_conv1d"] = f"{type(err).__name__}: {err}"
        return None
    return causal_conv1d_fn


def cuda_kernels_available() -> bool:
    """Whether the mamba_ssm selective-scan kernel imports (it needs its CUDA extension)."""
    return torch.cuda.is_available() and _cuda_scan_fn() is not None


def kernel_import_errors() -> dict[str, str]:
    """Why the mamba_ssm / causal_conv1d kernels did not import (empty when both did)."""
    _cuda_scan_fn(), _cuda_conv_fn()
    return dict(_IMPORT_ERRORS)


@functools.lru_cache(maxsize=1)
def _warn_once(message: str) -> None:
    logger.warning(message)


def check_kernels(require: bool = False) -> bool:
    """On a CUDA machine, say loudly (once) when the VideoMamba kernels do not import, with the import error;
    ``require`` makes that fatal. Returns whether they are usable (always False without CUDA)."""
    if not torch.cuda.is_available():
        return False
    errors = kernel_import_errors()
    if not errors:
        return True
    message = (
        "CUDA is available but the mamba_ssm / causal_conv1d kernels do not import ("
        + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
        + "); VideoMamba falls back to the PyTorch selective scan, which is much slower on GPU. "
        "Install them with requirements-gpu.txt."
    )
    if require:
        raise RuntimeError(message + " (--require_kernels)")
    _warn_once(message)
    return False


def _prepare(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    return F.softplus(delta) if delta_softplus else delta


def _finish(y, u, D, z, dtype):
    if D is not None:
        y = y + u.float() * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def _grouped(M: torch.Tensor) -> torch.Tensor:
    """B or C as [B, G, N, L] (``[B, N, L]`` is one group)."""
    return M[:, None] if M.dim() == 3 else M


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Per-timestep loop (ground truth). Shapes as in the module docstring; B, C may be grouped [B, G, N, L]."""
    dtype = u.dtype
    delta = _prepare(delta, delta_bias, delta_softplus)
    u_f, A_f = u.float(), A.float()
    b, d, length = u.shape
    Bg, Cg = _grouped(B).float(), _grouped(C).float()  # [B, G, N, L]
    g = Bg.shape[1]
    du = (delta * u_f).view(b, g, d // g, length)
    h = u_f.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(length):
        dA = torch.exp(delta[:, :, t, None] * A_f)  # [B, D, N]
        dBu = (du[..., t, None] * Bg[:, :, None, :, t]).view(b, d, -1)  # [B, D, N]
        h = dA * h + dBu
        ys.append(torch.einsum("bgcn,bgn->bgc", h.view(b, g, d // g, -1), Cg[..., t]).reshape(b, d))
    return _finish(torch.stack(ys, dim=-1), u, D, z, dtype)


def _num_groups(u: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> int:
    """G of grouped B/C (1 when ungrouped); the channels must split into G equal groups."""
    g, gc, d = _grouped(B).shape[1], _grouped(C).shape[1], u.shape[1]
    if d % g or gc != g:
        raise ValueError(f"{d} channels cannot be split into B/C groups {g} / {gc}")
    return g


def _time_major(u, delta, A, B, C, delta_bias, delta_softplus):
    """Inputs of both blocked paths, time-major with the state axis before the channels, so the contraction with
    C is a row-vector x matrix product over contiguous rows: delta [L,B,G,1,D/G], delta*u [L,B,G,1,D/G],
    A [G,N,D/G], B [L,B,G,N,1], C [L,B,G,1,N]; and the group count G."""
    delta = _prepare(delta, delta_bias, delta_softplus)  # [B, D, L]
    b, d, length = u.shape
    g = _num_groups(u, B, C)
    Bg, Cg = _grouped(B).float(), _grouped(C).float()
    dl_t = delta.permute(2, 0, 1).contiguous().view(length, b, g, 1, d // g)  # [L, B, G, 1, D/G]
    du_t = (delta * u.float()).permute(2, 0, 1).contiguous().view(length, b, g, 1, d // g)  # [L, B, G, 1, D/G]
    A_t = A.float().reshape(g, d // g, -1).transpose(1, 2).contiguous()  # [G, N, D/G]
    B_t = Bg.permute(3, 0, 1, 2)[..., None].contiguous()  # [L, B, G, N, 1]
    C_t = Cg.permute(3, 0, 1, 2)[:, :, :, None, :].contiguous()  # [L, B, G, 1, N]
    return dl_t, du_t, A_t, B_t, C_t, g


def _auto_block(b: int, d: int, n: int, budget: int = 1_200_000) -> int:
    """Timesteps per block: a power of two in [8, 64] keeping each block buffer near ``budget`` floats (~5 MB).
    Measured at VideoMamba-M shapes: 64 for one scan of 1152 channels, 32 when the per-step state is twice that."""
    per_step = max(1, b * d * n)
    return int(max(8, min(64, 2 ** math.floor(math.log2(max(1, budget // per_step))))))


def selective_scan_torch(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, block: int | None = None
):
    """Blocked pure-PyTorch scan: exact fp32 recurrence (no log-space tricks that could overflow).

    Time-major layout and two ``[block, B, G, N, D/G]`` buffers reused for every block keep the working set in
    cache; each timestep costs one in-place ``addcmul`` over all channels, and each block one batched
    ``C_t @ h_t`` product. Grouped B/C (``[B, G, N, L]``, channels split into G equal groups) let independent
    scans, e.g. the two directions of a bidirectional Mamba, share one loop.
    """
    if _needs_grad(u, delta, A, B, C, D, z, delta_bias):
        return _selective_scan_autograd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block or 64)
    groups = _num_groups(u, B, C)
    if groups > 1:
        # Independent scans run one after the other: each one's block buffers then stay in cache (measured
        # faster than one loop over all groups at VideoMamba-M shapes).
        c = u.shape[1] // groups

        def channels(t: torch.Tensor | None, i: int) -> torch.Tensor | None:
            """Group i's channels of a [B, D, L] tensor or a [D] vector."""
            if t is None:
                return None
            return t[..., i * c : (i + 1) * c, :] if t.dim() == 3 else t[i * c : (i + 1) * c]

        parts = [
            selective_scan_torch(
                channels(u, i),
                channels(delta, i),
                A[i * c : (i + 1) * c],
                _grouped(B)[:, i],
                _grouped(C)[:, i],
                channels(D, i),
                channels(z, i),
                channels(delta_bias, i),
                delta_softplus,
                block,
            )
            for i in range(groups)
        ]
        return torch.cat(parts, dim=1)
    dtype = u.dtype
    b, d, length = u.shape
    n = A.shape[1]
    dl_t, du_t, A_t, B_t, C_t, g = _time_major(u, delta, A, B, C, delta_bias, delta_softplus)
    k = min(block or _auto_block(b, d, n), length)
    decay = u.new_empty(k, b, g, n, d // g, dtype=torch.float32)  # exp(delta * A)
    state = u.new_empty(k, b, g, n, d // g, dtype=torch.float32)  # delta * B * u, overwritten in place by h_t
    y_t = u.new_empty(length, b, g, 1, d // g, dtype=torch.float32)  # [L, B, G, 1, D/G]
    h = u.new_zeros(b, g, n, d // g, dtype=torch.float32)
    steps = list(zip(state.unbind(0), decay.unbind(0)))  # per-timestep views, made once for every block
    for s in range(0, length, k):
        e = min(s + k, length)
        m = e - s
        dA, x = decay[:m], state[:m]
        torch.mul(dl_t[s:e], A_t, out=dA).exp_()
        torch.mul(du_t[s:e], B_t[s:e], out=x)
        for x_t, a_t in steps[:m]:
            h = x_t.addcmul_(a_t, h)
        h = h.clone()  # the buffer is reused by the next block
        torch.matmul(C_t[s:e], x, out=y_t[s:e])  # <C_t, h_t>: [m,B,G,1,N] @ [m,B,G,N,D/G]
    return _finish(y_t.reshape(length, b, d).permute(1, 2, 0), u, D, z, dtype)


def _selective_scan_autograd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block: int):
    """The blocked scan with out-of-place steps, so autograd can differentiate it (training)."""
    dtype = u.dtype
    b, d, length = u.shape
    dl_t, du_t, A_t, B_t, C_t, g = _time_major(u, delta, A, B, C, delta_bias, delta_softplus)
    h = u.new_zeros(b, g, A.shape[1], d // g, dtype=torch.float32)
    ys = []
    for s in range(0, length, block):
        e = min(s + block, length)
        dA = torch.exp(dl_t[s:e] * A_t)  # [m, B, G, N, D/G]
        x = du_t[s:e] * B_t[s:e]  # [m, B, G, N, D/G]
        hs = []
        # unbind, not x[t]: the backward of one select per step writes into a zero tensor of the whole block
        # (quadratic in the block length: 80% of a VideoMamba training step); unbind's stacks the steps once
        for x_t, a_t in zip(x.unbind(0), dA.unbind(0)):
            h = torch.addcmul(x_t, a_t, h)
            hs.append(h)
        ys.append(torch.matmul(C_t[s:e], torch.stack(hs)))  # [m, B, G, 1, D/G]
    y = torch.cat(ys).reshape(length, b, d)
    return _finish(y.permute(1, 2, 0), u, D, z, dtype)


def selective_scan_graph(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence as one ``torch scan`` over time (a higher-order op): what ``torch.export`` captures as a
    single loop, and the ONNX exporter writes as one ONNX ``Scan`` node (dynamic batch and length), instead of a
    graph unrolled over every timestep. Same shapes and results as `selective_scan_reference`."""
    from torch._higher_order_ops.scan import scan

    dtype = u.dtype
    b, d, length = u.shape
    dl_t, du_t, A_t, B_t, C_t, g = _time_major(u, delta, A, B, C, delta_bias, delta_softplus)

    def step(h: torch.Tensor, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        dl, du, b_t, c_t = xs  # [B, G, 1, D/G] x2, [B, G, N, 1], [B, G, 1, N]
        h = torch.exp(dl * A_t) * h + du * b_t  # [B, G, N, D/G]
        return h, torch.matmul(c_t, h)  # y_t [B, G, 1, D/G]

    h0 = u.new_zeros(b, g, A.shape[1], d // g, dtype=torch.float32)
    _, y_t = scan(step, h0, (dl_t, du_t, B_t, C_t))  # [L, B, G, 1, D/G]
    return _finish(y_t.reshape(length, b, d).permute(1, 2, 0), u, D, z, dtype)


@functools.lru_cache(maxsize=1)
def fused_cpu_scan() -> Callable | None:
    """The fused CPU scan's C entry point (``csrc/selective_scan_cpu.cpp``, compiled for this machine on first use),
    or None where it cannot be built."""
    library = load_kernel("selective_scan_cpu")
    return None if library is None else scan_entry(library)


def scan_entry(library: ctypes.CDLL) -> Callable:
    """The kernel library's ``gemma3_scan_forward``, typed: 8 pointers (u, delta, A, Bt, Ct, D, z, y), then batch,
    channels, length, groups, d_state and threads."""
    fn = library.gemma3_scan_forward
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int64] * 6
    return fn


@functools.lru_cache(maxsize=1)
def fused_cpu_scan_backward() -> Callable | None:
    """The fused CPU scan's backward entry point (same library as `fused_cpu_scan`), or None where it cannot be
    built."""
    library = load_kernel("selective_scan_cpu")
    return None if library is None else backward_entry(library)


def backward_entry(library: ctypes.CDLL) -> Callable:
    """The kernel library's ``gemma3_scan_backward``, typed: 11 pointers (u, delta, A, Bt, Ct, dy, du, ddelta,
    dA_part, dBt_part, dCt_part), then batch, channels, length, groups, d_state and threads."""
    fn = library.gemma3_scan_backward
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 11 + [ctypes.c_int64] * 6
    return fn


_NOT_BUILT = "the fused CPU selective scan could not be built on this machine (see the log)"
KERNEL_TILE = 16  # channels per tile of the fused kernel (kTile in csrc/selective_scan_cpu.cpp)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _fused_inputs(u, delta, A, B, C, delta_bias, delta_softplus):
    """The kernel's inputs, fp32 and contiguous (differentiable ops, so autograd reaches the caller's tensors): u,
    the prepared delta [B, D, L], A [D, N], B and C time-major per group [B, G, L, N] (each timestep's N values
    contiguous); checks the shapes."""
    b, d, length = u.shape
    g, n = _num_groups(u, B, C), A.shape[1]
    if A.shape[0] != d or not 1 <= n <= 64:
        raise ValueError(f"A must be [{d}, N] with N from 1 to 64, got {tuple(A.shape)}")
    Bg, Cg = _grouped(B), _grouped(C)  # [B, G, N, L]
    if Bg.shape != (b, g, n, length) or Cg.shape != Bg.shape:
        raise ValueError(f"B / C must be [{b}, {n}, {length}] or [{b}, G, {n}, {length}], got {tuple(B.shape)}")
    Bt = Bg.float().transpose(-1, -2).contiguous()  # [B, G, L, N]
    Ct = Cg.float().transpose(-1, -2).contiguous()
    dl = _prepare(delta, delta_bias, delta_softplus).contiguous()  # [B, D, L]
    return u.float().contiguous(), dl, A.float().contiguous(), Bt, Ct


def _kernel_forward(u_f, dl, A_f, Bt, Ct, D_f=None, z_f=None) -> torch.Tensor:
    """y [B, D, L] fp32 from the fused kernel (inputs as `_fused_inputs` gives them)."""
    kernel = fused_cpu_scan()
    if kernel is None:
        raise RuntimeError(_NOT_BUILT)
    b, d, length = u_f.shape
    y = torch.empty_like(u_f)  # [B, D, L]
    kernel(_ptr(u_f), _ptr(dl), _ptr(A_f), _ptr(Bt), _ptr(Ct), _ptr(D_f), _ptr(z_f), _ptr(y), b, d, length,
           Bt.shape[1], A_f.shape[1], torch.get_num_threads())  # fmt: skip
    return y


class _FusedScan(torch.autograd.Function):
    """y_t = <C_t, h_t> (no D, no gate) by the fused kernel, differentiable in u, delta, A, B and C: the backward
    recomputes each tile's states and walks back through them (``gemma3_scan_backward``)."""

    @staticmethod
    def forward(ctx, u_f, dl, A_f, Bt, Ct):  # fp32 contiguous, as `_fused_inputs` gives them
        ctx.save_for_backward(u_f, dl, A_f, Bt, Ct)
        return _kernel_forward(u_f, dl, A_f, Bt, Ct)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        u_f, dl, A_f, Bt, Ct = ctx.saved_tensors
        backward = fused_cpu_scan_backward()
        b, d, length = u_f.shape
        g, n = Bt.shape[1], A_f.shape[1]
        tiles = -(-(d // g) // KERNEL_TILE)  # the kernel's tiles per group
        dy = dy.float().contiguous()
        du, ddl = torch.empty_like(u_f), torch.empty_like(dl)
        dA = u_f.new_empty(b, d, n)  # one row per batch element
        dBt, dCt = (u_f.new_zeros(b, g, tiles, length, n) for _ in range(2))  # one slice per tile
        backward(_ptr(u_f), _ptr(dl), _ptr(A_f), _ptr(Bt), _ptr(Ct), _ptr(dy), _ptr(du), _ptr(ddl), _ptr(dA),
                 _ptr(dBt), _ptr(dCt), b, d, length, g, n, torch.get_num_threads())  # fmt: skip
        return du, ddl, dA.sum(0), dBt.sum(2), dCt.sum(2)


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The fused CPU scan: same shapes and results as `selective_scan_reference`, computed in fp32 and returned in
    u's dtype, on ``torch.get_num_threads()`` threads. With gradients the recurrence runs in `_FusedScan` (the
    kernel's own backward) and the D skip and gate as PyTorch ops; without, all in one kernel call. Raises
    RuntimeError where the kernel could not be built."""
    u_f, dl, A_f, Bt, Ct = _fused_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    if _needs_grad(u, delta, A, B, C, D, z, delta_bias):
        if fused_cpu_scan_backward() is None:
            raise RuntimeError(_NOT_BUILT)
        return _finish(_FusedScan.apply(u_f, dl, A_f, Bt, Ct), u, D, z, u.dtype)
    D_f = None if D is None else D.float().contiguous()
    z_f = None if z is None else z.float().contiguous()
    return _kernel_forward(u_f, dl, A_f, Bt, Ct, D_f, z_f).to(u.dtype)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, use_cuda_kernels: bool = True
):
    """Selective scan: the mamba_ssm CUDA kernel for CUDA tensors when it imports, `selective_scan_graph` while
    ``torch.export`` traces the model (ONNX export), the fused CPU kernel on CPU (with its backward when gradients
    are needed), else the blocked PyTorch path."""
    if torch.compiler.is_exporting():
        return selective_scan_graph(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if use_cuda_kernels and u.is_cuda:
        fn = _cuda_scan_fn()
        if fn is not None:
            return fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
        check_kernels()  # warns once with the import error
    training = _needs_grad(u, delta, A, B, C, D, z, delta_bias)
    if u.device.type == "cpu" and fused_cpu_scan() and (not training or fused_cpu_scan_backward()):
        return selective_scan_fused(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    use_cuda_kernels: bool = True,
) -> torch.Tensor:
    """Depthwise causal conv over time. x [B, D, L], weight [D, K] -> [B, D, L]."""
    if use_cuda_kernels and x.is_cuda:
        fn = _cuda_conv_fn()
        if fn is not None:
            return fn(x, weight, bias, activation=activation)
    k = weight.shape[-1]
    y = F.conv1d(F.pad(x, (k - 1, 0)), weight[:, None, :], bias, groups=x.shape[1])
    return F.silu(y) if activation in ("silu", "swish") else y
