"""Gemma text-backbone adapters: one registered spec per family.

The custom model talks to its language model only through these functions, so adding a family means adding a
`BackboneSpec`, never branching on folder names. Families:

- ``gemma3``:  Gemma 3 text (270M, 1B; the text part of 4B+), `Gemma3ForCausalLM`.
- ``gemma3n``: Gemma-3n E2B/E4B text part, `Gemma3nForCausalLM`; per-layer inputs from token ids.
- ``gemma4``:  Gemma 4 text part, `Gemma4ForCausalLM`; per-layer inputs from token ids when the config has them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """How one Gemma family plugs into the custom model."""

    family: str
    text_model_type: str  # model_type of the text-only config
    multimodal_model_type: str  # model_type of the family's multimodal checkpoint config
    chat_template: str  # key into conversation's template registry
    per_layer_inputs: bool  # whether the decoder takes per-layer inputs computed from token ids


BACKBONES: dict[str, BackboneSpec] = {
    spec.family: spec
    for spec in (
        BackboneSpec("gemma3", "gemma3_text", "gemma3", "gemma", per_layer_inputs=False),
        BackboneSpec("gemma3n", "gemma3n_text", "gemma3n", "gemma", per_layer_inputs=True),
        BackboneSpec("gemma4", "gemma4_text", "gemma4", "gemma4", per_layer_inputs=True),
    )
}


def family_for_model_type(model_type: str) -> str:
    """Family key for a text or multimodal config ``model_type`` (e.g. ``gemma3n_text`` -> ``gemma3n``)."""
    for spec in BACKBONES.values():
        if model_type in (spec.text_model_type, spec.multimodal_model_type):
            return spec.family
    known = sorted(t for s in BACKBONES.values() for t in (s.text_model_type, s.multimodal_model_type))
    raise ValueError(f"Unsupported backbone model_type {model_type!r}; supported: {known}")


def backbone_spec(config: PreTrainedConfig) -> BackboneSpec:
    """Spec for a text (or multimodal) config."""
    return BACKBONES[family_for_model_type(config.model_type)]


def text_config_of(config: PreTrainedConfig) -> PreTrainedConfig:
    """The text-decoder config: the config itself, or the ``text_config`` of a multimodal checkpoint."""
    spec = backbone_spec(config)
    if config.model_type == spec.text_model_type:
        return config
    return config.get_text_config(decoder=True)


def build_text_backbone(text_config: PreTrainedConfig, on_meta: bool = False) -> PreTrainedModel:
    """Fresh (randomly initialised) causal LM for a text config, in torch's default dtype like the encoders beside
    it (a published config says ``bfloat16``; built as such, its matmuls are ~50x slower on CPUs without bf16
    units and the model would mix dtypes). ``on_meta``: a placeholder on the meta device, built by the class itself
    (``from_config`` would, under ZeRO-3, partition it and try to initialise its weights)."""
    backbone_spec(text_config)  # validates the family
    if on_meta:
        with torch.device("meta"):
            return AutoModelForCausalLM._model_mapping[type(text_config)](text_config)
    return AutoModelForCausalLM.from_config(text_config, dtype=torch.get_default_dtype())


# Checkpoint layouts of multimodal Gemma checkpoints: where the text decoder's weights live.
_MULTIMODAL_KEY_MAPPING: dict[str, str] = {
    r"^model\.language_model\.": "model.",  # transformers >= 4.52 layout
    r"^language_model\.model\.": "model.",  # older Gemma 3 layout
    r"^language_model\.lm_head\.": "lm_head.",
}


def load_text_backbone(name_or_path: str | Path, dtype: torch.dtype | str | None = None, **kwargs) -> PreTrainedModel:
    """Load a Gemma causal LM from an HF id or local folder.

    Text checkpoints load directly. For a multimodal checkpoint (Gemma 3 4B-IT, Gemma-3n, Gemma 4) the text decoder
    is taken out: the text config is used and the decoder's weights are renamed from the multimodal layout; the
    vision/audio weights are ignored.
    """
    config = AutoConfig.from_pretrained(name_or_path)
    spec = backbone_spec(config)
    if config.model_type == spec.text_model_type:
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kwargs)
    text_config = text_config_of(config)
    logger.info("Taking the %s text decoder out of multimodal checkpoint %s", spec.family, name_or_path)
    model_cls = AutoModelForCausalLM._model_mapping[type(text_config)]
    return model_cls.from_pretrained(
        name_or_path, config=text_config, dtype=dtype, key_mapping=_MULTIMODAL_KEY_MAPPING, **kwargs
    )


def decoder_of(lm: PreTrainedModel) -> nn.Module:
    """The decoder stack (``lm.model``) that maps embeddings to hidden states."""
    return lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model


def per_layer_inputs(lm: PreTrainedModel, input_ids: torch.LongTensor) -> torch.Tensor | None:
    """Per-layer token embeddings for Gemma-3n / Gemma 4 E models, else None.

    ``input_ids`` must already have placeholder positions replaced by the pad id, so the per-layer inputs at those
    positions are the pad token's (the visual features replace only the main embeddings).
    """
    spec = backbone_spec(lm.config)
    if not spec.per_layer_inputs or not getattr(lm.config, "hidden_size_per_layer_input", 0):
        return None
    return decoder_of(lm).get_per_layer_inputs(input_ids)  # [B, L, num_layers, per_layer_dim]


def lm_logits(lm: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Output head with Gemma's final logit soft-capping. hidden [..., D] -> logits [..., V]."""
    logits = lm.get_output_embeddings()(hidden)
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits
