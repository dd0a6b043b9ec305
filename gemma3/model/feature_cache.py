"""Frozen-encoder feature cache: when a stage freezes the encoders, each clip's encoder outputs are computed once and
reused (later epochs, a resumed run, a later stage with the same encoder weights when kept on disk).

A cached entry is keyed by what decides the encoder output: a hash of the model-input pixels (which covers the file,
the frame indices and the preprocessing, augmentation included) and a fingerprint of the encoders' weights. Any
change to those is a different key, so nothing stale is ever read. The model consults the cache only while every
encoder parameter is frozen and no encoder layer is stochastic in the current mode (dropout / drop-path while
training); otherwise it encodes as usual.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

Entry = tuple[torch.Tensor | None, ...]


def weights_fingerprint(modules: list[torch.nn.Module]) -> str:
    """A hash of every parameter and buffer (name, dtype, shape, values) of ``modules``."""
    h = hashlib.blake2b(digest_size=16)
    for i, module in enumerate(modules):
        for name, t in (*module.named_parameters(), *module.named_buffers()):
            h.update(f"{i}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def stochastic(module: torch.nn.Module) -> bool:
    """Whether ``module`` gives different outputs for the same input in its current mode."""
    for m in module.modules():
        if not m.training:
            continue
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if float(getattr(m, "drop_path", 0.0) or 0.0) > 0:
            return True
    return False


class FeatureCache:
    """Encoder outputs by (input pixels, encoder weights): in memory (up to ``max_bytes``), and on disk under
    ``directory`` when given (one ``.pt`` file per entry, written atomically)."""

    def __init__(self, directory: str | Path | None = None, max_bytes: int = 8 << 30) -> None:
        self.directory = Path(directory) if directory else None
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.memory: OrderedDict[str, Entry] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0
        self._full_logged = False

    @staticmethod
    def key(pixels: torch.Tensor, fingerprint: str) -> str:
        """The entry key of one input (``pixels`` [T, 3, S, S] or [3, S, S]) under encoder weights ``fingerprint``."""
        h = hashlib.blake2b(digest_size=20)
        h.update(f"{fingerprint}:{pixels.dtype}:{tuple(pixels.shape)}".encode())
        h.update(pixels.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.pt"

    def get(self, key: str) -> Entry | None:
        entry = self.memory.get(key)
        if entry is None and self.directory is not None and self._path(key).exists():
            entry = tuple(torch.load(self._path(key), weights_only=True))
            self._remember(key, entry)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, key: str, entry: Entry) -> None:
        entry = tuple(None if t is None else t.detach().cpu().clone() for t in entry)
        self._remember(key, entry)
        if self.directory is not None:
            path = self._path(key)
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(list(entry), tmp)
            tmp.replace(path)

    def _remember(self, key: str, entry: Entry) -> None:
        size = sum(t.numel() * t.element_size() for t in entry if t is not None)
        if self.bytes + size > self.max_bytes:
            if not self._full_logged:
                logger.warning("feature cache: %.1f GiB in memory, the limit; further entries are not kept in memory",
                               self.bytes / 2**30)  # fmt: skip
                self._full_logged = True
            return
        self.memory[key] = entry
        self.bytes += size

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self.memory), "bytes": self.bytes}
