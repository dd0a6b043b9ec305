"""Small file-writing helpers shared across stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, obj: Any, indent: int = 1) -> Path:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename, so a reader sees the whole file or
    none: what a "finished" marker written last needs (a killed run leaves no half-written marker)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent))
    tmp.replace(path)
    return path
