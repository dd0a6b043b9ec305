"""Checks that a checkpoint folder is whole before anything is loaded from it, and that what was loaded is all of it.

A copy that stopped half way (a truncated ``model.safetensors`` or ``adapter_model.safetensors``, a sharded model
missing a shard), a config that does not match the weights (another hidden size), an adapter trained on another
base: each is refused with the file and the reason, so nothing trains, predicts or exports on partially loaded
or randomly re-initialised weights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from safetensors import safe_open

from gemma3.utils.errors import CheckpointError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from a safetensors file's header; a truncated or foreign file raises `CheckpointError`."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # safetensors raises its own SafetensorError (not exported) or OSError
        raise CheckpointError(f"{path}: truncated or not a safetensors file ({err}); copy or save it again") from err


def check_checkpoint_files(folder: str | Path) -> None:
    """Refuse a folder whose weight files are not whole: every ``*.safetensors`` must have a complete header and
    data, and every shard an index names must be there."""
    folder = Path(folder)
    for path in sorted(folder.glob("*.safetensors")):
        safetensors_shapes(path)
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"{index}: not a safetensors index ({err})") from err
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise CheckpointError(f"{index}: names {len(missing)} shard(s) that are not in {folder}: {missing[:3]}")


def mismatched_shapes(expected: dict[str, tuple[int, ...]], folder: str | Path) -> list[str]:
    """``key: saved shape vs expected shape`` for every tensor of the folder's safetensors files whose shape differs
    from ``expected`` (a model's ``{name: shape}``)."""
    found = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        for key, shape in safetensors_shapes(path).items():
            want = expected.get(key)
            if want is not None and tuple(want) != shape:
                found.append(f"{key}: saved {list(shape)}, the config gives {list(want)}")
    return found


def load_checked(folder: str | Path, load: Callable[[], T], expected: Callable[[], dict[str, tuple[int, ...]]]) -> T:
    """``load()`` a checkpoint from ``folder`` after `check_checkpoint_files`; when it fails on tensor sizes, the
    error names the tensors (``expected()`` gives the shapes the config builds, computed only then)."""
    check_checkpoint_files(folder)
    try:
        return load()
    except RuntimeError as err:
        if "size mismatch" not in str(err) and "mismatched_sizes" not in str(err):
            raise
        bad = mismatched_shapes(expected(), folder)
        if bad:
            detail = "; ".join(bad[:4]) + (f" (and {len(bad) - 4} more)" if len(bad) > 4 else "")
        else:  # PyTorch's own message names the tensors ("size mismatch for KEY: copying ... shape ...")
            detail = " ".join(str(err).split())[:600]
        raise CheckpointError(
            f"{folder}: the weights do not fit the model its config (or its base model) builds: {detail}"
        ) from err
