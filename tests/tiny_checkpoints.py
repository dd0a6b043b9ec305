"""Tiny real checkpoints on disk, for tests of the loading, training and inference code paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from media_utils import write_json, write_video
from tiny_models import tiny_text_config
from transformers import AutoTokenizer

from gemma3.model import backbones
from gemma3.model.builder import build_model
from gemma3.model.visual_tokens import VisualTokens
from gemma3.utils.tokenizer_files import save_tokenizer

CLIP_CFG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}
VIDEOMAMBA_CFG = {"embed_dim": 32, "depth": 2, "patch_size": 8, "d_state": 4, "out_grid": 2}
CLASSES = ["moving left", "moving right"]


def make_llm(root: Path, gemma270m_dir: Path, family: str = "gemma3", name: str | None = None, **overrides) -> Path:
    """A 2-layer Gemma text model with the real Gemma 3 tokenizer (262k vocabulary), saved as an HF folder;
    ``overrides`` change its config (``name`` then names the folder)."""
    out = root / (name or f"tiny-{family}")
    if out.exists():
        return out
    tok = AutoTokenizer.from_pretrained(gemma270m_dir)
    cfg = tiny_text_config(family, vocab_size=len(tok), hidden=32)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    lm = backbones.build_text_backbone(cfg)
    lm.save_pretrained(out)
    save_tokenizer(tok, out)
    return out


def make_encoder_configs(root: Path) -> tuple[Path, Path]:
    clip, vm = root / "clip.json", root / "videomamba.json"
    clip.write_text(json.dumps(CLIP_CFG))
    vm.write_text(json.dumps(VIDEOMAMBA_CFG))
    return clip, vm


def make_dataset(root: Path, n: int = 4, frames: int = 8, size: int = 32) -> Path:
    """n clips of a bright square moving left or right, LLaVA-style annotations."""
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        label = i % 2
        clip = np.zeros((frames, size, size, 3), np.uint8) + rng.integers(0, 60, 3).astype(np.uint8)
        for t in range(frames):
            x = 4 + t * 2 if label else size - 12 - t * 2
            clip[t, 12:20, x : x + 8] = 230
        write_video(root / "videos" / f"clip{i}.mp4", clip)
        recs.append(
            {
                "id": f"clip{i}",
                "video": f"videos/clip{i}.mp4",
                "conversations": [
                    {"from": "human", "value": "<video>\nWhat action is shown?"},
                    {"from": "gpt", "value": CLASSES[label]},
                ],
            }
        )
    return write_json(root / "train.json", recs)


def make_custom_assets(root: Path, gemma270m_dir: Path, n: int = 4) -> tuple[Path, Path, Path, Path]:
    """(tiny LLM folder, CLIP config, VideoMamba config, annotation file of ``n`` clips) under ``root``."""
    llm = make_llm(root, gemma270m_dir)
    clip, vm = make_encoder_configs(root)
    return llm, clip, vm, make_dataset(root, n=n)


def save_custom_model(out: Path, llm: Path, clip_cfg: Path, vm_cfg: Path) -> Path:
    """A tiny custom model built from the assets (random encoders and projectors, 4 frames) and saved as a full
    model folder with its tokenizer: what inference, export and evaluation load."""
    model, tok = build_model(
        llm=llm, image_encoder=None, image_encoder_config=json.loads(clip_cfg.read_text()),
        visual=VisualTokens(num_frames=4, keyframe_chunk_size=2, keyframes_per_chunk=1, image_output_grid=2,
                            video_output_grid=2, video_size="tiny"),
        video_encoder_config=json.loads(vm_cfg.read_text()),
    )  # fmt: skip
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def custom_train_args(llm: Path, clip_cfg: Path, vm_cfg: Path, data: Path, out: Path, **extra) -> list[str]:
    """CLI flags of gemma3/train/train.py for the tiny custom model (as scripts/finetune_qevd.sh passes them)."""
    args = {
        "model_family": "custom",
        "model_id": str(llm),
        "image_encoder": "none",
        "image_encoder_config": str(clip_cfg),
        "video_encoder_config": str(vm_cfg),
        "video_size": "tiny",
        "num_frames": 4,
        "keyframe_chunk_size": 2,
        "keyframes_per_chunk": 1,
        "image_output_grid": 2,
        "video_output_grid": 2,
        "data_path": str(data),
        "video_folder": str(data.parent),
        "output_dir": str(out),
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "max_steps": 3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "seed": 0,
        "dataloader_num_workers": 0,
        "warmup_ratio": 0.0,
        "lr_scheduler_type": "cosine",
        "max_length": 256,
    }
    args.update(extra)
    argv = []
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    return argv


def train_argv(assets: tuple[Path, Path, Path, Path], out: Path, **extra) -> list[str]:
    """`custom_train_args` for the assets `make_custom_assets` returned."""
    llm, clip, vm, data = assets
    return custom_train_args(llm, clip, vm, data, out, **extra)


def clean(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
