"""Annotation files: records in a file -> the project's `Sample`s.

Two annotation formats, JSON list or JSONL, media paths relative to a media root:

- LLaVA style: ``{"id", "video"|"image", "conversations": [{"from": "human", "value": "<video>\\n..."},
  {"from": "gpt", "value": ...}]}``;
- HF messages: ``{"messages": [{"role": "user", "content": [{"type": "image", "image": "frames/x/frame_1.jpg"},
  ..., {"type": "text", "text": ...}]}, {"role": "assistant", ...}]}``. Consecutive images in one turn form one
  video clip (a frame sequence) unless ``frames_as_video=False`` (the native VLMs take N images).

`gemma3.data.formats.load_annotations` reads these files and dataset releases (``FORMAT:ROOT[:SPLIT]``) alike;
the media plugins (`gemma3.data.plugins`) turn a `Sample` into model tensors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from gemma3.constants import IMAGE_TAG, MEDIA_TAGS, VIDEO_TAG
from gemma3.data.sample import Media, Sample
from gemma3.utils.errors import UserError

logger = logging.getLogger(__name__)

_ROLE = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}


class AnnotationError(UserError, ValueError):
    """A malformed annotation record; the message names the file, the sample index and the field."""


@dataclass(frozen=True)
class MediaRoots:
    """Media roots by kind (training's ``--image_folder`` and ``--video_folder``): images and frame files resolve
    against ``image``, videos against ``video``; a kind without its own root takes the other one."""

    image: str | Path | None = None
    video: str | Path | None = None

    def for_kind(self, kind: str) -> str | Path | None:
        first, second = (self.video, self.image) if kind == "video" else (self.image, self.video)
        return first if first is not None else second


def _resolve(path: str, media_root: str | Path | MediaRoots | None, kind: str) -> str:
    p = Path(path)
    root = media_root.for_kind(kind) if isinstance(media_root, MediaRoots) else media_root
    return str(p if p.is_absolute() or root is None else Path(root) / p)


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
            media.append(Media(kind, _resolve(p, media_root, kind)))
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
                frames.append(_resolve(src, media_root, "image"))
            elif kind == "video":
                _flush_frames(frames, parts, media, frames_as_video)
                src = item.get("video") or item.get("path")
                if not isinstance(src, str):
                    raise AnnotationError(f"{where}: messages[{j}].content[{k}] video item has no 'video' path")
                media.append(Media("video", _resolve(src, media_root, "video")))
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


def load_annotation_file(
    path: str | Path, media_root: str | Path | MediaRoots | None = None, frames_as_video: bool = True
) -> list[Sample]:
    """Parse an annotation file; media paths resolve against ``media_root`` (one folder, or `MediaRoots` by kind;
    default: the file's folder)."""
    root = Path(path).parent if media_root is None else media_root
    if isinstance(root, MediaRoots) and root.image is None and root.video is None:
        root = Path(path).parent
    return [parse_record(r, f"{path}:{i}", root, frames_as_video) for i, r in enumerate(read_records(path))]


def check_tags(sample: Sample) -> None:
    """Tags in the text must match the media list, kind by kind."""
    text = "".join(m["content"] for m in sample.messages)
    for kind, tag in (("video", VIDEO_TAG), ("image", IMAGE_TAG)):
        n_tags, n_media = text.count(tag), sum(1 for m in sample.media if m.kind == kind)
        if n_tags != n_media:
            raise AnnotationError(f"{sample.source} (id {sample.id}): {n_tags} {tag} tags but {n_media} {kind} files")
