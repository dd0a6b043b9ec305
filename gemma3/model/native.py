"""The stock Gemma 3 / 3n / 4 vision-language models on frame sequences, behind the project's interfaces.

- `load_native_model`: a released checkpoint (HF id or folder), a full fine-tuned output, or a base + LoRA adapter
  output, with the model's own processor and chat template.
- `NativeVLMPlugin`: the data plugin (the `dataset.MediaPlugin` protocol) that turns a sample into the processor's
  tensors. A video becomes N frames given as images before the text of the first user turn (images first); the
  processor expands each image into its soft tokens; labels come from the processor's token ids (only assistant
  replies and their end-of-turn are supervised, however many image tokens were inserted).

Which parameters form each component, the LoRA targets and the chat template are the family record's
(`gemma3.families.NativeFamily`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from constants import IGNORE_INDEX, MEDIA_TAGS

logger = logging.getLogger(__name__)

# Per-token tensors the processors return besides input_ids (padded like the ids); everything else is per image.
SEQUENCE_KEYS = ("token_type_ids", "mm_token_type_ids")
_TAG_RE = re.compile("(" + "|".join(re.escape(t) for t in MEDIA_TAGS) + r")\n?")


# ---------------------------------------------------------------- loading


def _load_base(model_id: str, dtype: torch.dtype, quantization_config=None):
    from transformers import AutoModelForImageTextToText

    from gemma3.families import family_for_checkpoint

    family_for_checkpoint(model_id, kind="native")  # a clear error for anything but a native Gemma VLM
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
    The processor is taken from the output folder when it has one, else from the base.
    """
    from transformers import AutoProcessor

    path = Path(model_id)
    base_id, processor_src, is_adapter = checkpoint_sources(model_id)
    model = _load_base(base_id, dtype, quantization_config)
    if is_adapter:
        from peft import PeftModel

        from gemma3.model.builder import TRAINABLES_FILE, load_trainables

        model = PeftModel.from_pretrained(model, str(path))
        if (path / TRAINABLES_FILE).exists():
            loaded = load_trainables(model, path / TRAINABLES_FILE)
            logger.info("Loaded %d trained non-LoRA tensors from %s", len(loaded), path / TRAINABLES_FILE)
    processor = AutoProcessor.from_pretrained(processor_src)
    if not getattr(processor, "chat_template", None):
        raise ValueError(f"{model_id}: the processor has no chat template (the native models use their own)")
    return model, processor


# ---------------------------------------------------------------- data


def tokens_per_image(processor) -> int:
    """Tokens one image costs in the prompt: its soft tokens plus the begin / end-of-image markers around them.

    Gemma 3 / 3n insert a fixed sequence (256 soft tokens); Gemma 4's count depends on the image's aspect ratio and
    is at most the image processor's ``max_soft_tokens``, which is what this returns for it.
    """
    seq = getattr(processor, "full_image_sequence", None)
    if seq:
        return len(processor.tokenizer(seq, add_special_tokens=False)["input_ids"])
    soft = getattr(processor.image_processor, "max_soft_tokens", None) or processor.image_seq_length
    return int(soft) + 2


def check_frame_budget(num_frames: int, per_frame: int, max_length: int, text_reserve: int = 32) -> None:
    """Refuse a max length that would cut image tokens, saying the length needed."""
    needed = num_frames * per_frame
    if needed + text_reserve > max_length:
        raise ValueError(
            f"max_length={max_length} would cut image tokens: {num_frames} frames x {per_frame} tokens per frame = "
            f"{needed} tokens before any text. Use --max_length >= {needed + text_reserve} or fewer --num_frames."
        )


