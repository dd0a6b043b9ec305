"""Dataset release layouts, read directly: ``FORMAT:ROOT[:SPLIT]`` names a benchmark as its publisher ships it.

Each layout is a small `ReleaseReader` class behind a registry (as the benchmarks are): it reads the release's own
annotation files under ROOT, finds each clip where the release puts it, and gives the project's `Sample`s with the
class (or answer) as the assistant reply and the task's prompt. Real copies miss some clips: the missing ones are
counted and named, and a copy missing more than ``max_missing_fraction`` (default 0.1) is refused.

The spec is accepted wherever an annotation file is (training's ``--data_path``, inference's and evaluation's
``--annotations``, ``validate``, `gemma3.data.formats.load_annotations`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from gemma3.constants import DEFAULT_PROMPT
from gemma3.data.sample import Media, Sample
from gemma3.utils.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_MAX_MISSING_FRACTION = 0.1
RELEASES: dict[str, type[ReleaseReader]] = {}


class ReleaseError(UserError, ValueError):
    """A release layout that cannot be read as asked: the message names the format, ROOT, split and file."""


def register_release(cls: type[ReleaseReader]) -> type[ReleaseReader]:
    for name in cls.names:
        RELEASES[name] = cls
    return cls


@dataclass(frozen=True)
class ReleaseSpec:
    """``FORMAT:ROOT[:SPLIT]`` parsed (``split`` None: the format's default split)."""

    format: str
    root: Path
    split: str | None = None

    def __str__(self) -> str:
        return f"{self.format}:{self.root}" + (f":{self.split}" if self.split else "")


def parse_spec(text: str | Path) -> ReleaseSpec | None:
    """The release spec ``text`` names, or None when it is no spec (a plain path or a registered dataset name):
    a spec starts with a registered format name and a colon."""
    fmt, sep, rest = str(text).partition(":")
    if not sep or fmt not in RELEASES or not rest:
        return None
    root, sep, split = rest.rpartition(":")
    if not sep or "/" in split:  # no split given (or the last colon belonged to the path)
        root, split = rest, ""
    return ReleaseSpec(fmt, Path(root).expanduser(), split or None)


@dataclass
class ReleaseRecord:
    """One item of a release before it becomes a `Sample`: its id, media, and what it asks and answers."""

    id: str
    media: str | tuple[str, ...]  # a file, or frame files
    kind: str = "video"  # "video" | "image"
    label: str | None = None  # the class (classification) or the answer text (QA, feedback)
    question: str | None = None  # QA: the question with its options, as the reference evaluation words it
    system: str | None = None  # a system prompt the reference evaluation gives (MVBench)
    source: str = ""  # "annotation file:row", for error messages
    files: tuple[str, ...] = ()  # other files the sample needs (a per-frame timestamps file ...)
    extra: dict = field(default_factory=dict)  # what scoring needs (task, options, answer letter, start/end ...)


@dataclass
class MissingReport:
    """Records whose media are not on disk."""

    total: int
    missing: list[str]

    @property
    def fraction(self) -> float:
        return len(self.missing) / self.total if self.total else 0.0

    def describe(self, limit: int = 5) -> str:
        first = ", ".join(self.missing[:limit])
        return f"{len(self.missing)} of {self.total} clips missing ({self.fraction:.1%}; first: {first})"


class ReleaseReader:
    """One release layout. Subclasses set ``names`` (format names, e.g. ``kinetics400``), ``splits`` (the release's
    own split names, the first is the default), ``prompt`` and implement `records`."""

    names: ClassVar[tuple[str, ...]] = ()
    splits: ClassVar[tuple[str, ...]] = ()
    prompt: ClassVar[str] = DEFAULT_PROMPT

    def __init__(self, root: str | Path, split: str | None = None, name: str | None = None,
                 max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION) -> None:  # fmt: skip
        self.name = name or self.names[0]
        self.root = Path(root).expanduser()
        self.split = split or self.splits[0]
        self.max_missing_fraction = max_missing_fraction
        if not self.root.is_dir():
            raise ReleaseError(f"{self.name}:{self.root}: ROOT is not a folder")
        if not self.valid_split(self.split):
            raise ReleaseError(f"{self.name}: split {self.split!r} is not one of the release's {self.known_splits()}")

    def __str__(self) -> str:
        return f"{self.name}:{self.root}:{self.split}"

    # ---- what a layout implements
    def known_splits(self) -> list[str]:
        """The release's own split names (a layout whose annotation file names them reads them from there)."""
        return list(self.splits)

    def valid_split(self, split: str) -> bool:
        """Whether ``split`` names a split of this release (its own names)."""
        return split in self.known_splits()

    def records(self) -> list[ReleaseRecord]:
        """Every record of the split, media paths resolved (whether or not the file is there)."""
        raise NotImplementedError

    def classes(self) -> list[str]:
        """The class list (classification releases), in the release's order; empty otherwise."""
        return []

    # ---- shared
    def require(self, path: Path, what: str) -> Path:
        """``path`` when it exists, else a clear error naming the release and what the file is."""
        if not path.exists():
            raise ReleaseError(f"{self}: {what} not found at {path}")
        return path

    def available(self) -> tuple[list[ReleaseRecord], MissingReport]:
        """The records whose media are on disk, and the report of the missing ones (refused above the limit)."""
        records = self.records()
        if not records:
            raise ReleaseError(f"{self}: the split lists no samples")
        present, missing = [], []
        for r in records:
            paths = ([r.media] if isinstance(r.media, str) else list(r.media)) + list(r.files)
            (present if paths and all(Path(p).exists() for p in paths) else missing).append(r)
        report = MissingReport(len(records), [r.id for r in missing])
        if missing:
            logger.warning("%s: %s", self, report.describe())
            if report.fraction > self.max_missing_fraction:
                raise ReleaseError(
                    f"{self}: {report.describe()}, over --max_missing_fraction {self.max_missing_fraction:g}; "
                    "check ROOT and the split, or raise the limit"
                )
        return present, report

    def to_sample(self, r: ReleaseRecord) -> Sample:
        tag = f"<{r.kind}>"
        text = r.question if r.question is not None else self.prompt
        messages = [{"role": "system", "content": r.system}] if r.system else []
        messages.append({"role": "user", "content": f"{tag}\n{text}"})
        if r.label is not None:
            messages.append({"role": "assistant", "content": r.label})
        return Sample(r.id, messages, (Media(r.kind, r.media),), r.source or str(self), dict(r.extra))

    def samples(self) -> list[Sample]:
        """The split's samples whose media are on disk (missing ones counted; see `available`)."""
        present, _ = self.available()
        return [self.to_sample(r) for r in present]


def get_release(spec: ReleaseSpec, max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION) -> ReleaseReader:
    """The reader of a parsed spec."""
    return RELEASES[spec.format](spec.root, spec.split, spec.format, max_missing_fraction)


def load_release(spec: str | ReleaseSpec, max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION) -> list[Sample]:
    """The samples a ``FORMAT:ROOT[:SPLIT]`` spec names."""
    parsed = parse_spec(spec) if not isinstance(spec, ReleaseSpec) else spec
    if parsed is None:
        raise ReleaseError(f"{spec}: not a FORMAT:ROOT[:SPLIT] spec; formats: {sorted(RELEASES)}")
    return get_release(parsed, max_missing_fraction).samples()


def unique_ids(records: Iterable[ReleaseRecord], where: str) -> list[ReleaseRecord]:
    """The records with ids made unique (a clip listed twice keeps its first entry; the repeat is logged)."""
    seen, out = set(), []
    for r in records:
        if r.id in seen:
            logger.warning("%s: id %s listed more than once; the first entry is kept", where, r.id)
            continue
        seen.add(r.id)
        out.append(r)
    return out
