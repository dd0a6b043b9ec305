"""Decoders: how a batch of encoded, left-padded prompts becomes new tokens. `choose_decoder` is the one seam
where the decoding path is picked (`gemma3.serve.inference.load_predictor` calls it); a `Predictor` only calls
``decoder.decode``.

- `GenerateDecoder`: transformers' ``generate`` (any model; sampling and beams), with its dynamic cache or, as
  ``generate_static``, its static cache (``cache_implementation="static"``).
- `CPUFastDecoder`: greedy replies of Gemma 3 decoders on CPU through `gemma3.model.static_decode` (preallocated
  cache, one kernel call per decoder layer and token), the decoder's projections as fp16 copies
  (`gemma3.model.fast_linears`) and the rescored int4 output head (`gemma3.model.fast_head`). A request it cannot
  take (sampling, beams, another decoder, a prompt past the sliding window) goes through ``generate``, unless it
  was asked for explicitly (``static``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import torch

from gemma3.model.fast_head import HEADS, build_head, head_supported, output_head
from gemma3.model.fast_linears import decoder_linears, merged_for_decoding
from gemma3.model.native_kernels import DECODE_KERNEL, load_kernel
from gemma3.model.static_decode import static_decode_supported, static_greedy_generate

logger = logging.getLogger(__name__)

DECODERS = ("auto", "generate", "generate_static", "static")


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_beams: int = 1


class Decoder(Protocol):
    """Prompts -> prompts followed by new tokens ``[B, L + new]`` (stop ids end a row; padding after)."""

    name: str

    def decode(self, model, batch: dict, g: GenerationConfig, stop_ids: list[int], pad_id: int,
               streamer=None) -> torch.Tensor: ...  # fmt: skip


@dataclass
class GenerateDecoder:
    """transformers' ``generate``. ``cache_implementation``: None (dynamic cache) or ``"static"``. ``head``: an
    output head used while generating (None: the model's own)."""

    head: torch.nn.Module | None = None
    cache_implementation: str | None = None
    name: str = "generate"

    def decode(self, model, batch, g, stop_ids, pad_id, streamer=None) -> torch.Tensor:
        kwargs = dict(max_new_tokens=g.max_new_tokens, do_sample=g.do_sample, num_beams=g.num_beams)
        if g.do_sample:
            kwargs.update(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
        if self.cache_implementation:
            kwargs["cache_implementation"] = self.cache_implementation
        with output_head(model, self.head):
            return model.generate(
                **batch, **kwargs, pad_token_id=pad_id, eos_token_id=stop_ids, use_cache=True, streamer=streamer
            )


@dataclass
class CPUFastDecoder:
    """The CPU fast path for greedy Gemma 3 replies (`static_greedy_generate` with ``linears`` and ``head``); what
    it cannot take goes to ``fallback`` (or, ``strict``, is refused with the reason)."""

    head: torch.nn.Module | None = None
    linears: object = None  # fp16 copies of the decoder's projections (`decoder_linears`); None: the model's own
    strict: bool = False
    fallback: GenerateDecoder = field(default_factory=GenerateDecoder)
    name: str = "static"

    def supports(self, model, g: GenerationConfig, prompt_length: int) -> tuple[bool, str]:
        """Whether this request runs on the fast path (and why not)."""
        return static_decode_supported(model, g.do_sample, g.num_beams, prompt_length)

    def decode(self, model, batch, g, stop_ids, pad_id, streamer=None) -> torch.Tensor:
        ok, why = self.supports(model, g, batch["input_ids"].shape[1])
        if not ok:
            if self.strict:
                raise ValueError(f"--decoder static: {why}")
            return GenerateDecoder(self.head, self.fallback.cache_implementation).decode(
                model, batch, g, stop_ids, pad_id, streamer
            )
        min_new = getattr(model.generation_config, "min_new_tokens", None) or 0
        with output_head(model, self.head):
            return static_greedy_generate(
                model, batch, g.max_new_tokens, stop_ids, pad_id, min_new, streamer, self.linears
            )


def generation_head(model, choice: str = "auto") -> torch.nn.Module | None:
    """The output head decoding uses for ``choice`` (None: the model's own, exact head): ``exact``, ``int8``
    (`RescoredInt8Head`, CPU), ``int4`` (`RescoredInt4Head`, CPU, its kernel built for this machine) or ``auto``
    (int4 where it builds, else int8, where supported). Scoring always uses the model's own head."""
    if choice not in ("auto", *HEADS):
        raise ValueError(f"head {choice!r}: choose auto, {', '.join(HEADS)}")
    if choice == "exact":
        return None
    ok, why = head_supported(model, next(model.parameters()).device)
    if not ok:
        if choice != "auto":
            raise ValueError(f"--head {choice}: {why}")
        logger.info("Generating with the exact output head: %s", why)
        return None
    if choice == "auto":
        choice = "int4" if load_kernel(DECODE_KERNEL) is not None else "int8"
    logger.info("Generating with the rescored %s output head (exact top-32 logits); --head exact to turn off", choice)
    return build_head(model, choice)


def prepare_for_decoding(model, device: str | None, decoder: str = "auto", weights: str = "auto"):
    """``model`` as the decoder needs it: on CPU, with a LoRA adapter merged so fp16 copies of the projections
    can be taken (unless ``weights`` is ``fp32`` or the decoder is ``generate``). Returns the model."""
    if weights != "fp32" and not decoder.startswith("generate") and str(device or "cpu").startswith("cpu"):
        return merged_for_decoding(model)
    return model


def choose_decoder(model, decoder: str = "auto", head: str = "auto", weights: str = "auto") -> Decoder:
    """The decoder for a loaded model (on its device): ``auto`` (the CPU fast path for greedy Gemma 3 replies,
    ``generate`` for everything else), ``generate``, ``generate_static`` or ``static`` (the fast path, refusing
    what it cannot take). ``head``: see `generation_head`; ``weights``: the fast path's projections, ``fp32``,
    ``fp16`` or ``auto`` (fp16 where supported)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r}: choose {', '.join(DECODERS)}")
    head_module = generation_head(model, head)
    if decoder == "generate":
        return GenerateDecoder(head_module)
    if decoder == "generate_static":
        return GenerateDecoder(head_module, cache_implementation="static")
    return CPUFastDecoder(head_module, decoder_linears(model, weights), strict=decoder == "static")
