"""`transformers.Trainer` subclass: per-component learning rates, compact saves, atomic checkpoints, loss plot."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from gemma3.data.dataset import SAMPLE_INDEX
from gemma3.model.builder import TRAINABLES_FILE, load_trainables, save_trainables, saved_parameter_names
from gemma3.model.checkpoint_files import check_checkpoint_files
from gemma3.train.guards import nonfinite_loss

logger = logging.getLogger(__name__)

STAGING_DIR = ".checkpoint-staging"  # never matches `checkpoint-N`, so resume never picks a half-written one


@contextlib.contextmanager
def gathered(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Full tensors of ZeRO-3-partitioned ``params`` inside the block (a collective: every rank enters); a no-op
    for parameters that are not partitioned."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


def is_peft_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


class VideoGemmaTrainer(Trainer):
    """Trainer for both model families.

    Args:
        component_fn: maps a parameter name to its component (``language_model``, ``projector``,
            ``image_encoder``, ``video_encoder``).
        component_lrs: learning rate per component; missing or None -> ``args.learning_rate``.
        save_full_model: write full weights (full fine-tuning / native) instead of config + trainables.
        extra_save: callable(output_dir) writing what a checkpoint needs besides weights (config, tokenizer).
    """

    def __init__(
        self,
        *args,
        component_fn: Callable[[str], str],
        component_lrs: dict[str, float | None] | None = None,
        save_full_model: bool = False,
        extra_save: Callable[[str], None] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.component_fn = component_fn
        self.component_lrs = dict(component_lrs or {})
        self.save_full_model = save_full_model
        self.extra_save = extra_save
        self._staging_dir: str | None = None
        self.skipped_batches = 0

    # ---- optimizer: one param group per (component, decay) ----
    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
        for name, p in opt_model.named_parameters():
            if p.requires_grad:
                buckets.setdefault((self.component_fn(name), name in decay), []).append(p)
        groups = []
        for (component, is_decay), params in sorted(buckets.items()):
            lr = self.component_lrs.get(component)
            groups.append(
                {
                    "params": params,
                    "lr": self.args.learning_rate if lr is None else lr,
                    "weight_decay": self.args.weight_decay if is_decay else 0.0,
                    "name": f"{component}/{'decay' if is_decay else 'no_decay'}",
                }
            )
        if not groups:
            raise ValueError("No trainable parameters: every component is frozen (check the lr / freeze flags)")
        for g in groups:
            logger.info("param group %-28s lr=%.2e params=%d", g["name"], g["lr"], sum(p.numel() for p in g["params"]))
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def release(self) -> None:
        """Tear down the DeepSpeed engine once training is over. Its backward hooks and the model reference each
        other through autograd nodes the garbage collector cannot see, so without this the whole model (and
        its optimizer) stays in memory after the trainer is dropped: several GB per stage when the pipeline
        runs its stages in one process. The model stays usable, except under ZeRO-3, where its parameters
        stay partitioned."""
        engine = self.model_wrapped
        if self.is_deepspeed_enabled and engine is not self.model and hasattr(engine, "destroy"):
            engine.destroy()

    # ---- a loss that is not finite: stop with the batch's samples, or skip the batch ----
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        index = inputs.pop(SAMPLE_INDEX, None)
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        loss = result[0] if return_outputs else result
        samples = getattr(self.train_dataset if model.training else self.eval_dataset, "samples", None)

        def batch_ids() -> list[str]:  # looked up only when the loss is not finite
            return [str(samples[i].id) for i in index.tolist()] if index is not None and samples is not None else []

        policy = getattr(self.args, "on_nonfinite_loss", "stop")
        if nonfinite_loss(loss, self.state.global_step + 1, batch_ids, self.args.output_dir, policy):
            # zero gradients for every trainable tensor: the batch changes nothing (NaN * 0 would stay NaN)
            zero = sum(p.reshape(-1)[:1].sum() * 0.0 for p in model.parameters() if p.requires_grad)
            loss = torch.zeros((), device=loss.device, dtype=loss.dtype) + zero
            self.skipped_batches += 1
            return (loss, result[1]) if return_outputs else loss
        return result

    # ---- saving ----
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Called on every rank. Under ZeRO-3 the tensors written are gathered first (a collective), and only the
        writing rank writes; a full-model save uses the consolidated ``state_dict`` the Trainer gathered."""
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        full = self.save_full_model and not is_peft_model(model)
        params = dict(model.named_parameters())
        with gathered([params[n] for n in saved_parameter_names(model)] if not full else []):
            if not self.args.should_save:
                return
            os.makedirs(output_dir, exist_ok=True)
            if is_peft_model(model):
                model.save_pretrained(output_dir)  # adapter only
                save_trainables(model, output_dir)
                model.get_base_model().config.save_pretrained(output_dir)
            elif full:
                model.save_pretrained(output_dir, state_dict=state_dict)
            else:
                save_trainables(model, output_dir)
                model.config.save_pretrained(output_dir)
        if self.extra_save is not None:
            self.extra_save(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _get_output_dir(self, trial) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: torch.nn.Module, trial) -> None:
        """Write the checkpoint into a staging folder, then rename it into place (atomic on one filesystem)."""
        run_dir = super()._get_output_dir(trial)
        staging = os.path.join(run_dir, STAGING_DIR)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = os.path.join(run_dir, name)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit, use_mtime=False)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        model = self.model if model is None else model
        ckpt = Path(resume_from_checkpoint)
        check_checkpoint_files(ckpt)  # a truncated file is refused before any tensor is loaded
        has_weights = any(ckpt.glob("adapter_model.*")) or any(ckpt.glob("model*.safetensors"))
        if has_weights:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        if (ckpt / TRAINABLES_FILE).exists():
            load_trainables(model, ckpt / TRAINABLES_FILE)
        elif not has_weights:
            raise FileNotFoundError(f"{ckpt}: no weights, adapter or {TRAINABLES_FILE} to resume from")


class LossPlotCallback(TrainerCallback):
    """Writes ``loss.png`` (and ``log_history.json``) into the output folder when training ends."""

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "log_history.json").write_text(json.dumps(state.log_history, indent=1))
        plot_loss(state.log_history, out / "loss.png")


def plot_loss(log_history: list[dict], path: str | Path) -> Path | None:
    """Loss (and learning rate) against step from a Trainer log history; None when nothing was logged."""
    points = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([s for s, _ in points], [v for _, v in points], marker="o", ms=3, label="train loss")
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], marker="s", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
