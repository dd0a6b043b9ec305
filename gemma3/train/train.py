"""One training entry point for every stage and both model families.

    python -m gemma3.train.train --stage finetune --model_family custom --model_id google/gemma-3n-E2B-it \
        --data_path data/train.json --video_folder data --use_lora True ...
    deepspeed --module gemma3.train.train --deepspeed scripts/zero2.json ...     (multi-GPU / multi-node)

`train` is the step as a Python function (typed argument dataclasses); `main` parses a command line into them.
The model family (`gemma3.model.families`) decides how the model is loaded, which data plugin and chat template it uses,
how its parameters split into components, and which layers LoRA adapts.

Stages: ``pretrain`` aligns the projectors (encoders and LLM frozen); ``finetune`` trains LoRA/DoRA adapters (or
the full LLM) plus the projectors. Freeze flags and per-component learning rates (0 = frozen) refine both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

import gemma3.model  # noqa: F401  (registers video_gemma with the Auto classes)
from gemma3.data.dataset import with_sample_index
from gemma3.model.checkpoint_files import check_checkpoint_files
from gemma3.model.families import Family, family_for_checkpoint
from gemma3.model.feature_cache import FeatureCache
from gemma3.model.selective_scan import check_kernels
from gemma3.train.arguments import DataArguments, ModelArguments, TrainingArguments, expand_config, parse_args
from gemma3.train.guards import HYPERPARAMETERS, check_resume_arguments, training_lock
from gemma3.train.preflight import check_fits, check_world_size
from gemma3.train.setup import build_datasets, component_flags, setup
from gemma3.train.trainer import LossPlotCallback, VideoGemmaTrainer, is_peft_model
from gemma3.utils.errors import CheckpointError, run_main, writing
from gemma3.utils.tokenizer_files import save_tokenizer

logger = logging.getLogger("gemma3.train")


def deepspeed_flag(argv: list[str]) -> str | None:
    """The value of the last ``--deepspeed`` flag of a command line (None when absent)."""
    i = len(argv) - 1 - argv[::-1].index("--deepspeed") if "--deepspeed" in argv else -1
    return argv[i + 1] if 0 <= i < len(argv) - 1 else None


def ensure_distributed_env(deepspeed: str | None) -> None:
    """DeepSpeed needs a process group even for one process: fill RANK/WORLD_SIZE/... when no launcher did."""
    if deepspeed in (None, "", "None", "none") or "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )


def init_distributed(train_args: TrainingArguments) -> None:
    """Start DeepSpeed's process group before the model is built: under ZeRO-3 the weights are partitioned while
    they load (``zero.Init``), which needs the real world size (without this, under ``use_cpu`` it sees 1 rank and
    rejects the batch numbers)."""
    if train_args.deepspeed in (None, "", "None", "none"):
        return
    import deepspeed

    if deepspeed.comm.is_initialized():
        return

    deepspeed.init_distributed(dist_backend="gloo" if train_args.use_cpu or not torch.cuda.is_available() else "nccl")


def attach_feature_cache(model, flags: dict[str, bool], setting: str) -> None:
    """Give the custom model a frozen-encoder feature cache when this stage trains neither encoder (``setting``:
    ``memory``, ``off`` or a folder to keep it on disk across runs and stages)."""
    if setting == "off" or flags["image_encoder"] or flags["video_encoder"] or not hasattr(model, "feature_cache"):
        return

    model.feature_cache = FeatureCache(None if setting == "memory" else setting)
    logger.info("Encoders frozen: their outputs are computed once per clip and reused (feature cache: %s)", setting)


def apply_trainable(
    model: torch.nn.Module, flags: dict[str, bool], family: Family, model_args: ModelArguments
) -> torch.nn.Module:
    """Freeze/unfreeze by component, then wrap the LLM with LoRA/DoRA when asked (targets from the family)."""
    component_fn = family.component_fn()
    for name, p in model.named_parameters():
        p.requires_grad_(flags[component_fn(name)])
    if model_args.use_lora and flags["language_model"]:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if model_args.bits in (4, 8):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        names = family.lora_targets(model, model_args.lora_target_modules, model_args.lora_include_vision)
        lora = LoraConfig(
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=names,
            use_dora=model_args.use_dora,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        # PEFT froze everything but the adapters: re-enable the other components that train.
        for name, p in model.named_parameters():
            if "lora_" not in name and flags[component_fn(name)] and component_fn(name) != "language_model":
                p.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("Trainable parameters: %d / %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    return model


def resolve_resume(train_args: TrainingArguments) -> str | None:
    """``auto``: the newest complete checkpoint in output_dir, or None; otherwise the given path."""
    resume = train_args.resume_from_checkpoint
    if resume in (None, "", "false", "False"):
        return None
    if resume == "auto":
        return newest_whole_checkpoint(train_args.output_dir)
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    check_checkpoint_files(resume)
    return resume


def newest_whole_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint in ``output_dir`` whose files are whole; a damaged newer one is named and passed over
    (its steps are trained again), so a copy that lost its last checkpoint still resumes."""
    while os.path.isdir(output_dir) and (last := get_last_checkpoint(output_dir)):
        try:
            check_checkpoint_files(last)
        except CheckpointError as err:
            aside = Path(f"{last}.damaged")
            logger.warning("Resume: %s; moved aside to %s, resuming the one before it", err, aside)
            os.replace(last, aside)  # get_last_checkpoint only looks at checkpoint-N
            continue
        logger.info("Resume: %s", last)
        return last
    logger.info("Resume: no checkpoint yet, starting fresh")
    return None


