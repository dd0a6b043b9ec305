"""Annotation readers, the training Dataset, the collator, and ``python dataset.py validate``.

Two annotation formats, JSON list or JSONL, media paths relative to a media root:

- LLaVA style: ``{"id", "video"|"image", "conversations": [{"from": "human", "value": "<video>\\n..."},
  {"from": "gpt", "value": ...}]}``;
- HF messages: ``{"messages": [{"role": "user", "content": [{"type": "image", "image": "frames/x/frame_1.jpg"},
  ..., {"type": "text", "text": ...}]}, {"role": "assistant", ...}]}``. Consecutive images in one turn form one
  video clip (a frame sequence) unless ``frames_as_video=False`` (the native VLMs take N images).

A `MediaPlugin` turns a `Sample` into model tensors and collates them; `CustomModelPlugin` serves the custom
model, `gemma3.model.native.NativeVLMPlugin` the native Gemma VLMs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import Dataset

from constants import CLIP_MEAN, CLIP_STD, DEFAULT_MAX_BAD_FRACTION, IGNORE_INDEX, IMAGE_TAG, MEDIA_TAGS, VIDEO_TAG
from conversation import ChatTemplate, render_conversation
from mm_utils import FrameArray, MediaError, MediaExpander, preprocess_frames, read_clip, read_image, read_video

logger = logging.getLogger(__name__)

_ROLE = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}


class AnnotationError(ValueError):
    """A malformed annotation record; the message names the file, the sample index and the field."""


@dataclass(frozen=True)
class Media:
    kind: str  # "video" or "image"
    path: str | tuple[str, ...] | FrameArray  # a file / frame folder, a tuple of frame files, or frames in memory


@dataclass(frozen=True)
class Sample:
    id: str
    messages: tuple[dict, ...] | list[dict]  # role in system/user/assistant; content text with media tags
    media: tuple[Media, ...] = ()
    source: str = ""  # "file:index", for error messages

    @property
    def reference(self) -> str | None:
        return self.messages[-1]["content"] if self.messages and self.messages[-1]["role"] == "assistant" else None


def _resolve(path: str, media_root: str | Path | None) -> str:
    p = Path(path)
    return str(p if p.is_absolute() or media_root is None else Path(media_root) / p)


def _parse_llava(rec: dict, where: str, media_root) -> Sample:
    convs = rec.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise AnnotationError(f"{where}: field 'conversations' must be a non-empty list")
    messages = []
    for j, turn in enumerate(convs):
        role = _ROLE.get(str(turn.get("from", "")).lower())
        if role is None or not isinstance(turn.get("value"), str):
            raise AnnotationError(f"{where}: conversations[{j}] needs 'from' (human/gpt/system) and a text 'value'")
        messages.append({"role": role, "content": turn["value"]})
    media = []
    for kind in ("video", "image"):
        val = rec.get(kind)
        if val is None:
            continue
        for p in [val] if isinstance(val, str) else list(val):
            media.append(Media(kind, _resolve(p, media_root)))
    text = "".join(m["content"] for m in messages)
    if media and not any(t in text for t in MEDIA_TAGS):  # tag-less records: media go before the first question
        tags = "".join(f"<{m.kind}>\n" for m in media)
        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[first] = {**messages[first], "content": tags + messages[first]["content"]}
    return Sample(str(rec.get("id", where)), messages, tuple(media), where)


def _flush_frames(frames: list[str], parts: list[str], media: list[Media], frames_as_video: bool) -> None:
    """Consecutive image items: one video clip (frame sequence), or separate images."""
    if not frames:
        return
    if frames_as_video and len(frames) > 1:
        media.append(Media("video", tuple(frames)))
        parts.append(VIDEO_TAG + "\n")
    else:
        for f in frames:
            media.append(Media("image", f))
            parts.append(IMAGE_TAG + "\n")
    frames.clear()


def _parse_messages(rec: dict, where: str, media_root, frames_as_video: bool) -> Sample:
    messages, media = [], []
    for j, msg in enumerate(rec["messages"]):
        role = _ROLE.get(str(msg.get("role", "")).lower())
        if role is None:
            raise AnnotationError(f"{where}: messages[{j}].role {msg.get('role')!r} is not user/assistant/system")
        content = msg.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise AnnotationError(f"{where}: messages[{j}].content must be a string or a list of items")
        parts: list[str] = []
        frames: list[str] = []

        for k, item in enumerate(content):
            kind = item.get("type")
            if kind == "image":
                src = item.get("image") or item.get("path") or item.get("url")
                if not isinstance(src, str):
                    raise AnnotationError(f"{where}: messages[{j}].content[{k}] image item has no 'image' path")
                frames.append(_resolve(src, media_root))
            elif kind == "video":
                _flush_frames(frames, parts, media, frames_as_video)
                src = item.get("video") or item.get("path")
                if not isinstance(src, str):
                    raise AnnotationError(f"{where}: messages[{j}].content[{k}] video item has no 'video' path")
                media.append(Media("video", _resolve(src, media_root)))
                parts.append(VIDEO_TAG + "\n")
            elif kind == "text":
                _flush_frames(frames, parts, media, frames_as_video)
                parts.append(str(item.get("text", "")))
            else:
                raise AnnotationError(f"{where}: messages[{j}].content[{k}].type {kind!r} is not image/video/text")
        _flush_frames(frames, parts, media, frames_as_video)
        messages.append({"role": role, "content": "".join(parts)})
    return Sample(str(rec.get("id", where)), messages, tuple(media), where)


def parse_record(rec: dict, where: str, media_root=None, frames_as_video: bool = True) -> Sample:
    """One annotation record (either format) as a `Sample`."""
    if not isinstance(rec, dict):
        raise AnnotationError(f"{where}: a record must be a JSON object")
    if "conversations" in rec:
        return _parse_llava(rec, where, media_root)
    if "messages" in rec:
        return _parse_messages(rec, where, media_root, frames_as_video)
    raise AnnotationError(f"{where}: record has neither 'conversations' nor 'messages'")


def read_records(path: str | Path) -> list[dict]:
    """Records of a JSON list or JSONL file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"annotation file not found: {path}")
    text = path.read_text()
    if path.suffix == ".jsonl" or (text.lstrip()[:1] == "{" and "\n{" in text):
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise AnnotationError(f"{path}:{n}: invalid JSON ({err})") from err
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: invalid JSON at line {err.lineno} column {err.colno} ({err.msg})") from err
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list of records (or JSONL), got {type(data).__name__}")
    return data


