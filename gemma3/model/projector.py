"""ETP projectors: visual tokens -> LLM embedding space, with spatial pooling on the real token grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

NORM_POSITIONS = ("output", "input")


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (as Gemma's VLMs apply to soft tokens)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


class ETPProjector(nn.Module):
    """Linear -> GELU -> Linear to the LLM width, average-pool the token grid, add a depthwise 3x3 conv residual.

    Input  [N, in_grid*in_grid, in_dim] (N frames or images).
    Output [N, out_grid*out_grid, out_dim]. ``norm_position``: ``output`` RMS-normalises the soft tokens, so they
    arrive at the scale of Gemma's scaled text embeddings (order 1) whatever the encoder's feature scale; ``input``
    RMS-normalises the encoder tokens before the MLP, as Gemma 3's own multimodal projector does. With ``output`` a
    component shared by every video (what a frozen language model first needs: the answer format) takes its share of
    a fixed norm from what tells videos apart; encoders trained from scratch collapsed that way (``input`` keeps them
    apart: see the cpu preset in `gemma3.presets`).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        in_grid: int,
        out_grid: int,
        hidden_act: str = "gelu",
        use_norm: bool = True,
        norm_position: str = "output",
    ) -> None:
        super().__init__()
        if out_grid > in_grid:
            raise ValueError(f"ETP output grid {out_grid} is larger than its input grid {in_grid}")
        self.in_grid = in_grid
        self.out_grid = out_grid
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), ACT2FN[hidden_act], nn.Linear(out_dim, out_dim))
        self.dwconv = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, groups=out_dim)
        if norm_position not in NORM_POSITIONS:
            raise ValueError(f"ETP projector norm_position {norm_position!r}: choose {' or '.join(NORM_POSITIONS)}")
        self.norm_input = use_norm and norm_position == "input"
        self.norm = RMSNorm(in_dim if self.norm_input else out_dim) if use_norm else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, num_tokens, _ = tokens.shape
        if num_tokens != self.in_grid**2:
            raise ValueError(
                f"ETP projector expects {self.in_grid}x{self.in_grid}={self.in_grid**2} tokens per frame, "
                f"got {num_tokens}"
            )
        x = self.mlp(self.norm(tokens) if self.norm_input else tokens)  # [N, G*G, D]
        x = x.transpose(1, 2).reshape(n, -1, self.in_grid, self.in_grid)  # [N, D, G, G]
        if self.out_grid != self.in_grid:
            x = F.adaptive_avg_pool2d(x, self.out_grid)  # [N, D, g, g]
        x = x + self.dwconv(x)
        x = x.flatten(2).transpose(1, 2)  # [N, g*g, D]
        return x if self.norm_input else self.norm(x)
