"""A cheaper output head for CPU decoding: int8 logits for the whole vocabulary, exact fp32 logits for the best.

Batch-1 decoding on CPU is memory-bound, and Gemma's tied output head is the biggest read of every step (262144 x
640 fp32 = 671 MB for Gemma 3 270M, more than the 18 decoder layers together). `RescoredInt8Head` keeps an int8 copy
of the head with one scale per vocabulary row (168 MB, fbgemm's dynamic int8 linear), takes the ``k`` best rows of
those approximate logits and recomputes them exactly from the fp32 weight. The largest logit, and so the greedy
token, is exact unless the int8 error exceeds the gap between the true best and the k-th approximate candidate (not
seen in the quality check of ``bench/bench_inference.py``); the other logits are within the int8 error, which
sampling sees.

`output_head` swaps it in for the duration of a ``generate`` call, so scoring (log-likelihoods) keeps the exact
head. Tied weights stay shared: the fp32 weight is the embedding's own tensor, not a copy.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)

HEADS = ("exact", "int8")


class RescoredInt8Head(nn.Module):
    """Drop-in for a bias-free output ``nn.Linear`` (``weight`` [V, D]): hidden [..., D] -> logits [..., V].

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
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()  # [V], one scale per vocabulary row
        with warnings.catch_warnings():  # torch 2.14 flags quantized tensors as deprecated; fbgemm's prepack
            warnings.simplefilter("ignore", UserWarning)  # still takes nothing else
            q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(q, None)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape
        h = hidden.reshape(-1, shape[-1]).float()  # [T, D]
        logits = torch.ops.quantized.linear_dynamic(h, self._packed, True)  # [T, V]; 7-bit activations: no
        # int16 saturation in fbgemm's AVX2 u8 x s8 pair sums
        top = logits.topk(self.k, dim=-1).indices  # [T, k]
        exact = torch.einsum("td,tkd->tk", h, self.weight[top].float())  # [T, k], fp32
        logits.scatter_(1, top, exact)
        return logits.view(*shape[:-1], -1).to(hidden.dtype)


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
    """Whether the int8 head applies: a CPU model whose output head is a bias-free fp32/bf16 ``nn.Linear``, on a
    torch built with fbgemm. Returns (ok, reason when not)."""
    if problem := fbgemm_cpu_problem(device, "the int8 head"):
        return False, problem
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or head.bias is not None:
        return False, f"output head is {type(head).__name__}, not a bias-free Linear"
    return True, ""


def build_int8_head(model: nn.Module, k: int = 32) -> RescoredInt8Head:
    """The rescored int8 head of ``model``'s output embeddings (about a second for a 262k vocabulary)."""
    return RescoredInt8Head(model.get_output_embeddings().weight, k=k)


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
