"""The training Dataset: samples encoded on the fly by a media plugin; bad samples skipped, counted, and bounded."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from gemma3.constants import DEFAULT_MAX_BAD_FRACTION
from gemma3.data.media import MediaError
from gemma3.data.plugins import MediaPlugin
from gemma3.data.records import AnnotationError
from gemma3.data.sample import Sample
from gemma3.data.template import ChatTemplate

logger = logging.getLogger(__name__)


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
