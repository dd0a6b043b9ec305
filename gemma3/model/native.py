"""The stock Gemma 3 / 3n / 4 vision-language models on frame sequences, behind the project's interfaces.

- `load_native_model`: a released checkpoint (HF id or folder), a full fine-tuned output, or a base + LoRA adapter
  output, with the model's own processor and chat template.
- The data side (`NativeVLMPlugin`, frames as images, labels from the processor's ids) is
  `gemma3.data.plugins`.

Which parameters form each component, the LoRA targets and the chat template are the family record's
(`gemma3.model.families.NativeFamily`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from gemma3.model.builder import TRAINABLES_FILE, load_trainables
from gemma3.model.checkpoint_files import load_checked

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- loading


def _load_base(model_id: str, dtype: torch.dtype, quantization_config=None):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_id, dtype=dtype, quantization_config=quantization_config)


def checkpoint_sources(model_id: str | Path) -> tuple[str, str, bool]:
    """(base model, processor source, is an adapter output) of a native checkpoint: an adapter output's base is
    the one PEFT recorded; the processor comes from the folder when it holds one, else from the base."""
    path = Path(model_id)
    adapter_cfg = path / "adapter_config.json"
    if not adapter_cfg.exists():
        return str(model_id), str(model_id), False
    base_id = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
    if not base_id:
        raise ValueError(f"{adapter_cfg}: no base_model_name_or_path; cannot find the base model")
    base = Path(base_id).expanduser()
    if (base.is_absolute() or base_id.startswith((".", "~"))) and not (base / "config.json").exists():
        raise FileNotFoundError(f"{adapter_cfg}: the adapter's base model {base_id} is not there (moved or deleted?); "
                                "set base_model_name_or_path to where the base model is")  # fmt: skip
    return base_id, str(path) if (path / "processor_config.json").exists() else base_id, True


def load_native_model(model_id: str | Path, dtype: torch.dtype = torch.float32, quantization_config=None):
    """Load a native Gemma VLM and its processor: an HF id or folder, or a training output.

    A training output with ``adapter_config.json`` is a LoRA/DoRA adapter: its base model (recorded by PEFT) is
    loaded, the adapter applied, and any other trained tensors (``non_lora_trainables.safetensors``) restored.
    The processor is taken from the output folder when it has one, else from the base. The caller checks that
    the base is a native VLM (`gemma3.model.families.NativeFamily.load`).
    """
    from transformers import AutoProcessor

    path = Path(model_id)
    base_id, processor_src, is_adapter = checkpoint_sources(model_id)
    model = _load_base(base_id, dtype, quantization_config)
    if is_adapter:
        from peft import PeftModel

        base = model
        model = load_checked(path, lambda: PeftModel.from_pretrained(base, str(path)), dict)
        if (path / TRAINABLES_FILE).exists():
            loaded = load_trainables(model, path / TRAINABLES_FILE)
            logger.info("Loaded %d trained non-LoRA tensors from %s", len(loaded), path / TRAINABLES_FILE)
    processor = AutoProcessor.from_pretrained(processor_src)
    if not getattr(processor, "chat_template", None):
        raise ValueError(f"{model_id}: the processor has no chat template (the native models use their own)")
    return model, processor
