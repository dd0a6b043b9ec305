"""Command-line arguments of the one training entry point (every stage, both model families).

Flag names follow the seed recipes (``--model_id --data_path --image_folder --use_lora --lora_r ...``); the rest
are standard `transformers.TrainingArguments`. A YAML file given with ``--config FILE`` supplies defaults that
command-line flags override.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser
from transformers import TrainingArguments as HFTrainingArguments

from gemma3.constants import DEFAULT_IMAGE_ENCODER, DEFAULT_LLM, DEFAULT_MAX_BAD_FRACTION
from gemma3.data.releases import DEFAULT_MAX_MISSING_FRACTION
from gemma3.model.families import KINDS
from gemma3.model.visual_tokens import VisualTokens
from gemma3.train.guards import NONFINITE_CHOICES

STAGES = ("pretrain", "finetune")


@dataclass
class ModelArguments(VisualTokens):
    """Which model, which encoders, how it adapts; the visual-token settings (``--num_frames``,
    ``--keyframe_chunk_size`` ...) are the inherited `VisualTokens` fields (``visual_tokens()`` gives the record)."""

    model_id: str = field(default=DEFAULT_LLM, metadata={"help": "LLM (custom) or VLM (native): HF id or folder"})
    model_family: str = field(
        default="auto", metadata={"help": "custom | native | auto (from the checkpoint; see gemma3.model.families)"}
    )
    image_encoder: str | None = field(default=DEFAULT_IMAGE_ENCODER, metadata={"help": "CLIP id/folder; 'none'"})
    video_encoder: str | None = field(default=None, metadata={"help": "official VideoMamba .pth (custom)"})
    use_video_encoder: bool = field(default=True)
    image_encoder_config: str | None = field(
        default=None, metadata={"help": "JSON/YAML file of CLIPVisionConfig fields: build CLIP without weights"}
    )
    video_encoder_config: str | None = field(default=None, metadata={"help": "JSON/YAML of VideoMambaConfig fields"})
    pretrained_projector: str | None = field(
        default=None, metadata={"help": "pretrain-stage output folder whose projectors to start from"}
    )
    use_lora: bool = field(default=False)
    use_dora: bool = field(default=False)
    lora_r: int = field(default=16)
    lora_alpha: int = field(default=32)
    lora_dropout: float = field(default=0.05)
    lora_target_modules: str = field(
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        metadata={"help": "comma list of module names, or 'all-linear'"},
    )
    lora_include_vision: bool = field(default=False, metadata={"help": "also adapt vision modules (native)"})
    bits: int = field(default=16, metadata={"help": "16 (no quantisation), 8 or 4 (QLoRA; needs CUDA)"})
    freeze_language_model: bool | None = field(default=None)
    freeze_vision_tower: bool | None = field(default=None)
    freeze_projector: bool | None = field(default=None)
    merge_lora: bool = field(default=False, metadata={"help": "also write a merged plain-HF export at the end"})
    require_kernels: bool = field(
        default=False, metadata={"help": "on CUDA, stop when the mamba_ssm / causal_conv1d kernels do not import"}
    )


@dataclass
class DataArguments:
    data_path: str = field(default="", metadata={"help": "annotation file(s), comma-separated, or dataset names"})
    image_folder: str | None = field(
        default=None, metadata={"help": "media root for images and frame sequences (default: video_folder)"}
    )
    video_folder: str | None = field(default=None, metadata={"help": "media root for videos (default: image_folder)"})
    eval_data_path: str | None = field(default=None)
    max_length: int = field(default=2048)
    frame_sampling: str = field(default="uniform", metadata={"help": "uniform | fps"})
    fps: float = field(default=1.0, metadata={"help": "frames per second for --frame_sampling fps"})
    max_bad_fraction: float = field(default=DEFAULT_MAX_BAD_FRACTION)
    max_missing_fraction: float = field(
        default=DEFAULT_MAX_MISSING_FRACTION,
        metadata={"help": "a FORMAT:ROOT[:SPLIT] release missing more of its clips than this is refused"},
    )
    template: str | None = field(default=None, metadata={"help": "chat template override (gemma, gemma4, plain)"})


@dataclass
class TrainingArguments(HFTrainingArguments):
    stage: str = field(default="finetune", metadata={"help": "pretrain (projector alignment) | finetune"})
    projector_lr: float | None = field(default=None, metadata={"help": "None: learning_rate; 0: frozen"})
    image_encoder_lr: float | None = field(default=None, metadata={"help": "CLIP / native vision; None or 0: frozen"})
    video_encoder_lr: float | None = field(default=None, metadata={"help": "VideoMamba; None or 0: frozen"})
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "fraction of steps for warm-up (seed-recipe flag; sets warmup_steps)"}
    )
    plot_loss: bool = field(default=True)
    on_nonfinite_loss: str = field(
        default="stop",
        metadata={"help": "a NaN / inf loss: stop (naming the step, the batch's samples and the last checkpoint) | "
                  "skip (the batch changes nothing; counted in the log)"},
    )  # fmt: skip
    feature_cache: str = field(
        default="memory",
        metadata={"help": "frozen encoders' outputs computed once per clip: memory | off | a folder (kept on disk)"},
    )
    output_dir: str = field(default="outputs/run")
    report_to: str | list[str] = field(default="none")

    def __post_init__(self) -> None:
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            self.warmup_steps = self.warmup_ratio
        super().__post_init__()


def _yaml_to_argv(path: str | Path) -> list[str]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of flag -> value")
    argv = []
    for key, value in data.items():
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        argv += [f"--{key}", str(value)]
    return argv


def expand_config(argv: list[str]) -> list[str]:
    """Replace ``--config FILE`` with the YAML's flags, placed first so command-line flags override them."""
    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a YAML file")
        argv = _yaml_to_argv(argv[i + 1]) + argv[:i] + argv[i + 2 :]
    return _switch_off(argv, "--deepspeed")


