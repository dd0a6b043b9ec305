"""The published ``config.json`` of every backbone and encoder the presets and recipes name, shipped with the code
(``gemma3/configs/reference/<org>__<name>/config.json``; provenance in the README there), so sizes are known with no
hub: full-size models build on the ``meta`` device for parameter counts, memory planning and real-width tests.

Note: transformers' ``Gemma3nTextConfig()`` defaults describe an E4B-like model; these files are the real ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "configs" / "reference"


def reference_models() -> list[str]:
    """HF ids with a shipped config."""
    return sorted(p.name.replace("__", "/") for p in REFERENCE_DIR.iterdir() if (p / "config.json").is_file())


def reference_path(model_id: str) -> Path:
    """The folder holding ``model_id``'s published config (a clear error for others)."""
    path = REFERENCE_DIR / model_id.replace("/", "__")
    if not (path / "config.json").is_file():
        raise KeyError(f"no reference config for {model_id!r}; shipped: {reference_models()}")
    return path


def reference_config(model_id: str):
    """The published config of ``model_id`` as a transformers config object."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(reference_path(model_id)))


def meta_model(config, causal_lm: bool = False) -> torch.nn.Module:
    """A full-size model of ``config`` on the ``meta`` device (no memory, no weights): a vision-language model, or
    its text decoder alone with ``causal_lm``."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    with torch.device("meta"):
        if causal_lm:
            return AutoModelForCausalLM.from_config(config.get_text_config(decoder=True))
        return AutoModelForImageTextToText.from_config(config)


def parameter_counts(model: torch.nn.Module, component_fn) -> dict[str, int]:
    """Parameters per component (``component_fn``: name -> component, e.g. a family record's), and ``total``."""
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        c = component_fn(name)
        counts[c] = counts.get(c, 0) + p.numel()
    counts["total"] = sum(counts.values())
    return counts
