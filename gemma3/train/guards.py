"""What keeps a training run honest when things go wrong: one run per output folder, resuming only what was
started with the same arguments, and a stop (or a skip) on a loss that is not finite.

The resume rule (docs/troubleshooting.md): a run resumes a checkpoint only when every argument that decides what
is learned, and from what, is the one the checkpoint's run had -- the model, its encoders and adapters (LoRA rank,
targets), the visual tokens (frames, grids), the data (files, folders, max_length, sampling), the optimisation
(learning rates, batch sizes, accumulation, schedule, steps, epochs, seed, precision). Arguments that only change
how the run is watched or where it writes (`HARMLESS`: logging and saving cadence, reporting, data-loader workers,
the output and resume paths, DeepSpeed and process counts, which are resharded) may differ.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers.trainer_utils import get_last_checkpoint

from gemma3.utils.errors import UserError
from gemma3.utils.locks import exclusive_lock

logger = logging.getLogger(__name__)

HYPERPARAMETERS = "hyperparameters.json"
LOCK = ".train.lock"
NONFINITE_CHOICES = ("stop", "skip")

# Training arguments that change how a run is watched, saved or spread over processes, never what it learns.
HARMLESS = frozenset(
    {
        "output_dir", "resume_from_checkpoint", "run_name", "report_to", "project", "disable_tqdm", "log_level",
        "log_level_replica", "log_on_each_node", "logging_dir", "logging_first_step", "logging_nan_inf_filter",
        "logging_steps", "logging_strategy", "save_steps", "save_strategy", "save_total_limit", "save_only_model",
        "save_on_each_node", "eval_steps", "eval_strategy", "eval_delay", "per_device_eval_batch_size",
        "eval_accumulation_steps", "dataloader_num_workers", "dataloader_prefetch_factor", "dataloader_pin_memory",
        "dataloader_persistent_workers", "dataloader_multiprocessing_context", "skip_memory_metrics",
        "torch_empty_cache_steps", "deepspeed", "local_rank", "ddp_backend", "ddp_timeout", "ddp_bucket_cap_mb",
        "ddp_broadcast_buffers", "ddp_find_unused_parameters", "ddp_static_graph", "push_to_hub", "hub_model_id",
        "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push", "hub_revision", "trackio_space_id",
        "trackio_bucket_id", "trackio_static_space_id", "plot_loss", "on_nonfinite_loss", "gradient_checkpointing",
        "gradient_checkpointing_kwargs", "activation_checkpointing", "activation_checkpointing_kwargs",
        "feature_cache", "require_kernels",
    }
)  # fmt: skip


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or infinite; the message names the step, the batch's samples and the last checkpoint."""


@contextlib.contextmanager
def training_lock(output_dir: str | Path) -> Iterator[None]:
    """One training run per output folder: a second run on the same folder stops at once with a clear error. A
    folder made only to hold the lock is removed again when the run wrote nothing (it failed its checks)."""
    out = Path(output_dir)
    existed = out.exists()
    busy = f"{out}: another training run is writing this output folder; wait for it to end or use another --output_dir"
    try:
        with exclusive_lock(out / LOCK, busy):
            yield
    finally:
        if not existed and [p.name for p in out.iterdir()] == [LOCK]:
            shutil.rmtree(out, ignore_errors=True)


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and prefix.count(".") < 1:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def changed_arguments(saved: dict, now: dict) -> list[str]:
    """``section.key: saved X, now Y`` for every argument that differs and is not `HARMLESS`."""
    old, new = _flatten(saved), _flatten(now)
    out = []
    for key in sorted(old.keys() | new.keys()):
        if key.rpartition(".")[2] in HARMLESS or key.startswith("training._"):
            continue
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(f"{key}: saved {a!r}, now {b!r}")
    return out


def check_resume_arguments(checkpoint: str | Path, hparams: dict) -> None:
    """Refuse to resume ``checkpoint`` when its run's arguments (``hyperparameters.json`` beside it) differ from
    this run's in anything but `HARMLESS` ones; a run without the file (written before it existed) is resumed
    with a warning."""
    saved_file = Path(checkpoint).parent / HYPERPARAMETERS
    if not saved_file.is_file():
        logger.warning("%s: no %s beside the checkpoint; its arguments cannot be compared", checkpoint, HYPERPARAMETERS)
        return
    saved = json.loads(saved_file.read_text())
    now = json.loads(json.dumps(hparams, default=str))  # the same form the file was written in
    changed = changed_arguments(saved, now)
    if changed:
        shown = "\n  ".join(changed[:12]) + (f"\n  ... and {len(changed) - 12} more" if len(changed) > 12 else "")
        raise UserError(
            f"cannot resume {checkpoint}: it was trained with other arguments (the resume rule is in "
            f"docs/troubleshooting.md):\n  {shown}\nRerun with the saved arguments ({saved_file}), or train into "
            "a new --output_dir."
        )


def nonfinite_loss(loss: torch.Tensor, step: int, sample_ids: Callable[[], list[str]], output_dir: str | Path,
                   policy: str) -> bool:  # fmt: skip
    """Whether ``loss`` is NaN or infinite: with ``stop`` raise `NonFiniteLossError`, with ``skip`` log it and
    return True (the caller then makes the batch change nothing). ``sample_ids()`` names the batch's samples."""
    value = float(loss.detach().float().sum())
    if math.isfinite(value):
        return False
    ids = ", ".join(sample_ids()) or "unknown"
    if policy == "skip":
        logger.warning(
            "step %d: loss is %s on samples [%s]; batch skipped (--on_nonfinite_loss skip)", step, value, ids
        )
        return True
    kept = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
    raise NonFiniteLossError(
        f"step {step}: the loss is {value} on samples [{ids}]; training stopped. The last good checkpoint is "
        f"{kept or 'none (no checkpoint was saved yet)'}; resume from it with a lower learning rate, check those "
        "samples (`python dataset.py validate`), or pass --on_nonfinite_loss skip"
    )
