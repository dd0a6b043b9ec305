"""One training entry point for every stage and both model families.

    python -m gemma3.train.train --stage finetune --model_family custom --model_id google/gemma-3n-E2B-it \
        --data_path data/train.json --video_folder data --use_lora True ...
    deepspeed gemma3/train/train.py --deepspeed scripts/zero2.json ...     (multi-GPU / multi-node)

Stages: ``pretrain`` aligns the projectors (encoders and LLM frozen); ``finetune`` trains LoRA/DoRA adapters (or
the full LLM) plus the projectors. Freeze flags and per-component learning rates (0 = frozen) refine both.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import yaml
from transformers import AutoConfig, set_seed
from transformers.trainer_utils import get_last_checkpoint

import gemma3.model  # noqa: F401  (registers video_gemma with the Auto classes)
from gemma3.train.arguments import DataArguments, ModelArguments, TrainingArguments, expand_config, parse_args
from gemma3.train.trainer import LossPlotCallback, VideoGemmaTrainer, is_peft_model

logger = logging.getLogger("gemma3.train")


def ensure_distributed_env(argv: list[str]) -> None:
    """DeepSpeed needs a process group even for one process: fill RANK/WORLD_SIZE/... when no launcher did."""
    i = len(argv) - 1 - argv[::-1].index("--deepspeed") if "--deepspeed" in argv else -1  # the last one wins
    if i < 0 or i + 1 >= len(argv) or argv[i + 1] in ("", "None", "none") or "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )


def resolve_family(model_args: ModelArguments) -> str:
    """``custom`` for text backbones and saved custom models; ``native`` for multimodal Gemma checkpoints."""
    if model_args.model_family != "auto":
        return model_args.model_family
    model_type = AutoConfig.from_pretrained(model_args.model_id).model_type
    if model_type == "video_gemma" or model_type.endswith("_text"):
        return "custom"
    return "native"


def _load_mapping(path: str | None) -> dict | None:
    return None if not path else yaml.safe_load(Path(path).read_text())


def component_flags(model_args: ModelArguments, train_args: TrainingArguments) -> dict[str, bool]:
    """Which components train, from the stage, the freeze flags and the per-component learning rates."""
    finetune = train_args.stage == "finetune"

    def frozen(flag: bool | None, default: bool) -> bool:
        return default if flag is None else flag

    return {
        "language_model": not frozen(model_args.freeze_language_model, not finetune),
        "projector": train_args.projector_lr != 0 and not frozen(model_args.freeze_projector, False),
        "image_encoder": bool(train_args.image_encoder_lr) and not frozen(model_args.freeze_vision_tower, False),
        "video_encoder": bool(train_args.video_encoder_lr) and not frozen(model_args.freeze_vision_tower, False),
        "audio": False,  # the native models' audio towers: never trained here
    }


def quantization_config(bits: int):
    """BitsAndBytesConfig for 4/8-bit loading; a clear error without CUDA."""
    if bits == 16:
        return None
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"--bits {bits} (QLoRA) needs a CUDA GPU: bitsandbytes' {bits}-bit kernels give unreliable gradients on "
            "CPU. Use --bits 16 here."
        )
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def language_lora_targets(model: torch.nn.Module, targets: str, prefix: str = "language_model.") -> list[str]:
    """Full module names of the custom model's LLM linear layers to adapt: a name list, or ``all-linear``
    (which skips the output head and Gemma-3n's altup / laurel / per-layer-input modules)."""
    from gemma3.model.lora import lora_target_names

    try:
        return lora_target_names(model, targets, lambda name: name.startswith(prefix))
    except ValueError as err:
        raise ValueError(f"LoRA targets {targets!r} match no linear layer of the language model") from err


def setup_custom(model_args: ModelArguments, data_args: DataArguments, train_args: TrainingArguments):
    """Custom model, tokenizer, data plugin, template and component function."""
    from conversation import get_template, template_for_config
    from dataset import CustomModelPlugin
    from gemma3.model.builder import TRAINABLES_FILE, build_model, load_model, load_trainables
    from gemma3.model.modeling import component_of

    dtype = torch.bfloat16 if train_args.bf16 else torch.float32
    model_type = AutoConfig.from_pretrained(model_args.model_id).model_type
    if model_type == "video_gemma":
        model, tokenizer = load_model(model_args.model_id, dtype=dtype)
        if is_peft_model(model):
            model = model.merge_and_unload()  # a finished adapter becomes the new base
    else:
        model, tokenizer = build_model(
            llm=model_args.model_id,
            image_encoder=model_args.image_encoder,
            video_encoder=model_args.video_encoder,
            video_size=model_args.video_size,
            num_frames=data_args.num_frames,
            keyframe_chunk_size=model_args.keyframe_chunk_size,
            keyframes_per_chunk=model_args.keyframes_per_chunk,
            image_output_grid=model_args.image_output_grid,
            video_output_grid=model_args.video_output_grid,
            use_video_encoder=model_args.use_video_encoder,
            dtype=dtype,
            image_encoder_config=_load_mapping(model_args.image_encoder_config),
            video_encoder_config=_load_mapping(model_args.video_encoder_config),
            quantization_config=quantization_config(model_args.bits),
        )
    if model_args.pretrained_projector:
        loaded = load_trainables(model, Path(model_args.pretrained_projector) / TRAINABLES_FILE)
        logger.info("Started from %d pretrained projector tensors", len(loaded))
    template = get_template(data_args.template) if data_args.template else template_for_config(model.config)
    plugin = CustomModelPlugin(model.config, num_frames=data_args.num_frames, sampling=data_args.frame_sampling)
    return model, tokenizer, plugin, template, component_of


def setup_native(model_args: ModelArguments, data_args: DataArguments, train_args: TrainingArguments):
    """Native Gemma VLM, its processor, the processor-based data plugin and component function."""
    from gemma3.model import native

    dtype = torch.bfloat16 if train_args.bf16 else torch.float32
    model, processor = native.load_native_model(
        model_args.model_id, dtype=dtype, quantization_config=quantization_config(model_args.bits)
    )
    if is_peft_model(model):
        model = model.merge_and_unload()  # a finished adapter becomes the new base
    family = native.native_family_for_config(model.config)
    plugin = native.NativeVLMPlugin(
        processor,
        family,
        num_frames=data_args.num_frames,
        max_length=data_args.max_length,
        sampling=data_args.frame_sampling,
    )
    return model, processor, plugin, None, native.native_component_fn(family)


def apply_trainable(
    model: torch.nn.Module,
    flags: dict[str, bool],
    component_fn: Callable[[str], str],
    model_args: ModelArguments,
    family: str,
) -> torch.nn.Module:
    """Freeze/unfreeze by component, then wrap the LLM with LoRA/DoRA when asked."""
    for name, p in model.named_parameters():
        p.requires_grad_(flags[component_fn(name)])
    if model_args.use_lora and flags["language_model"]:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if model_args.bits in (4, 8):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if family == "native":
            from gemma3.model.native import native_lora_targets

            names = native_lora_targets(model, model_args.lora_target_modules, model_args.lora_include_vision)
        else:
            names = language_lora_targets(model, model_args.lora_target_modules)
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


def build_datasets(data_args: DataArguments, plugin, tokenizer, template):
    """Training (and optional eval) datasets from annotation files or registered dataset names."""
    from dataset import SupervisedDataset, load_annotations
    from gemma3.config.dataset_config import resolve_datasets

    def make(spec: str):
        samples = []
        for ds in resolve_datasets(spec, media_root=data_args.video_folder or data_args.image_folder):
            samples += load_annotations(ds.annotation_path, media_root=ds.media_root)
        return SupervisedDataset(
            samples,
            plugin,
            tokenizer,
            template,
            max_length=data_args.max_length,
            max_bad_fraction=data_args.max_bad_fraction,
        )

    train = make(data_args.data_path)
    evals = make(data_args.eval_data_path) if data_args.eval_data_path else None
    return train, evals


def resolve_resume(train_args: TrainingArguments) -> str | None:
    """``auto``: the newest complete checkpoint in output_dir, or None; otherwise the given path."""
    resume = train_args.resume_from_checkpoint
    if resume in (None, "", "false", "False"):
        return None
    if resume == "auto":
        last = get_last_checkpoint(train_args.output_dir) if os.path.isdir(train_args.output_dir) else None
        logger.info("Resume: %s", last or "no checkpoint yet, starting fresh")
        return last
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    return resume


def main(argv: list[str] | None = None) -> dict:
    """Train; returns a summary (output folder, steps, losses) and the trained model."""
    argv = expand_config(sys.argv[1:] if argv is None else argv)
    ensure_distributed_env(argv)
    model_args, data_args, train_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_seed(train_args.seed)
    family = resolve_family(model_args)
    setup = setup_custom if family == "custom" else setup_native
    model, tokenizer, plugin, template, component_fn = setup(model_args, data_args, train_args)
    flags = component_flags(model_args, train_args)
    model = apply_trainable(model, flags, component_fn, model_args, family)
    if train_args.gradient_checkpointing and not train_args.gradient_checkpointing_kwargs:
        train_args.gradient_checkpointing_kwargs = {"use_reentrant": False}  # works with frozen inputs
    train_args.remove_unused_columns = False
    train_ds, eval_ds = build_datasets(data_args, plugin, tokenizer, template)

    out = Path(train_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    hparams = {
        "family": family,
        "model": asdict(model_args),
        "data": asdict(data_args),
        "components": flags,
        "training": json.loads(train_args.to_json_string()),
    }
    (out / "hyperparameters.json").write_text(json.dumps(hparams, indent=2, default=str))

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
        data_collator=lambda feats: plugin.collate(feats, padding_side="right"),
        component_fn=component_fn,
        component_lrs=lrs,
        save_full_model=(family == "native" and not model_args.use_lora)
        or (flags["language_model"] and not model_args.use_lora),
        extra_save=tokenizer.save_pretrained,
        callbacks=[LossPlotCallback()] if train_args.plot_loss else None,
    )
    result = trainer.train(resume_from_checkpoint=resolve_resume(train_args))
    trainer.save_model(train_args.output_dir)
    trainer.save_state()
    stats = getattr(train_ds, "stats", None)
    if stats is not None:
        logger.info("Data: %s", stats)
    if model_args.merge_lora and is_peft_model(trainer.model) and trainer.is_world_process_zero():
        # Rebuilt from the saved output (which this also checks), so the trained model is left as it is.
        merged_dir = out / "merged"
        if family == "native":
            from gemma3.model.native import load_native_model

            merged = load_native_model(out)[0].merge_and_unload()
        else:
            from gemma3.model.builder import load_model

            merged, _ = load_model(out, merge_lora=True)
        merged.save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
        logger.info("Merged model written to %s", merged_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "output_dir": str(out),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "losses": losses,
        "model": trainer.accelerator.unwrap_model(trainer.model),
        "data_stats": str(stats) if stats is not None else None,
    }


if __name__ == "__main__":
    main()