class NativeVLMPlugin:
    """Samples -> processor tensors for a native Gemma VLM (the `dataset.MediaPlugin` protocol).

    Args:
        processor: the model's processor (image processor + tokenizer + chat template).
        family: the model's `gemma3.families.NativeFamily` record (or its name).
        num_frames: frames sampled from each video (each becomes one image).
        max_length: longest sequence in tokens; checked against the frame budget here and per sample.
        sampling / fps: frame sampling (``uniform`` or ``fps``), as in `mm_utils.read_video`.
    """

    def __init__(
        self,
        processor,
        family,
        num_frames: int = 8,
        max_length: int | None = None,
        sampling: str = "uniform",
        fps: float = 1.0,
    ) -> None:
        self.processor = processor
        from gemma3.families import get_family

        self.family = get_family(family) if isinstance(family, str) else family
        self.num_frames = num_frames
        self.max_length = max_length
        self.sampling = sampling
        self.fps = fps
        tok = processor.tokenizer
        template = self.family.template()
        self.header_ids = tok(template.generation_prompt, add_special_tokens=False)["input_ids"]
        self.end_id = tok.convert_tokens_to_ids(template.turn_end)
        if self.end_id is None or self.end_id == tok.unk_token_id:
            raise ValueError(f"{self.family.name}: the tokenizer has no {template.turn_end!r} token")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        # Gemma 3's processor calls the begin-of-image marker its image token; the soft token is the tokenizer's.
        self.image_token_id = getattr(tok, "image_token_id", None) or getattr(processor, "image_token_id", None)
        self.per_frame = tokens_per_image(processor)
        if max_length is not None:
            check_frame_budget(num_frames, self.per_frame, max_length)

    # ---- media and messages
    def load_media(self, media) -> list:
        """PIL images of one media item: ``num_frames`` frames of a video, or the one image."""
        from PIL import Image

        from mm_utils import read_clip, read_image

        if media.kind == "video":
            frames = read_clip(media.path, self.num_frames, self.sampling, self.fps).frames
        else:
            frames = read_image(media.path)[None]
        return [Image.fromarray(np.ascontiguousarray(f)) for f in frames]

    @staticmethod
    def hf_messages(messages: Sequence[dict], num_images: int) -> list[dict]:
        """The conversation in the processor's format: media tags removed, the images first in the first user
        turn, then its text."""
        out, placed = [], False
        for m in messages:
            text = _TAG_RE.sub("", m["content"]).strip() if isinstance(m["content"], str) else m["content"]
            if m["role"] == "user" and not placed:
                content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
                out.append({"role": "user", "content": content})
                placed = True
            else:
                out.append({"role": m["role"], "content": text})
        return out

    def assistant_labels(self, ids: list[int]) -> list[int]:
        """Labels from token ids: each assistant reply (after the ``<start_of_turn>model\\n`` header) and its
        end-of-turn token are kept, everything else (prompts, image tokens, padding) is IGNORE_INDEX."""
        labels = [IGNORE_INDEX] * len(ids)
        h, n = self.header_ids, len(self.header_ids)
        i = 0
        while i <= len(ids) - n:
            if ids[i : i + n] != h:
                i += 1
                continue
            j = i + n
            while j < len(ids) and ids[j] != self.end_id:
                j += 1
            stop = min(j + 1, len(ids))  # include the end-of-turn token when present
            labels[i + n : stop] = ids[i + n : stop]
            i = stop
        if self.image_token_id is not None:
            labels = [IGNORE_INDEX if t == self.image_token_id else t for t in labels]
        return labels

    # ---- protocol
    def encode(self, sample, tokenizer=None, template=None, add_generation_prompt: bool = False) -> dict:
        """Tensors of one sample: ``input_ids`` / ``labels`` [L], per-token type ids [L], ``pixel_values``
        [n_images, ...] (and Gemma 4's ``image_position_ids``). ``tokenizer`` / ``template`` are unused (the
        processor and its chat template are the model's own)."""
        from dataset import check_tags

        check_tags(sample)
        images = [img for m in sample.media for img in self.load_media(m)]
        messages = self.hf_messages(sample.messages, len(images))
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        enc = self.processor(
            text=[text], images=[images] if images else None, return_tensors="pt", add_special_tokens=False
        )
        ids = enc["input_ids"][0]
        where = f"{sample.source or 'sample'} (id {sample.id})"
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(
                f"{where}: {len(ids)} tokens ({len(images)} images x up to {self.per_frame} tokens + text) exceed "
                f"max_length={self.max_length}; raise --max_length to at least {len(ids)} or use fewer frames"
            )
        labels = self.assistant_labels(ids.tolist())
        if not add_generation_prompt and all(t == IGNORE_INDEX for t in labels):
            raise ValueError(f"{where}: conversation supervises no token (no assistant reply)")
        out = {"input_ids": ids, "labels": torch.tensor(labels)}
        for key, value in enc.items():
            if key in ("input_ids", "attention_mask") or not torch.is_tensor(value):
                continue
            out[key] = value[0] if key in SEQUENCE_KEYS else value
        return out

    def collate(self, features: Sequence[dict], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad ids / labels / type ids to one length (left for generation); concatenate image tensors."""
        from dataset import collate_text, pad_sequences

        batch = collate_text(features, self.pad_id, padding_side)
        keys = {k for f in features for k in f} - set(batch)
        for key in sorted(keys):
            if key in SEQUENCE_KEYS:
                batch[key] = pad_sequences([f[key] for f in features], 0, padding_side)
            else:
                batch[key] = torch.cat([f[key] for f in features if key in f])
        return batch
