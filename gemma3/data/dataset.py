"""The training Dataset: samples encoded on the fly by a media plugin; bad samples skipped, counted, and bounded."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from gemma3.constants import DEFAULT_MAX_BAD_FRACTION
from gemma3.data.media import MEDIA_FAULTS, MediaError
from gemma3.data.plugins import MediaPlugin
from gemma3.data.records import AnnotationError
from gemma3.data.sample import Sample
from gemma3.data.template import ChatTemplate

logger = logging.getLogger(__name__)

SAMPLE_INDEX = "sample_index"  # each training example's position in the dataset, so a batch can name its samples


# Why a training sample was skipped: the media faults, then the sample's own.
SKIP_KINDS = (*MEDIA_FAULTS, "bad annotation", "over max_length")


def skip_kind(err: Exception) -> str:
    """The `SKIP_KINDS` entry of an error raised while encoding a sample."""
    if isinstance(err, MediaError):
        return err.kind if err.kind in SKIP_KINDS else "unreadable"
    if isinstance(err, AnnotationError):
        return "bad annotation"
    if isinstance(err, TooLongError):
        return "over max_length"
    return "unreadable"


class TooLongError(ValueError):
    """A sample that encodes to more tokens than ``max_length``."""


class DataStats:
    """Which samples turned out bad and why, shared by the main process and every DataLoader worker (a
    shared-memory code per sample: 0 good, else 1 + its index in `SKIP_KINDS`), so the bad-sample limit and the
    final count see all of them."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.flags = torch.zeros(total, dtype=torch.uint8).share_memory_()  # [N]

    @property
    def bad(self) -> set[int]:
        return set(self.flags.nonzero().flatten().tolist())

    def mark(self, index: int, kind: str = "unreadable") -> int:
        """Flag a sample as bad (``kind``: one of `SKIP_KINDS`); returns how many are bad now (across processes)."""
        self.flags[index] = 1 + SKIP_KINDS.index(kind)
        return int((self.flags > 0).sum())

    def is_bad(self, index: int) -> bool:
        return bool(self.flags[index])

    def by_kind(self) -> dict[str, int]:
        """Skipped samples per kind (only the kinds that occurred)."""
        codes = torch.bincount(self.flags.long(), minlength=len(SKIP_KINDS) + 1).tolist()
        return {kind: n for kind, n in zip(SKIP_KINDS, codes[1:]) if n}

    def __str__(self) -> str:
        kinds = ", ".join(f"{kind}: {n}" for kind, n in self.by_kind().items())
        return f"{len(self.bad)} of {self.total} samples skipped as bad" + (f" ({kinds})" if kinds else "")


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
        with_sample_index: bool = False,
    ) -> None:
        if not samples:
            raise ValueError("the dataset is empty")
        self.samples = list(samples)
        self.plugin = plugin
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.max_bad_fraction = max_bad_fraction
        self.with_sample_index = with_sample_index  # each example also carries `SAMPLE_INDEX`
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
            raise TooLongError(f"{len(feats['input_ids'])} tokens, over max_length={self.max_length}")
        return feats

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        for k in range(len(self.samples)):
            j = (i + k) % len(self.samples)
            if self.stats.is_bad(j):
                continue
            try:
                feats = self._encode(j)
                return {**feats, SAMPLE_INDEX: torch.tensor(j)} if self.with_sample_index else feats
            except (MediaError, AnnotationError, ValueError, OSError) as err:
                s = self.samples[j]
                kind = skip_kind(err)
                n_bad = self.stats.mark(j, kind)
                logger.warning("skipping bad sample %s (id %s, %s): %s", s.source, s.id, kind, err)
                if n_bad > self.max_bad_fraction * len(self.samples):
                    raise RuntimeError(
                        f"{n_bad} of {len(self.samples)} samples are bad, over the allowed "
                        f"{self.max_bad_fraction:.1%}; run `python dataset.py validate` on the annotations"
                    ) from err
        raise RuntimeError("every sample is bad")


def with_sample_index(collate: Callable[[Sequence[dict]], dict]) -> Callable[[Sequence[dict]], dict]:
    """A collate function that passes each feature's `SAMPLE_INDEX` on as one [B] tensor beside what ``collate``
    makes of the rest (the trainer takes it off before the model sees the batch)."""

    def collate_indexed(features: Sequence[dict]) -> dict:
        index = [f[SAMPLE_INDEX] for f in features if SAMPLE_INDEX in f]
        batch = collate([{k: v for k, v in f.items() if k != SAMPLE_INDEX} for f in features])
        if len(index) == len(features):
            batch[SAMPLE_INDEX] = torch.stack(index)  # [B]
        return batch

    return collate_indexed
