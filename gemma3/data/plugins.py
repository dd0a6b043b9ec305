"""Media plugins: one per model kind, turning a `Sample` into model tensors and a list of those into a batch.

- `CustomModelPlugin` (the custom model): frames read and normalised (CLIP statistics unless given), media tags
  expanded to the config's placeholder ids by `gemma3.data.template.render_conversation`.
- `NativeVLMPlugin` (the stock Gemma 3 / 3n / 4 VLMs): a video becomes N frames given as images before the text of
  the first user turn; the processor expands each image into its soft tokens; labels come from the processor's
  token ids (only assistant replies and their end-of-turn are supervised, however many image tokens were inserted).

Both follow the `MediaPlugin` protocol; the model family record (`gemma3.model.families`) says which one a model
uses. Kept together, as LLaMA-Factory keeps its ``mm_plugin.py``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from gemma3.constants import CLIP_MEAN, CLIP_STD, IGNORE_INDEX, MEDIA_TAGS
from gemma3.data.media import MediaExpander, preprocess_frames, read_clip, read_image
from gemma3.data.records import check_tags
from gemma3.data.sample import Media, Sample
from gemma3.data.template import ChatTemplate, render_conversation

# Per-token tensors the processors return besides input_ids (padded like the ids); everything else is per image.
SEQUENCE_KEYS = ("token_type_ids", "mm_token_type_ids")
_TAG_RE = re.compile("(" + "|".join(re.escape(t) for t in MEDIA_TAGS) + r")\n?")


class MediaPlugin(Protocol):
    """Turns a sample into model tensors, and a list of those into a batch."""

    def load_media(self, media: Media):
        """One media item read and preprocessed, as ``encode`` takes it in ``media``."""
        ...

    def encode(
        self,
        sample: Sample,
        tokenizer,
        template: ChatTemplate | None,
        add_generation_prompt: bool = False,
        media: list | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tensors of one sample; ``media``: its media already read by ``load_media`` (one per ``sample.media``),
        so variants of one prompt (candidate replies being ranked) read the video once."""
        ...

    def collate(
        self, features: Sequence[dict[str, torch.Tensor]], padding_side: str = "right"
    ) -> dict[str, torch.Tensor]: ...


def pad_sequences(seqs: Sequence[torch.Tensor], value: int, side: str) -> torch.Tensor:
    """Pad 1-D tensors to one length on the left or right. -> [B, L]"""
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, got {side!r}")
    length = max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        if side == "right":
            out[i, : len(s)] = s
        else:
            out[i, length - len(s) :] = s
    return out


def append_prompt_text(features: dict[str, torch.Tensor], ids: Sequence[int]) -> dict[str, torch.Tensor]:
    """Encoded generation-prompt ``features`` with ``ids`` appended (a reply's opening the model continues, as
    MVBench's ``Best option:(``): unsupervised, and type id 0 (text) in the per-token tensors."""
    extra = torch.tensor(list(ids), dtype=features["input_ids"].dtype)  # [P]
    out = dict(features)
    out["input_ids"] = torch.cat([features["input_ids"], extra])
    out["labels"] = torch.cat([features["labels"], torch.full_like(extra, IGNORE_INDEX)])
    for key in SEQUENCE_KEYS:
        if key in features:
            out[key] = torch.cat([features[key], torch.zeros(len(extra), dtype=features[key].dtype)])
    return out


