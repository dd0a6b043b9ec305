"""The setup a training run and its preflight share: which components train, the model with its tokenizer /
processor, frame processing, data plugin and chat template, and the datasets. `gemma3.train.train` runs it with
weights; `gemma3.train.preflight` on the ``meta`` device to plan memory before a run."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from gemma3.data.dataset import SupervisedDataset
from gemma3.data.formats import MediaRoots, load_annotations
from gemma3.data.processing import resolve_processing
from gemma3.data.registry import resolve_datasets
from gemma3.data.template import get_template
from gemma3.model.builder import TRAINABLES_FILE, load_trainables
from gemma3.model.families import Family
from gemma3.train.arguments import DataArguments, ModelArguments, TrainingArguments
from gemma3.train.trainer import is_peft_model
from gemma3.utils.errors import UserError

logger = logging.getLogger(__name__)


def component_flags(
    model_args: ModelArguments, train_args: TrainingArguments, stage: str | None = None
) -> dict[str, bool]:
    """Which components train, from the stage (``stage`` overrides the arguments' own), the freeze flags and the
    per-component learning rates."""
    finetune = (stage or train_args.stage) == "finetune"

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
        raise UserError(
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


def setup(
    family: Family,
    model_args: ModelArguments,
    data_args: DataArguments,
    train_args: TrainingArguments,
    meta: bool = False,
):
    """The model, its tokenizer / processor, the frame processing, the data plugin and the chat template
    (``meta``: the model built on the meta device from configs, no weights; for `gemma3.train.preflight`)."""

    dtype = torch.bfloat16 if train_args.bf16 else torch.float32
    if meta:
        model, processor = family.load_on_meta(model_args, data_args)
    else:
        model, processor = family.load_for_training(model_args, data_args, dtype, quantization_config(model_args.bits))
    if is_peft_model(model):
        model = model.merge_and_unload()  # a finished adapter becomes the new base
    if model_args.pretrained_projector and not meta:
        loaded = load_trainables(model, Path(model_args.pretrained_projector) / TRAINABLES_FILE)
        logger.info("Started from %d pretrained projector tensors", len(loaded))
    processing = resolve_processing(
        None,
        family,
        model,
        processor,
        num_frames=model_args.num_frames,
        frame_sampling=data_args.frame_sampling,
        fps=data_args.fps,
        chat_template=data_args.template,
    )
    plugin = family.plugin(model, processor, processing, max_length=data_args.max_length)
    template = get_template(processing.chat_template) if processing.chat_template else family.template(model.config)
    return model, processor, processing, plugin, template


def build_datasets(data_args: DataArguments, plugin, tokenizer, template, with_sample_index: bool = False):
    """Training (and optional eval) datasets from annotation files or registered dataset names; with
    ``with_sample_index`` each example also carries its position (the trainer names a batch's samples by it)."""

    def make(spec: str):
        samples = []
        roots = MediaRoots(image=data_args.image_folder, video=data_args.video_folder)  # frames: --image_folder
        for ds in resolve_datasets(spec, media_root=roots):
            samples += load_annotations(ds.annotation_path, ds.media_root,
                                        max_missing_fraction=data_args.max_missing_fraction)  # fmt: skip
        return SupervisedDataset(
            samples,
            plugin,
            tokenizer,
            template,
            max_length=data_args.max_length,
            max_bad_fraction=data_args.max_bad_fraction,
            with_sample_index=with_sample_index,
        )

    train = make(data_args.data_path)
    evals = make(data_args.eval_data_path) if data_args.eval_data_path else None
    return train, evals