def zero_checkpoint_world_size(checkpoint: str | Path) -> int | None:
    """How many ranks wrote a DeepSpeed ZeRO checkpoint (its optimizer-state shards); None when it has none."""
    tag = Path(checkpoint) / "latest"
    if not tag.is_file():
        return None
    return len(list((Path(checkpoint) / tag.read_text().strip()).glob("*zero_pp_rank_*_optim_states.pt"))) or None


def reshard(checkpoint: str | Path, train_args: TrainingArguments) -> None:
    """Resume a ZeRO checkpoint written by another number of ranks: convert it once to DeepSpeed's universal format
    (``deepspeed.checkpoint.ds_to_universal``, next to the original) and load that. Runs before the model is built;
    a checkpoint that cannot be converted stops the run with one clear error."""
    saved, world = zero_checkpoint_world_size(checkpoint), train_args.world_size
    if saved is None or saved == world:
        return
    ckpt = Path(checkpoint)
    if train_args.deepspeed in (None, "", "None", "none"):
        raise ValueError(f"{ckpt} was written by DeepSpeed ZeRO on {saved} ranks; resume it with --deepspeed")
    tag = (ckpt / "latest").read_text().strip()
    if not (ckpt / "latest_universal").is_file():
        if train_args.should_save:
            cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt / tag),
                   "--output_folder", str(ckpt / f"{tag}_universal"), "--num_extract_workers", "1",
                   "--num_merge_workers", "1", "--inject_missing_state"]  # fmt: skip
            logger.warning("%s was written by %d ranks, this run has %d: converting it to a universal checkpoint",
                           ckpt, saved, world)  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not (ckpt / "latest_universal").is_file():
                raise CheckpointError(
                    f"{ckpt}: written by {saved} ranks, this run has {world}, and converting it to DeepSpeed's "
                    f"universal format failed:\n{proc.stderr[-2000:]}\nResume with {saved} ranks instead."
                )
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    train_args.hf_deepspeed_config.config.setdefault("checkpoint", {})["load_universal"] = True
    logger.info("Resuming %s (%d ranks) on %d ranks from its universal checkpoint", ckpt, saved, world)


FINAL_STAGING = ".final-staging"


def save_final(trainer: VideoGemmaTrainer, out: Path) -> None:
    """Write the final model into a staging folder, then move its files into ``out``: a failed write (a full disk)
    leaves the folder as it was, never half a model. Renames on one filesystem need no space, so they do not fail
    the same way."""
    staging = out / FINAL_STAGING
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    try:
        trainer.save_model(str(staging))
    except OSError as err:
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
        message = f"saving the final model into {out} failed ({err.strerror or err}); {out} was left as it was"
        raise OSError(err.errno, message, str(out)) from err
    if trainer.is_world_process_zero():
        for item in staging.iterdir():
            target = out / item.name
            if target.is_dir() and not item.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        staging.rmdir()


def train(model_args: ModelArguments, data_args: DataArguments, train_args: TrainingArguments) -> dict:
    """Train one stage; returns a summary (output folder, steps, losses, data stats) and the trained model. One
    run per output folder: a second one on the same folder is refused (rank 0 holds the lock)."""
    first = train_args.process_index == 0
    with training_lock(train_args.output_dir) if first else contextlib.nullcontext():
        return _train(model_args, data_args, train_args)