def collate_text(
    features: Sequence[dict[str, torch.Tensor]], pad_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` / ``labels`` [B, L] of encoded samples, padded on one side."""
    ids = [f["input_ids"] for f in features]
    return {
        "input_ids": pad_sequences(ids, pad_id, padding_side),
        "attention_mask": pad_sequences([torch.ones_like(i) for i in ids], 0, padding_side),
        "labels": pad_sequences([f["labels"] for f in features], IGNORE_INDEX, padding_side),
    }


class CustomModelPlugin:
    """Samples -> tensors for the custom model: frames read, normalised (CLIP statistics unless given), tags
    expanded to the config's placeholder ids."""

    def __init__(
        self,
        config,
        num_frames: int | None = None,
        sampling: str = "uniform",
        fps: float = 1.0,
        image_size: int | None = None,
        max_length: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.config = config
        self.num_frames = num_frames or config.num_frames
        if self.num_frames != config.num_frames:
            raise ValueError(f"num_frames={self.num_frames} differs from the model's num_frames={config.num_frames}")
        self.sampling = sampling
        self.fps = fps
        self.image_size = image_size or config.vision_config.image_size
        self.mean = tuple(mean) if mean is not None else CLIP_MEAN
        self.std = tuple(std) if std is not None else CLIP_STD
        self.max_length = max_length
        self.expander = MediaExpander(config)
        pad = getattr(config.text_config, "pad_token_id", None)
        self.pad_id = 0 if pad is None else int(pad)

    def load_media(self, media: Media) -> torch.Tensor:
        """A video -> [T, 3, S, S]; an image -> [3, S, S]."""
        if media.kind == "video":
            frames = read_clip(media.path, self.num_frames, self.sampling, self.fps).frames
            return preprocess_frames(frames, self.image_size, self.mean, self.std)
        return preprocess_frames(read_image(media.path)[None], self.image_size, self.mean, self.std)[0]

    def encode(
        self,
        sample: Sample,
        tokenizer,
        template: ChatTemplate,
        add_generation_prompt: bool = False,
        media: list | None = None,
    ) -> dict[str, torch.Tensor]:
        check_tags(sample)
        rendered = render_conversation(
            sample.messages, tokenizer, template, self.expander, add_generation_prompt, self.max_length
        )
        out = {"input_ids": torch.tensor(rendered.input_ids), "labels": torch.tensor(rendered.labels)}
        loaded = media if media is not None else [self.load_media(m) for m in sample.media]
        videos = [x for m, x in zip(sample.media, loaded) if m.kind == "video"]
        images = [x for m, x in zip(sample.media, loaded) if m.kind == "image"]
        if videos:
            out["pixel_values_videos"] = torch.stack(videos)  # [n_videos, T, 3, S, S]
        if images:
            out["pixel_values"] = torch.stack(images)  # [n_images, 3, S, S]
        return out

    def collate(
        self, features: Sequence[dict[str, torch.Tensor]], padding_side: str = "right"
    ) -> dict[str, torch.Tensor]:
        batch = collate_text(features, self.pad_id, padding_side)
        for key in ("pixel_values_videos", "pixel_values"):
            parts = [f[key] for f in features if key in f]
            if parts:
                batch[key] = torch.cat(parts)
        return batch


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
    """Samples -> processor tensors for a native Gemma VLM (the `MediaPlugin` protocol).

    Args:
        processor: the model's processor (image processor + tokenizer + chat template).
        template: the family's chat template (`gemma3.data.template.ChatTemplate`; its generation prompt and
            end-of-turn marker find the assistant replies in the processor's ids).
        name: the family's name, for error messages.
        num_frames: frames sampled from each video (each becomes one image).
        max_length: longest sequence in tokens; checked against the frame budget here and per sample.
        sampling / fps: frame sampling (``uniform`` or ``fps``), as in `gemma3.data.media.read_video`.
    """

    def __init__(
        self,
        processor,
        template: ChatTemplate,
        name: str = "native",
        num_frames: int = 8,
        max_length: int | None = None,
        sampling: str = "uniform",
        fps: float = 1.0,
    ) -> None:
        self.processor = processor
        self.name = name
        self.num_frames = num_frames
        self.max_length = max_length
        self.sampling = sampling
        self.fps = fps
        tok = processor.tokenizer
        self.header_ids = tok(template.generation_prompt, add_special_tokens=False)["input_ids"]
        self.end_id = tok.convert_tokens_to_ids(template.turn_end)
        if self.end_id is None or self.end_id == tok.unk_token_id:
            raise ValueError(f"{name}: the tokenizer has no {template.turn_end!r} token")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        # Gemma 3's processor calls the begin-of-image marker its image token; the soft token is the tokenizer's.
        self.image_token_id = getattr(tok, "image_token_id", None) or getattr(processor, "image_token_id", None)
        self.per_frame = tokens_per_image(processor)
        if max_length is not None:
            check_frame_budget(num_frames, self.per_frame, max_length)

    # ---- media and messages
    def load_media(self, media) -> list:
        """PIL images of one media item: ``num_frames`` frames of a video, or the one image."""
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
    def encode(
        self, sample, tokenizer=None, template=None, add_generation_prompt: bool = False, media: list | None = None
    ) -> dict:
        """Tensors of one sample: ``input_ids`` / ``labels`` [L], per-token type ids [L], ``pixel_values``
        [n_images, ...] (and Gemma 4's ``image_position_ids``). ``tokenizer`` / ``template`` are unused (the
        processor and its chat template are the model's own); ``media``: as in `MediaPlugin.encode`."""
        check_tags(sample)
        loaded = media if media is not None else [self.load_media(m) for m in sample.media]
        images = [img for frames in loaded for img in frames]
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
        batch = collate_text(features, self.pad_id, padding_side)
        keys = {k for f in features for k in f} - set(batch)
        for key in sorted(keys):
            if key in SEQUENCE_KEYS:
                batch[key] = pad_sequences([f[key] for f in features], 0, padding_side)
            else:
                batch[key] = torch.cat([f[key] for f in features if key in f])
        return batch
