"""What the main job trains and scores on (`DataPlan`): a prepared dataset in its folder, a QEVD download read
through its release specs, or the rendered coach (`gemma3.data.coach`), generated there when the folder is empty."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from gemma3.data.coach import BENCHMARK, CoachConfig, generated_info, make_coach_dataset, specs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataPlan:
    """What the pipeline trains and scores on: annotation files or release specs. With a class list it is scored
    as action recognition, without as QEVD feedback (``qevd_fit_300k``)."""

    train: str
    test: str
    media_root: Path | None = None
    classes: tuple[str, ...] = ()
    sessions: str | None = None  # long videos to stream (a qevd_fit_coach spec)
    pretrain: str | None = None  # what the pretrain stage trains on, when not ``train``
    test_labels: str | None = None  # the test clips answered with their labels (the encoder warm-up's held-out score)


def data_plan(data_dir: Path) -> DataPlan:
    """A prepared dataset (``annotations/train.json``, ``classes.txt``) in ``data_dir``, else the coach's releases."""
    ann = data_dir / "annotations"
    if (ann / "train.json").exists():
        classes = tuple(c for c in (data_dir / "classes.txt").read_text().split("\n") if c)
        return DataPlan(str(ann / "train.json"), str(ann / "test.json"), data_dir, classes)  # action recognition
    spec = specs(data_dir)
    # Finetuned on both tasks of the same clips (their own prompts): the coach's sentence, and the label, whose every
    # token depends on the video; on the sentences alone (one visual token in fifteen) the visual path learned
    # nothing (exercise accuracy 0.34, form 0.11, train and test alike).
    return DataPlan(f"{spec['train']},{spec['train_labels']}", spec["test"], sessions=spec["sessions"],
                    pretrain=spec["train_labels"], test_labels=spec["test_labels"])  # fmt: skip


def prepare_data(data_dir: Path, clips_per_label: int, num_frames: int, seed: int, sessions: int = 4,
                 test_fraction: float = CoachConfig.test_fraction) -> DataPlan:  # fmt: skip
    """The data in ``data_dir``: a prepared dataset, or a QEVD download (``fine_grained_labels.json`` not written by
    the generator), is used as it is; otherwise the rendered coach dataset is generated there (kept when a
    complete one with these parameters is there already, checksums verified)."""
    plan = data_plan(data_dir)
    real_qevd = (data_dir / "fine_grained_labels.json").exists() and generated_info(data_dir) is None
    if plan.sessions is not None and not real_qevd:
        logger.info("[1/7] the rendered coach dataset in %s", data_dir)
        cfg = CoachConfig(seed=seed, clips_per_label=clips_per_label, clip_frames=num_frames, sessions=sessions,
                          test_fraction=test_fraction)  # fmt: skip
        make_coach_dataset(data_dir, cfg)
    if plan.sessions is not None and not (sessions and (data_dir / BENCHMARK / "feedbacks_long_range.json").exists()):
        return dataclasses.replace(plan, sessions=None)  # none asked for, or a QEVD download without them
    return plan
