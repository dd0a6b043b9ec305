"""VideoMamba: output shape, official checkpoint layout (strict), adaptations, checkpointing."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_videomamba_config

from gemma3.model.configuration import VideoMambaConfig
from gemma3.model.videomamba import VideoMambaModel


def test_forward_returns_pooled_patch_tokens_per_frame():
    cfg = tiny_videomamba_config(image_size=32, patch=8, num_frames=3)  # 4x4 grid pooled to 2x2
    model = VideoMambaModel(cfg).eval()
    out = model(torch.randn(2, 3, 3, 32, 32))
    assert out.shape == (2, 3, 4, cfg.embed_dim)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="built for 3 frames, got 2"):
        model(torch.randn(1, 2, 3, 32, 32))


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