def load_annotations(
    path: str | Path, media_root: str | Path | None = None, frames_as_video: bool = True
) -> list[Sample]:
    """Parse an annotation file; media paths resolve against ``media_root`` (default: the file's folder)."""
    root = Path(path).parent if media_root is None else media_root
    return [parse_record(r, f"{path}:{i}", root, frames_as_video) for i, r in enumerate(read_records(path))]


class MediaPlugin(Protocol):
    """Turns a sample into model tensors, and a list of those into a batch."""

    def encode(
        self, sample: Sample, tokenizer, template: ChatTemplate | None, add_generation_prompt: bool = False
    ) -> dict[str, torch.Tensor]: ...

    def collate(
        self, features: Sequence[dict[str, torch.Tensor]], padding_side: str = "right"
    ) -> dict[str, torch.Tensor]: ...


def check_tags(sample: Sample) -> None:
    """Tags in the text must match the media list, kind by kind."""
    text = "".join(m["content"] for m in sample.messages)
    for kind, tag in (("video", VIDEO_TAG), ("image", IMAGE_TAG)):
        n_tags, n_media = text.count(tag), sum(1 for m in sample.media if m.kind == kind)
        if n_tags != n_media:
            raise AnnotationError(f"{sample.source} (id {sample.id}): {n_tags} {tag} tags but {n_media} {kind} files")


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
        self, sample: Sample, tokenizer, template: ChatTemplate, add_generation_prompt: bool = False
    ) -> dict[str, torch.Tensor]:
        check_tags(sample)
        rendered = render_conversation(
            sample.messages, tokenizer, template, self.expander, add_generation_prompt, self.max_length
        )
        out = {"input_ids": torch.tensor(rendered.input_ids), "labels": torch.tensor(rendered.labels)}
        videos = [self.load_media(m) for m in sample.media if m.kind == "video"]
        images = [self.load_media(m) for m in sample.media if m.kind == "image"]
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


