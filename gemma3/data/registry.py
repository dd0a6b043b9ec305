"""Named datasets: name -> annotation file + media root. Several can be mixed in one run (``--data_path a,b``).

Names are registered from code (`register_dataset`) or from a YAML/JSON file (`register_from_file`, or the file
named by ``$VIDEO_GEMMA_DATASETS``). Anything that is not a registered name is taken as an annotation path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from gemma3.data.records import MediaRoots
from gemma3.data.releases import parse_spec


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    annotation_path: str
    media_root: str | MediaRoots | None = None


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(name: str, annotation_path: str, media_root: str | None = None) -> DatasetSpec:
    """Register (or replace) a named dataset."""
    spec = DatasetSpec(name, str(annotation_path), None if media_root is None else str(media_root))
    _REGISTRY[name] = spec
    return spec


def register_from_file(path: str | Path) -> list[DatasetSpec]:
    """Register datasets from a YAML/JSON mapping ``name: {annotation_path, media_root}`` (paths relative to it)."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    out = []
    for name, entry in (data or {}).items():
        ann = Path(entry["annotation_path"])
        root = entry.get("media_root")
        ann = ann if ann.is_absolute() else path.parent / ann
        root = None if root is None else str(Path(root) if Path(root).is_absolute() else path.parent / root)
        out.append(register_dataset(name, str(ann), root))
    return out


def registered() -> dict[str, DatasetSpec]:
    if os.environ.get("VIDEO_GEMMA_DATASETS"):
        register_from_file(os.environ["VIDEO_GEMMA_DATASETS"])
    return dict(_REGISTRY)


def resolve_datasets(spec: str, media_root: str | MediaRoots | None = None) -> list[DatasetSpec]:
    """``"a,b,path.json,kinetics400:/data/k400:train"`` -> specs: registered names as registered, dataset releases
    (``FORMAT:ROOT[:SPLIT]``) as given, other entries as annotation files.

    ``media_root`` applies to plain paths (default: the annotation file's folder).
    """
    table = registered()
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item in table:
            out.append(table[item])
        elif parse_spec(item) is not None:
            out.append(DatasetSpec(item, item, None))
        elif Path(item).exists():
            out.append(DatasetSpec(Path(item).stem, item, media_root))
        else:
            raise FileNotFoundError(f"{item!r} is neither a registered dataset ({sorted(table)}) nor a file")
    if not out:
        raise ValueError("no dataset given")
    return out
