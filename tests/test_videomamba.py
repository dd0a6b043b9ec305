"""VideoMamba: output shape, official checkpoint layout (strict), adaptations, checkpointing."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_videomamba_config

from gemma3.model.configuration import VideoMambaConfig
from gemma3.model.videomamba import VideoMambaModel, load_videomamba_checkpoint

OFFICIAL_LAYER_KEYS = [
    "mixer.in_proj.weight",
    "mixer.conv1d.weight",
    "mixer.conv1d.bias",
    "mixer.x_proj.weight",
    "mixer.dt_proj.weight",
    "mixer.dt_proj.bias",
    "mixer.A_log",
    "mixer.D",
    "mixer.out_proj.weight",
    "mixer.A_b_log",
    "mixer.conv1d_b.weight",
    "mixer.conv1d_b.bias",
    "mixer.x_proj_b.weight",
    "mixer.dt_proj_b.weight",
    "mixer.dt_proj_b.bias",
    "mixer.D_b",
    "norm.weight",
]


def _official_state(cfg: VideoMambaConfig, frames: int, patch_2d: bool = False, grid: int | None = None) -> dict:
    """A state dict built key by key in the official OpenGVLab layout (with a classification head)."""
    c, di = cfg.embed_dim, cfg.expand * cfg.embed_dim
    r = cfg.dt_rank or -(-c // 16)
    grid = grid or cfg.grid_size
    p = cfg.patch_size
    sd = {
        "patch_embed.proj.weight": torch.randn(c, 3, p, p) if patch_2d else torch.randn(c, 3, 1, p, p),
        "patch_embed.proj.bias": torch.randn(c),
        "cls_token": torch.randn(1, 1, c),
        "pos_embed": torch.randn(1, grid * grid + 1, c),
        "temporal_pos_embedding": torch.randn(1, frames, c),
        "norm_f.weight": torch.randn(c),
        "head.weight": torch.randn(400, c),
        "head.bias": torch.randn(400),
    }
    shapes = {
        "mixer.in_proj.weight": (2 * di, c),
        "mixer.conv1d.weight": (di, 1, cfg.d_conv),
        "mixer.conv1d.bias": (di,),
        "mixer.x_proj.weight": (r + 2 * cfg.d_state, di),
        "mixer.dt_proj.weight": (di, r),
        "mixer.dt_proj.bias": (di,),
        "mixer.A_log": (di, cfg.d_state),
        "mixer.D": (di,),
        "mixer.out_proj.weight": (c, di),
        "norm.weight": (c,),
    }
    for key in list(shapes):
        if key.startswith("mixer.") and key != "mixer.in_proj.weight" and key != "mixer.out_proj.weight":
            twin = key.replace("A_log", "A_b_log").replace("conv1d", "conv1d_b").replace("x_proj", "x_proj_b")
            twin = twin.replace("dt_proj", "dt_proj_b").replace("mixer.D", "mixer.D_b")
            shapes[twin] = shapes[key]
    assert sorted(shapes) == sorted(OFFICIAL_LAYER_KEYS)
    for i in range(cfg.depth):
        for key, shape in shapes.items():
            sd[f"layers.{i}.{key}"] = torch.randn(*shape)
    return sd


def test_forward_returns_pooled_patch_tokens_per_frame():
    cfg = tiny_videomamba_config(image_size=32, patch=8, num_frames=3)  # 4x4 grid pooled to 2x2
    model = VideoMambaModel(cfg).eval()
    out = model(torch.randn(2, 3, 3, 32, 32))
    assert out.shape == (2, 3, 4, cfg.embed_dim)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="built for 3 frames, got 2"):
        model(torch.randn(1, 2, 3, 32, 32))


def test_official_layout_loads_strictly_and_drops_only_the_head():
    cfg = tiny_videomamba_config(num_frames=2)
    model = VideoMambaModel(cfg)
    sd = _official_state(cfg, frames=2)
    report = load_videomamba_checkpoint(model, {"model": sd})
    assert report.dropped == ["head.bias", "head.weight"]
    assert report.adapted == []
    own = model.state_dict()
    for k, v in sd.items():
        if not k.startswith("head."):
            torch.testing.assert_close(own[k], v)


def test_2d_kernel_and_frame_count_and_grid_are_adapted(tmp_path):
    cfg = tiny_videomamba_config(num_frames=4)
    sd = _official_state(cfg, frames=8, patch_2d=True, grid=2)  # image kernel, 8 frames, 2x2 grid
    path = tmp_path / "videomamba_t.pth"
    torch.save({"module": {f"module.{k}": v for k, v in sd.items()}}, path)
    model = VideoMambaModel.from_checkpoint(cfg, path)
    assert len(load_videomamba_checkpoint(model, path).adapted) == 3
    assert model.temporal_pos_embedding.shape == (1, 4, cfg.embed_dim)
    assert model.pos_embed.shape == (1, cfg.grid_size**2 + 1, cfg.embed_dim)
    # Inflated kernel: a static clip gives the same embedding as the 2D kernel on one frame.
    torch.testing.assert_close(model.patch_embed.proj.weight.sum(2), sd["patch_embed.proj.weight"])


def test_missing_key_raises_naming_it():
    cfg = tiny_videomamba_config(num_frames=2)
    sd = _official_state(cfg, frames=2)
    del sd["layers.1.mixer.A_b_log"]
    with pytest.raises(KeyError, match=r"layers\.1\.mixer\.A_b_log"):
        load_videomamba_checkpoint(VideoMambaModel(cfg), sd)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_videomamba_checkpoint(VideoMambaModel(cfg), "/nonexistent/videomamba.pth")


def test_gradient_checkpointing_gives_same_output_and_grads():
    cfg = tiny_videomamba_config(num_frames=2)
    model = VideoMambaModel(cfg).train()
    x = torch.randn(1, 2, 3, 32, 32)
    out = model(x)
    out.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing = True
    out2 = model(x)
    out2.sum().backward()
    torch.testing.assert_close(out, out2)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5)


def test_named_sizes():
    assert VideoMambaConfig.from_size("middle").embed_dim == 576
    assert VideoMambaConfig.from_size("tiny").depth == 24
    with pytest.raises(ValueError, match="Unknown VideoMamba size"):
        VideoMambaConfig.from_size("huge")