class DataStats:
    """Which samples turned out bad, shared by the main process and every DataLoader worker (a shared-memory flag
    per sample), so the bad-sample limit and the final count see all of them."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.flags = torch.zeros(total, dtype=torch.uint8).share_memory_()  # [N], 1 = bad

    @property
    def bad(self) -> set[int]:
        return set(self.flags.nonzero().flatten().tolist())

    def mark(self, index: int) -> int:
        """Flag a sample as bad; returns how many are bad now (across processes)."""
        self.flags[index] = 1
        return int(self.flags.sum())

    def is_bad(self, index: int) -> bool:
        return bool(self.flags[index])

    def __str__(self) -> str:
        return f"{len(self.bad)} of {self.total} samples skipped as bad"


class SupervisedDataset(Dataset):
    """Training dataset: encodes samples on the fly; a bad sample is skipped (with a warning), counted, and
    replaced by the next good one; past ``max_bad_fraction`` bad samples the run stops with a clear error."""

    def __init__(
        self,
        samples: Sequence[Sample],
        plugin: MediaPlugin,
        tokenizer,
        template: ChatTemplate | None,
        max_length: int | None = None,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    ) -> None:
        if not samples:
            raise ValueError("the dataset is empty")
        self.samples = list(samples)
        self.plugin = plugin
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.max_bad_fraction = max_bad_fraction
        self.stats = DataStats(len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def _encode(self, i: int) -> dict[str, torch.Tensor]:
        sample = self.samples[i]
        for m in sample.messages:
            if m["role"] == "assistant" and isinstance(m["content"], str) and not m["content"].strip():
                raise AnnotationError(f"{sample.source} (id {sample.id}): field 'conversations': empty assistant reply")
        feats = self.plugin.encode(sample, self.tokenizer, self.template)
        if self.max_length is not None and len(feats["input_ids"]) > self.max_length:
            raise ValueError(f"{len(feats['input_ids'])} tokens, over max_length={self.max_length}")
        return feats

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        for k in range(len(self.samples)):
            j = (i + k) % len(self.samples)
            if self.stats.is_bad(j):
                continue
            try:
                return self._encode(j)
            except (MediaError, AnnotationError, ValueError, OSError) as err:
                s = self.samples[j]
                n_bad = self.stats.mark(j)
                logger.warning("skipping bad sample %s (id %s): %s", s.source, s.id, err)
                if n_bad > self.max_bad_fraction * len(self.samples):
                    raise RuntimeError(
                        f"{n_bad} of {len(self.samples)} samples are bad, over the allowed "
                        f"{self.max_bad_fraction:.1%}; run `python dataset.py validate` on the annotations"
                    ) from err
        raise RuntimeError("every sample is bad")


@dataclass
class Problem:
    index: int
    id: str
    field: str
    path: str
    problem: str


@dataclass
class ValidationReport:
    annotation: str
    total: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "annotation": self.annotation,
            "total": self.total,
            "num_bad_samples": len({p.index for p in self.problems}),
            "problems": [dataclasses.asdict(p) for p in self.problems],
        }


def validate_annotations(
    path: str | Path,
    media_root: str | Path | None = None,
    tokenizer=None,
    max_length: int | None = None,
    check_media: bool = True,
    encode=None,
) -> ValidationReport:
    """Every problem of every sample: bad record, missing file, unreadable or zero-frame video, no assistant
    turn or an empty reply, tag count not matching media, and a sample over ``max_length`` tokens.

    With ``encode`` (a model's data plugin: sample -> tensors, see `gemma3.families.Family.data_side`) the length
    is the exact training length: chat template, expanded video placeholders or image soft tokens included.
    Without it, only the raw text is counted with ``tokenizer`` (a lower bound)."""
    problems: list[Problem] = []
    try:
        records = read_records(path)
    except (AnnotationError, json.JSONDecodeError) as err:
        return ValidationReport(str(path), 0, [Problem(-1, "", "file", str(path), str(err))])
    root = Path(path).parent if media_root is None else media_root
    for i, rec in enumerate(records):
        where = f"{path}:{i}"
        before = len(problems)  # encode only samples with no problem so far
        try:
            s = parse_record(rec, where, root)
        except AnnotationError as err:
            problems.append(Problem(i, str(rec.get("id", "")) if isinstance(rec, dict) else "", "record", "", str(err)))
            continue
        replies = [m["content"] for m in s.messages if m["role"] == "assistant"]
        if not replies:
            problems.append(Problem(i, s.id, "conversations", "", "no assistant turn"))
        elif any(isinstance(r, str) and not r.strip() for r in replies):
            problems.append(Problem(i, s.id, "conversations", "", "empty assistant reply (training skips it)"))
        try:
            check_tags(s)
        except AnnotationError as err:
            problems.append(Problem(i, s.id, "tags", "", str(err)))
        if check_media:
            for m in s.media:
                paths = list(m.path) if isinstance(m.path, tuple) else [m.path]
                try:
                    if m.kind == "video" and not isinstance(m.path, tuple):
                        read_video(m.path, 1)
                    else:
                        for p in paths:
                            read_image(p)
                except MediaError as err:
                    problems.append(Problem(i, s.id, m.kind, str(paths[0]), str(err)))
        if encode is not None and max_length is not None and len(problems) == before:
            try:
                n = len(encode(s)["input_ids"])
            except (MediaError, AnnotationError, ValueError, OSError) as err:
                problems.append(Problem(i, s.id, "encode", "", str(err)))
            else:
                if n > max_length:
                    why = f"{n} tokens with template and media, over max_length={max_length}"
                    problems.append(Problem(i, s.id, "length", "", why))
        elif tokenizer is not None and max_length is not None:
            text = "".join(m["content"] for m in s.messages if isinstance(m["content"], str))
            n = len(tokenizer(text, add_special_tokens=False).input_ids)
            if n > max_length:
                problems.append(Problem(i, s.id, "text", "", f"text is {n} tokens, over max_length={max_length}"))
    return ValidationReport(str(path), len(records), problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Dataset tools")
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="report every bad sample of an annotation file")
    v.add_argument("annotation")
    v.add_argument("--media-root", default=None)
    v.add_argument("--tokenizer", default=None, help="tokenizer folder/id: --max-length on the raw text only")
    v.add_argument(
        "--model_path", default=None, help="model or training output: --max-length exactly as training counts"
    )
    v.add_argument("--max-length", type=int, default=None)
    v.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    tok = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    encode = None
    if args.model_path:
        from gemma3.families import family_for_checkpoint

        processor, plugin, template = family_for_checkpoint(args.model_path).data_side(args.model_path)

        def encode(sample):
            return plugin.encode(sample, processor, template)

    try:
        report = validate_annotations(args.annotation, args.media_root, tok, args.max_length, encode=encode)
    except FileNotFoundError as err:
        print(f"error: {err}")
        return 2
    for p in report.problems:
        print(f"[{p.index}] id={p.id} field={p.field} path={p.path}: {p.problem}")
    bad = len({p.index for p in report.problems})
    print(f"{report.total} samples, {bad} bad, {len(report.problems)} problems")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
