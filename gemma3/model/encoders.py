"""CLIP image encoder and the parameter-free attention-based key-frame selection.

CLIP ViT-B/16 (`openai/clip-vit-base-patch16`) through `transformers.CLIPVisionModel`: hidden states of the
penultimate layer (``vision_feature_layer=-2``), CLS dropped, i.e. 196 tokens x 768 per 224 px frame.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from gemma3.constants import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD


class CLIPImageEncoder(nn.Module):
    """Per-frame CLIP patch tokens from a chosen hidden layer, CLS removed."""

    def __init__(self, config: CLIPVisionConfig, feature_layer: int = -2) -> None:
        super().__init__()
        self.config = config
        self.feature_layer = feature_layer
        self.vision_model = CLIPVisionModel(config)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, feature_layer: int = -2, **kwargs) -> CLIPImageEncoder:
        """Load real CLIP weights (HF id or local folder; a full CLIPModel checkpoint works too)."""
        vision = CLIPVisionModel.from_pretrained(name_or_path, **kwargs)
        enc = cls(vision.config, feature_layer)
        enc.vision_model = vision
        return enc

    @property
    def grid_size(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 3, S, S] (CLIP-normalised) -> patch tokens [N, grid*grid, D]."""
        dtype = next(self.vision_model.parameters()).dtype
        out = self.vision_model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        return out.hidden_states[self.feature_layer][:, 1:]  # drop CLS


def clip_to_imagenet(pixel_values: torch.Tensor) -> torch.Tensor:
    """Re-normalise CLIP-normalised pixels [..., 3, H, W] to ImageNet statistics (VideoMamba's)."""
    shape = (3, 1, 1)
    cm = pixel_values.new_tensor(CLIP_MEAN).view(shape)
    cs = pixel_values.new_tensor(CLIP_STD).view(shape)
    im = pixel_values.new_tensor(IMAGENET_MEAN).view(shape)
    ist = pixel_values.new_tensor(IMAGENET_STD).view(shape)
    return (pixel_values * cs + cm - im) / ist


@torch.no_grad()
def select_keyframes(frame_tokens: torch.Tensor, chunk_size: int, per_chunk: int) -> torch.Tensor:
    """Pick key frames by the attention they receive within each chunk of frames.

    frame_tokens [V, T, N, D] (CLIP tokens per frame). Frames are split into chunks of ``chunk_size``; within a
    chunk, all tokens attend to all tokens under softmax(X X^T / sqrt(D)) and each frame is scored by the mean
    attention its tokens receive. The top ``per_chunk`` frames of each chunk are kept, in time order.

    Returns frame indices [V, K] with K = (T // chunk) * min(per_chunk, chunk), sorted ascending.
    """
    v, t, n, d = frame_tokens.shape
    chunk = min(chunk_size, t)
    if t % chunk:
        raise ValueError(f"{t} frames cannot be split into chunks of {chunk}")
    k = min(per_chunk, chunk)
    num_chunks = t // chunk
    x = frame_tokens.float().reshape(v * num_chunks, chunk * n, d)  # [V*C, chunk*N, D]
    attn = torch.softmax(x @ x.transpose(1, 2) / math.sqrt(d), dim=-1)  # [V*C, chunk*N, chunk*N]
    received = attn.mean(dim=1).reshape(v * num_chunks, chunk, n).mean(-1)  # [V*C, chunk]
    top = received.topk(k, dim=-1).indices.sort(dim=-1).values  # [V*C, k]
    offsets = (torch.arange(num_chunks, device=top.device) * chunk).repeat(v).unsqueeze(-1)
    return (top + offsets).reshape(v, num_chunks * k)