def _train(model_args: ModelArguments, data_args: DataArguments, train_args: TrainingArguments) -> dict:
    set_seed(train_args.seed)

    check_kernels(require=model_args.require_kernels)  # loud on CUDA without the VideoMamba kernels
    check_world_size(train_args, train_args.world_size)  # before anything heavy
    if torch.cuda.is_available() and not train_args.use_cpu and model_args.bits == 16:
        check_fits(model_args, data_args, train_args, torch.cuda.mem_get_info()[1])
    init_distributed(train_args)
    resume = resolve_resume(train_args)
    if resume:
        reshard(resume, train_args)
    family = family_for_checkpoint(model_args.model_id, model_args.model_family)
    logger.info("Model family: %s (%s)", family.name, family.kind)
    model, processor, processing, plugin, template = setup(family, model_args, data_args, train_args)
    flags = component_flags(model_args, train_args)
    attach_feature_cache(model, flags, train_args.feature_cache)
    model = apply_trainable(model, flags, family, model_args)
    if train_args.gradient_checkpointing and not train_args.gradient_checkpointing_kwargs:
        train_args.gradient_checkpointing_kwargs = {"use_reentrant": False}  # works with frozen inputs
    train_args.remove_unused_columns = False
    train_ds, eval_ds = build_datasets(data_args, plugin, processor, template, with_sample_index=True)

    out = Path(train_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    hparams = {
        "family": family.name,
        "model": asdict(model_args),
        "data": asdict(data_args),
        "processing": processing.to_dict(),
        "components": flags,
        "training": json.loads(train_args.to_json_string()),
    }
    if resume:
        check_resume_arguments(resume, hparams)
    if train_args.should_save:
        (out / HYPERPARAMETERS).write_text(json.dumps(hparams, indent=2, default=str))

    def save_processing(folder: str) -> None:
        save_tokenizer(processor, folder)
        processing.save_pretrained(folder)

    lrs = {
        "language_model": train_args.learning_rate,
        "projector": train_args.projector_lr,
        "image_encoder": train_args.image_encoder_lr,
        "video_encoder": train_args.video_encoder_lr,
    }
    trainer = VideoGemmaTrainer(
        model=model,
        args=train_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=with_sample_index(lambda feats: plugin.collate(feats, padding_side="right")),
        component_fn=family.component_fn(),
        component_lrs=lrs,
        save_full_model=family.saves_full_model(flags["language_model"], model_args.use_lora),
        extra_save=save_processing,
        callbacks=[LossPlotCallback()] if train_args.plot_loss else None,
    )
    result = trainer.train(resume_from_checkpoint=resume)
    if trainer.skipped_batches:
        logger.warning("%d batches skipped for a loss that was not finite", trainer.skipped_batches)
    save_final(trainer, out)
    trainer.save_state()
    stats = getattr(train_ds, "stats", None)
    if stats is not None:
        logger.info("Data: %s", stats)
    cache = getattr(trainer.accelerator.unwrap_model(trainer.model), "feature_cache", None)
    if cache is not None:
        logger.info("Feature cache: %s", cache.stats())
    if model_args.merge_lora and is_peft_model(trainer.model) and trainer.is_world_process_zero():
        # Rebuilt from the saved output (which this also checks), so the trained model is left as it is.
        merged_dir, staging = out / "merged", out / ".merged-staging"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            with writing(merged_dir):  # a full disk names the merged model; an earlier one stays whole
                family.load_merged(out).save_pretrained(staging)
                save_processing(str(staging))
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(merged_dir, ignore_errors=True)
        os.replace(staging, merged_dir)
        logger.info("Merged model written to %s", merged_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {
        "output_dir": str(out),
        "family": family.name,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "train_runtime": result.metrics.get("train_runtime"),
        "losses": losses,
        "model": trainer.accelerator.unwrap_model(trainer.model),
        "optimizer_groups": [
            {"name": g.get("name"), "lr": g["initial_lr"] if "initial_lr" in g else g["lr"]}
            for g in trainer.optimizer.param_groups
        ]
        if trainer.optimizer is not None
        else [],
        "data_stats": str(stats) if stats is not None else None,
        "skipped_samples": stats.by_kind() if stats is not None else {},
        "skipped_batches": trainer.skipped_batches,
    }
    trainer.release()  # frees the DeepSpeed engine (and with it the model, once the caller drops the summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Parse a command line (``--config FILE`` YAML defaults, then flags) and train."""
    argv = expand_config(sys.argv[1:] if argv is None else argv)
    ensure_distributed_env(deepspeed_flag(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return train(*parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_main(main))
