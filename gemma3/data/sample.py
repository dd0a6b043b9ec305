"""The project's sample: an id, a conversation whose text holds media tags, the media those tags stand for, and
where it came from. Annotation files (`gemma3.data.records`) and dataset releases (`gemma3.data.releases`) both
give these; the media plugins (`gemma3.data.plugins`) turn them into model tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

from gemma3.data.media import FrameArray


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
    extra: dict = field(default_factory=dict)  # what scoring needs beyond the reply (a release's options, events)
    # extra["reply_prefix"]: text a benchmark's protocol opens the reply with at inference (MVBench's
    # "Best option:("); the model's reply is what it generates after it.

    @property
    def reference(self) -> str | None:
        return self.messages[-1]["content"] if self.messages and self.messages[-1]["role"] == "assistant" else None
