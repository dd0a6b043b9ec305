"""Mamba selective scan and causal depthwise conv: a pure-PyTorch path for CPU / any GPU, CUDA kernels if present.

Conventions follow ``mamba_ssm.selective_scan_fn``: u, delta, z ``[B, D, L]``; A ``[D, N]``; B, C ``[B, N, L]``
(or grouped ``[B, G, N, L]``);
D ``[D]``; output ``[B, D, L]``. The recurrence, per channel d and state n:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,    y_t = <C_t, h_t> + D * u_t,    y *= silu(z)

`selective_scan` discretises a block of timesteps at once (cache-sized tensors, laid out time-major so each step
reads contiguous memory), runs the recurrence with two in-place ops per step, and contracts with C per block.
`selective_scan_reference` is the plain per-timestep loop, kept as the ground truth for tests and benchmarks.
The ``mamba_ssm`` / ``causal_conv1d`` CUDA kernels are imported lazily and used only for CUDA tensors.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _cuda_scan_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or an extension that fails to load without CUDA
        return None
    return selective_scan_fn


@functools.lru_cache(maxsize=1)
def _cuda_conv_fn():
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:
        return None
    return causal_conv1d_fn


def cuda_kernels_available() -> bool:
    """Whether the mamba_ssm selective-scan kernel imports (it needs its CUDA extension)."""
    return torch.cuda.is_available() and _cuda_scan_fn() is not None


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


def _time_major(u, delta, B, C, delta_bias, delta_softplus):
    """Inputs of both blocked paths, laid out time-major: (delta [L,B,D], delta*u [L,B,G,D/G,1],
    B [L,B,G,1,N], C [L,B,G,N], groups G)."""
    delta = _prepare(delta, delta_bias, delta_softplus)  # [B, D, L]
    b, d, length = u.shape
    Bg, Cg = _grouped(B).float(), _grouped(C).float()
    g = Bg.shape[1]
    if d % g or Cg.shape[1] != g:
        raise ValueError(f"{d} channels cannot be split into B/C groups {Bg.shape[1]} / {Cg.shape[1]}")
    dl_t = delta.permute(2, 0, 1).contiguous()  # [L, B, D]
    du_t = (delta * u.float()).permute(2, 0, 1).reshape(length, b, g, d // g, 1)  # [L, B, G, D/G, 1]
    B_t = Bg.permute(3, 0, 1, 2)[:, :, :, None, :].contiguous()  # [L, B, G, 1, N]
    C_t = Cg.permute(3, 0, 1, 2).contiguous()  # [L, B, G, N]
    return dl_t, du_t, B_t, C_t, g


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, block: int = 64):
    """Blocked pure-PyTorch scan: exact fp32 recurrence (no log-space tricks that could overflow).

    Time-major layout and two ``[block, B, D, N]`` buffers reused for every block keep the working set in cache;
    each timestep costs one in-place ``addcmul`` over all channels. Grouped B/C (``[B, G, N, L]``, channels split
    into G equal groups) let independent scans, e.g. the two directions of a bidirectional Mamba, share one loop.
    """
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias)
    ):
        return _selective_scan_autograd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block)
    dtype = u.dtype
    b, d, length = u.shape
    n = A.shape[1]
    A_f = A.float()
    dl_t, du_t, B_t, C_t, g = _time_major(u, delta, B, C, delta_bias, delta_softplus)
    k = min(block, length)
    decay = u.new_empty(k, b, d, n, dtype=torch.float32)  # exp(delta * A)
    state = u.new_empty(k, b, d, n, dtype=torch.float32)  # delta * B * u, overwritten in place by h_t
    y_t = u.new_empty(length, b, d, dtype=torch.float32)  # [L, B, D]
    h = u.new_zeros(b, d, n, dtype=torch.float32)
    for s in range(0, length, k):
        e = min(s + k, length)
        m = e - s
        dA, x = decay[:m], state[:m]
        torch.exp(dl_t[s:e, :, :, None] * A_f, out=dA)
        torch.mul(du_t[s:e], B_t[s:e], out=x.view(m, b, g, d // g, n))
        for x_t, a_t in zip(x.unbind(0), dA.unbind(0)):
            h = x_t.addcmul_(a_t, h)
        h = h.clone()  # the buffer is reused by the next block
        y = torch.einsum("kbgcn,kbgn->kbgc", x.view(m, b, g, d // g, n), C_t[s:e])  # <h_t, C_t>
        y_t[s:e] = y.reshape(m, b, d)
    return _finish(y_t.permute(1, 2, 0), u, D, z, dtype)


def _selective_scan_autograd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block: int):
    """The blocked scan with out-of-place steps, so autograd can differentiate it (training)."""
    dtype = u.dtype
    b, d, length = u.shape
    n = A.shape[1]
    dl_t, du_t, B_t, C_t, g = _time_major(u, delta, B, C, delta_bias, delta_softplus)
    h = u.new_zeros(b, d, n, dtype=torch.float32)
    ys = []
    for s in range(0, length, block):
        e = min(s + block, length)
        m = e - s
        dA = torch.exp(dl_t[s:e, :, :, None] * A.float())  # [m, B, D, N]
        x = (du_t[s:e] * B_t[s:e]).reshape(m, b, d, n)  # [m, B, D, N]
        hs = []
        for t in range(m):
            h = torch.addcmul(x[t], dA[t], h)
            hs.append(h)
        hb = torch.stack(hs).view(m, b, g, d // g, n)
        ys.append(torch.einsum("kbgcn,kbgn->kbgc", hb, C_t[s:e]).reshape(m, b, d))
    return _finish(torch.cat(ys).permute(1, 2, 0), u, D, z, dtype)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, use_cuda_kernels: bool = True
):
    """Selective scan: the mamba_ssm CUDA kernel for CUDA tensors when it imports, else the PyTorch path."""
    if use_cuda_kernels and u.is_cuda:
        fn = _cuda_scan_fn()
        if fn is not None:
            return fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
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