def _switch_off(argv: list[str], flag: str) -> list[str]:
    """Drop every ``flag VALUE`` pair when the last one says ``none`` (``--deepspeed none`` on the command line turns
    off a recipe's DeepSpeed config, which transformers would otherwise read as a file named "none")."""
    at = [i for i, a in enumerate(argv[:-1]) if a == flag]
    if not at or argv[at[-1] + 1].lower() not in ("none", ""):
        return argv
    drop = {j for i in at for j in (i, i + 1)}
    return [a for j, a in enumerate(argv) if j not in drop]


def argument_parser() -> HfArgumentParser:
    """The parser of the three argument dataclasses (also takes a dict: ``parse_dict``)."""
    return HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse ``--config FILE`` (YAML defaults) followed by command-line overrides."""
    argv = expand_config(sys.argv[1:] if argv is None else argv)
    model_args, data_args, train_args = argument_parser().parse_args_into_dataclasses(args=argv)
    return check_arguments(model_args, data_args, train_args)


def check_arguments(
    model_args: ModelArguments, data_args: DataArguments, train_args: TrainingArguments
) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Validate the arguments (clear errors) and normalise ``--image_encoder none``."""
    if train_args.stage not in STAGES:
        raise ValueError(f"--stage must be one of {STAGES}, got {train_args.stage!r}")
    if model_args.model_family not in KINDS:
        raise ValueError(f"--model_family must be one of {KINDS}, got {model_args.model_family!r}")
    model_args.visual_tokens().check()
    if train_args.on_nonfinite_loss not in NONFINITE_CHOICES:
        raise ValueError(
            f"--on_nonfinite_loss must be one of {NONFINITE_CHOICES}, got {train_args.on_nonfinite_loss!r}"
        )
    if model_args.bits not in (4, 8, 16):
        raise ValueError(f"--bits must be 4, 8 or 16, got {model_args.bits}")
    if not data_args.data_path:
        raise ValueError("--data_path is required")
    for flag, value in (
        ("--max_length", data_args.max_length),
        ("--per_device_train_batch_size", train_args.per_device_train_batch_size),
        ("--gradient_accumulation_steps", train_args.gradient_accumulation_steps),
        ("--lora_r", model_args.lora_r),
    ):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not 0 <= data_args.max_missing_fraction <= 1:
        raise ValueError(f"--max_missing_fraction must be in [0, 1], got {data_args.max_missing_fraction}")
    if not 0 <= data_args.max_bad_fraction <= 1:
        raise ValueError(f"--max_bad_fraction must be in [0, 1], got {data_args.max_bad_fraction}")
    if data_args.fps <= 0:
        raise ValueError(f"--fps must be > 0, got {data_args.fps}")
    if model_args.image_encoder and model_args.image_encoder.lower() == "none":
        model_args.image_encoder = None
    return model_args, data_args, train_args
