"""Cheaper output heads for CPU decoding: approximate logits for the whole vocabulary, exact fp32 logits for the best.

Batch-1 decoding on CPU is memory-bound, and Gemma's tied output head is the biggest read of every step (262144 x
640 fp32 = 671 MB for Gemma 3 270M, more than the 18 decoder layers together). A rescored head computes cheap
approximate logits, takes the ``k`` best rows and recomputes them exactly from the fp32 weight:

- `RescoredInt8Head`: an int8 copy, one scale per vocabulary row (168 MB, fbgemm's dynamic int8 linear);
- `RescoredInt4Head`: int4 codes in groups of 32 with fp16 scales against int8 activations in groups of 32 (94 MB,
  ``csrc/decode_cpu.cpp``, blocks of 8 vocabulary rows), 4.6 instead of 10.6 ms a token on 2 cores of an AVX2-only
  AMD EPYC; batches of more than two rows take its int8 copy, where arithmetic rather than bytes counts.

The largest logit, and so the greedy token, is exact unless the approximation's error exceeds the gap between the
true best and the k-th candidate: with k = 32, over Gemma 3 270M's teacher-forced positions of the decoding bench's
20 prompts, the true best was always among the int4 head's candidates (with per-row int4 scales and one activation
scale a token, 98.9%). The other logits are within the approximation's error, which sampling sees.

`output_head` swaps a head in for the duration of a ``generate`` call, so scoring (log-likelihoods) keeps the exact
head. Tied weights stay shared: the fp32 weight is the embedding's own tensor, not a copy.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gemma3.model.native_kernels import DECODE_KERNEL, load_kernel

logger = logging.getLogger(__name__)

HEADS = ("exact", "int8", "int4")
INT4_GROUP, INT4_BLOCK, INT4_BLOCK_ROWS = 32, 64, 8  # weights per fp16 scale; per 32 bytes of codes; rows per block
INT4_ROWS = 2  # hidden rows up to which the int4 kernel runs (more: the int8 copy)


class _RescoredHead(nn.Module):
    """Drop-in for a bias-free output ``nn.Linear`` (``weight`` [V, D]): hidden [..., D] -> logits [..., V], the ``k``
    best of a cheap approximation (``approximate``) recomputed exactly from the fp32 weight.

    Args:
        weight: the fp32 output weight [V, D] (shared, e.g. the tied input embedding).
        k: candidates per row recomputed exactly.
    """

    def __init__(self, weight: torch.Tensor, k: int = 32) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"output weight must be [vocab, hidden], got {tuple(weight.shape)}")
        self.weight = weight  # shared, not registered as a new parameter copy
        self.k = min(k, weight.shape[0])

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def approximate(self, h: torch.Tensor) -> torch.Tensor:
        """Approximate logits: h [T, D] fp32 -> [T, V] fp32."""
        raise NotImplementedError

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape
        h = hidden.reshape(-1, shape[-1]).float().contiguous()  # [T, D]
        logits = self.approximate(h)  # [T, V]
        top = logits.topk(self.k, dim=-1).indices  # [T, k]
        exact = torch.einsum("td,tkd->tk", h, self.weight[top].float())  # [T, k], fp32
        logits.scatter_(1, top, exact)
        return logits.view(*shape[:-1], -1).to(hidden.dtype)


class RescoredInt8Head(_RescoredHead):
    """The rescored head on an int8 copy (one scale per vocabulary row, fbgemm's dynamic int8 linear: 7-bit per-row
    activations)."""

    def __init__(self, weight: torch.Tensor, k: int = 32) -> None:
        super().__init__(weight, k)
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()  # [V], one scale per vocabulary row
        with warnings.catch_warnings():  # torch 2.14 flags quantized tensors as deprecated; fbgemm's prepack
            warnings.simplefilter("ignore", UserWarning)  # still takes nothing else
            q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(q, None)

    def approximate(self, h: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(h, self._packed, True)  # [T, V]; 7-bit activations: no int16
        # saturation in fbgemm's AVX2 u8 x s8 pair sums


def pack_int4(weight: torch.Tensor, rows: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` [V, D] as the int4 kernel reads it, in blocks of 8 vocabulary rows: codes [V' / 8, D' / 64, 8, 32]
    uint8 and fp16 scales [V' / 8, D' / 32, 8], D' = D rounded up to a multiple of 64 (zero columns), V' = V to a
    multiple of 8 (zero rows). Per group of 32 along D: s = max|w| / 7, q = round(w / s) in [-8, 7], code q + 8; per 64
    weights of a row, byte j holds weight j (low nibble) and weight j + 32 (high nibble)."""
    v, d = weight.shape
    width, blocks = -(-d // INT4_BLOCK) * INT4_BLOCK, -(-v // INT4_BLOCK_ROWS)
    codes = torch.zeros(blocks * INT4_BLOCK_ROWS, width // 2, dtype=torch.uint8)  # [V', D' / 2] row by row first
    scales = torch.zeros(blocks * INT4_BLOCK_ROWS, width // INT4_GROUP, dtype=torch.float16)
    for start in range(0, v, rows):  # in slices: a 262k-row head would otherwise need several fp32 copies at once
        w = F.pad(weight[start : start + rows].detach().float(), (0, width - d))  # [r, D']
        groups = w.view(w.shape[0], -1, INT4_GROUP)  # [r, G, 32]
        s = (groups.abs().amax(-1) / 7.0).half()  # [r, G]
        q = (groups / s.float().unsqueeze(-1)).nan_to_num(0.0, 0.0, 0.0)  # groups of zeros (or below fp16's range): 0
        q = q.round().clamp(-8, 7).to(torch.int16) + 8  # [r, G, 32], codes 0..15
        q = q.view(w.shape[0], -1, 2, INT4_GROUP)  # [r, D' / 64, 2, 32]: low / high nibble halves of each block
        codes[start : start + w.shape[0]] = (q[:, :, 0] | (q[:, :, 1] << 4)).to(torch.uint8).view(w.shape[0], -1)
        scales[start : start + w.shape[0]] = s
    codes = codes.view(blocks, INT4_BLOCK_ROWS, -1, 32).transpose(1, 2).contiguous()  # [V' / 8, D' / 64, 8, 32]
    scales = scales.view(blocks, INT4_BLOCK_ROWS, -1).transpose(1, 2).contiguous()  # [V' / 8, G, 8]
    return codes, scales


def int4_entry(library: ctypes.CDLL) -> Callable:
    """``gemma3_int4_logits`` of the decoding kernels' library, typed for ctypes: (codes, scales, hidden, logits, M,
    V, D, threads)."""
    fn = library.gemma3_int4_logits
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 4
    return fn


class RescoredInt4Head(RescoredInt8Head):
    """The rescored head on int4 codes (groups of 32 with fp16 scales, `pack_int4`) against int8 activations
    (groups of 32), computed by ``csrc/decode_cpu.cpp``: 94 MB read per token for Gemma 3 270M's head, against 168
    MB as int8 and 671 MB in fp32. Batches of more than ``INT4_ROWS`` rows take the int8 copy it keeps as well:
    there the int8 GEMM's arithmetic, not the bytes read, is what counts (8 rows: 13.0 ms against 18.5 ms)."""

    def __init__(self, weight: torch.Tensor, k: int = 32) -> None:
        super().__init__(weight, k)
        library = load_kernel(DECODE_KERNEL)
        if library is None:
            raise RuntimeError(f"{DECODE_KERNEL}.cpp could not be built on this machine (see the warning above)")
        self._logits = int4_entry(library)
        self.codes, self.scales = pack_int4(weight)
        self.width = self.codes.shape[1] * INT4_BLOCK

    def approximate(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[0] > INT4_ROWS:
            return super().approximate(h)
        if h.shape[1] != self.width:
            h = F.pad(h, (0, self.width - h.shape[1]))  # [T, D']
        out = torch.empty(h.shape[0], self.out_features)  # [T, V]
        self._logits(self.codes.data_ptr(), self.scales.data_ptr(), h.data_ptr(), out.data_ptr(), h.shape[0],
                     self.out_features, self.width, torch.get_num_threads())  # fmt: skip
        return out


def _owner(model: nn.Module, module: nn.Module) -> tuple[nn.Module, str]:
    """The parent module and attribute name under which ``module`` sits in ``model``."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is module:
                return parent, name
    raise LookupError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def fbgemm_cpu_problem(device: torch.device | str, what: str) -> str:
    """Why ``what`` (a path on fbgemm's CPU kernels) cannot run for a model on ``device``; "" when it can."""
    if torch.device(device).type != "cpu":
        return f"{what} is a CPU path (model on {device})"
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return "this torch build has no fbgemm engine"
    return ""


def head_supported(model: nn.Module, device: torch.device | str) -> tuple[bool, str]:
    """Whether the rescored heads apply: a CPU model whose output head is a bias-free fp32/bf16 ``nn.Linear``, on a
    torch built with fbgemm. Returns (ok, reason when not)."""
    if problem := fbgemm_cpu_problem(device, "the int8 head"):
        return False, problem
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or head.bias is not None:
        return False, f"output head is {type(head).__name__}, not a bias-free Linear"
    return True, ""


def build_head(model: nn.Module, kind: str = "int8", k: int = 32) -> RescoredInt8Head:
    """The rescored ``int8`` or ``int4`` head of ``model``'s output embeddings (a second or two for a 262k
    vocabulary)."""
    cls = {"int8": RescoredInt8Head, "int4": RescoredInt4Head}[kind]
    return cls(model.get_output_embeddings().weight, k=k)


def build_int8_head(model: nn.Module, k: int = 32) -> RescoredInt8Head:
    """The rescored int8 head of ``model``'s output embeddings (about a second for a 262k vocabulary)."""
    return build_head(model, "int8", k)


@contextlib.contextmanager
def output_head(model: nn.Module, head: nn.Module | None) -> Iterator[None]:
    """Use ``head`` as ``model``'s output head inside the block (nothing changes when ``head`` is None)."""
    if head is None:
        yield
        return
    original = model.get_output_embeddings()
    parent, name = _owner(model, original)
    setattr(parent, name, head)
    try:
        yield
    finally:
        setattr(parent, name, original)
