"""Where samples come from, in one entry point: an annotation file (LLaVA style or HF messages, JSON or JSONL;
`gemma3.data.records`) or a dataset release read from its own layout (``FORMAT:ROOT[:SPLIT]``, e.g.
``kinetics400:/data/k400:val``; `gemma3.data.releases`). Training's ``--data_path``, inference's and evaluation's
``--annotations`` and ``validate`` all read through `load_annotations`."""

from __future__ import annotations

from pathlib import Path

from gemma3.data.records import (
    AnnotationError,
    MediaRoots,
    check_tags,
    load_annotation_file,
    parse_record,
    read_records,
)
from gemma3.data.releases import DEFAULT_MAX_MISSING_FRACTION, ReleaseError, load_release, parse_spec
from gemma3.data.sample import Media, Sample

__all__ = [
    "AnnotationError", "Media", "MediaRoots", "ReleaseError", "Sample", "check_tags", "is_release_spec",
    "load_annotations", "parse_record", "read_records",
]  # fmt: skip


def is_release_spec(text: str | Path) -> bool:
    """Whether ``text`` names a dataset release (``FORMAT:ROOT[:SPLIT]`` with a registered format)."""
    return parse_spec(text) is not None


def load_annotations(
    path: str | Path,
    media_root: str | Path | MediaRoots | None = None,
    frames_as_video: bool = True,
    max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION,
) -> list[Sample]:
    """The samples of an annotation file (media paths against ``media_root``: one folder or `MediaRoots` by kind;
    default the file's folder) or of a
    ``FORMAT:ROOT[:SPLIT]`` release (media where the release keeps them; missing clips counted, and refused above
    ``max_missing_fraction``)."""
    spec = parse_spec(path)
    if spec is not None:
        return load_release(spec, max_missing_fraction)
    return load_annotation_file(path, media_root, frames_as_video)
