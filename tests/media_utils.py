"""Small media files made by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gemma3.data.media import write_video  # noqa: F401  (re-exported for the tests)


def frame_value(i: int) -> int:
    """Grey level that identifies frame i (distinct after lossy encoding)."""
    return (i * 23 + 10) % 250


def make_frames(n: int, size: int = 32) -> np.ndarray:
    """[n, size, size, 3] uint8 frames, frame i a flat grey of frame_value(i)."""
    return np.stack([np.full((size, size, 3), frame_value(i), np.uint8) for i in range(n)])


def write_frame_folder(folder: str | Path, frames: np.ndarray) -> list[Path]:
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames, 1):
        p = folder / f"frame_{i}.jpg"
        Image.fromarray(f).save(p, quality=95)
        paths.append(p)
    return paths


def write_json(path: str | Path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path
