"""fp16 copies of a Gemma 3 decoder's linear layers for CPU decoding (fp16 weights, fp32 activations and accumulation).

Batch-1 decoding on CPU is memory-bound: each new token streams every decoder weight once (400 MB of fp32 for Gemma
3 270M). fp16 copies halve the bytes; only the weights are rounded (10-bit mantissa, a relative error near 2e-4 per
product sum), unlike bf16 layers, which round the activations and the residual stream too.

`Fp16Linear` keeps the weight in the layout of the decoding kernels (``csrc/decode_cpu.cpp``, `pack_rows`: blocks
of 4 rows interleaved by 8 columns, so a block streams as one sequential read: 28 GB/s on 2 cores of the AVX2 machine
where plain rows read at 11) and runs their fp16 GEMV; `gemma3.model.static_decode` hands the seven copies of a layer
to the decoder layer kernel, one call per layer and token. Where the kernels cannot be built (no compiler), or for a
layer with a bias, fbgemm's fp16 GEMM (``torch.ops.quantized.linear_dynamic_fp16``) runs instead.

`decoder_linears` copies the plain ``nn.Linear`` modules of the decoder layers (LoRA-wrapped ones are left to their
own forward, so an unmerged adapter still applies; `merged_for_decoding` merges a trained adapter first, as
`gemma3.serve.inference.load_predictor` does); the static decoder uses the copies for the decoding steps (the prompt
goes through the model's own fp32 forward). The copies are taken once: after the model's weights change, pack again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gemma3.model.fast_head import _owner, fbgemm_cpu_problem
from gemma3.model.native_kernels import DECODE_KERNEL, load_kernel
from gemma3.model.static_decode import _gemma3_text_model

logger = logging.getLogger(__name__)

WEIGHTS = ("fp32", "fp16")
ROW_BLOCK = 4  # rows interleaved per block of the packed fp16 weights (csrc/decode_cpu.cpp kRowBlock)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Fp16Linear:
    """An fp16 copy of an ``nn.Linear``: x [..., in] (fp32) -> [..., out] (fp32), fp32 accumulation.

    Where the decoding kernels build (``csrc/decode_cpu.cpp``) and the layer has no bias, ``half_weight`` holds the
    weight as that file's fp16 GEMV and decoder layer step read it (`pack_rows`); otherwise a call runs fbgemm's
    fp16 GEMM on a packed copy and ``half_weight`` is None."""

    def __init__(self, linear: nn.Linear) -> None:
        self.bias = None if linear.bias is None else linear.bias.detach().float()
        self.out_features, self.in_features = linear.out_features, linear.in_features
        library = load_kernel(DECODE_KERNEL) if self.bias is None and self.in_features % 8 == 0 else None
        self._gemv = gemv_entry(library) if library is not None else None
        self.half_weight = pack_rows(linear.weight) if self._gemv is not None else None
        if self._gemv is None:
            self._packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float(), self.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # [T, in]
        if self._gemv is None:
            y = torch.ops.quantized.linear_dynamic_fp16(x2, self._packed)  # [T, out]
        else:
            x2 = x2.float().contiguous()
            y = torch.empty(x2.shape[0], self.out_features)  # [T, out]
            self._gemv(x2.data_ptr(), self.half_weight.data_ptr(), y.data_ptr(), x2.shape[0], self.out_features,
                       self.in_features, torch.get_num_threads())  # fmt: skip
        return y.view(*shape[:-1], self.out_features)


def pack_rows(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [N, K] (K a multiple of 8) as fp16 in blocks of 4 rows interleaved by 8 columns, [N' / 4, K / 8,
    4, 8] with N' = N rounded up to a multiple of 4 (zero rows): each block is one sequential read for the kernel."""
    n, k = weight.shape
    w = F.pad(weight.detach().to(torch.float16), (0, 0, 0, -n % ROW_BLOCK))  # [N', K]
    return w.view(-1, ROW_BLOCK, k // 8, 8).transpose(1, 2).contiguous()


def gemv_entry(library) -> Callable:
    """``gemma3_gemv_f16`` of the decoding kernels' library, typed for ctypes."""
    fn = library.gemma3_gemv_f16
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4
    return fn


def fp16_linears_supported(model: nn.Module) -> tuple[bool, str]:
    """Whether fp16 linears apply: an fp32 model on CPU, a torch built with fbgemm, and a decoder the static decoder
    runs (Gemma 3). Returns (ok, reason when not)."""

    if problem := fbgemm_cpu_problem(next(model.parameters()).device, "fp16 linears"):
        return False, problem
    decoder = _gemma3_text_model(model)
    if decoder is None:
        return False, "the model's decoder is not a Gemma 3 text decoder"
    if decoder.embed_tokens.weight.dtype != torch.float32:
        return False, f"the decoder is {decoder.embed_tokens.weight.dtype}, not fp32"
    return True, ""


def pack_fp16_linears(model: nn.Module) -> dict[nn.Module, Fp16Linear]:
    """fp16 copies of the attention and MLP projections of ``model``'s decoder layers that are plain ``nn.Linear``
    modules (not LoRA wrappers), keyed by module."""

    decoder = _gemma3_text_model(model)
    if decoder is None:
        raise ValueError(f"{type(model).__name__}: fp16 linears need a Gemma 3 text decoder")
    projections = [
        getattr(part, name)
        for layer in decoder.layers
        for part, names in ((layer.self_attn, PROJECTIONS[:4]), (layer.mlp, PROJECTIONS[4:]))
        for name in names
    ]
    packed = {m: Fp16Linear(m) for m in projections if type(m) is nn.Linear}
    logger.info("decoding with fp16 copies of %d decoder linears (fbgemm); --weights fp32 to turn off", len(packed))
    return packed


def merged_for_decoding(model: nn.Module) -> nn.Module:
    """``model`` with an unmerged LoRA / DoRA adapter merged into its weights (PEFT's ``merge_and_unload``), so the
    decoder's projections are plain linears again and can be packed; other models are returned as they are."""
    from peft import PeftModel

    if not isinstance(model, PeftModel) or not hasattr(model, "merge_and_unload"):
        return model
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return model  # quantized bases (QLoRA) keep the adapter unmerged
    logger.info("merging the LoRA adapter into the weights for decoding")
    return model.merge_and_unload()


def decoder_linears(model: nn.Module, choice: str = "auto") -> Mapping[nn.Module, Fp16Linear] | None:
    """The linears the static decoder uses for ``choice``: ``fp32`` (None: the model's own), ``fp16`` (packed
    copies; an error where unsupported) or ``auto`` (fp16 where supported)."""
    if choice not in ("auto", *WEIGHTS):
        raise ValueError(f"weights {choice!r}: choose auto, {', '.join(WEIGHTS)}")
    if choice == "fp32":
        return None
    ok, why = fp16_linears_supported(model)
    if not ok:
        if choice == "fp16":
            raise ValueError(f"--weights fp16: {why}")
        logger.info("Decoding with the model's own linears: %s", why)
        return None
    return pack_fp16_linears(model)


class _AsModule(nn.Module):
    def __init__(self, fn: Fp16Linear) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@contextlib.contextmanager
def linears_in_forward(model: nn.Module, linears: Mapping[nn.Module, Fp16Linear] | None) -> Iterator[None]:
    """Inside the block, ``model``'s own forward runs ``linears`` in place of their modules (the prompt and teacher-
    forced scoring then see the same weights as the static decoder's steps); nothing changes when None."""

    if not linears:
        yield
        return
    swapped = [(*_owner(model, m), m) for m in linears]
    try:
        for parent, name, module in swapped:
            setattr(parent, name, _AsModule(linears[module]))
        yield
    finally:
        for parent, name, module in swapped:
            setattr(parent, name, module)
