"""ETP projectors: visual tokens -> LLM embedding space, with spatial pooling on the real token grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


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
    Output [N, out_grid*out_grid, out_dim], RMS-normalised so soft tokens arrive at the scale of Gemma's scaled
    text embeddings (order 1), whatever the encoder's feature scale.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        in_grid: int,
        out_grid: int,
        hidden_act: str = "gelu",
        use_norm: bool = True,
    ) -> None:
        super().__init__()
        if out_grid > in_grid:
            raise ValueError(f"ETP output grid {out_grid} is larger than its input grid {in_grid}")
        self.in_grid = in_grid
        self.out_grid = out_grid
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), ACT2FN[hidden_act], nn.Linear(out_dim, out_dim))
        self.dwconv = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, groups=out_dim)
        self.norm = RMSNorm(out_dim) if use_norm else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, num_tokens, _ = tokens.shape
        if num_tokens != self.in_grid**2:
            raise ValueError(
                f"ETP projector expects {self.in_grid}x{self.in_grid}={self.in_grid**2} tokens per frame, "
                f"got {num_tokens}"
            )
        x = self.mlp(tokens)  # [N, G*G, D]
        x = x.transpose(1, 2).reshape(n, -1, self.in_grid, self.in_grid)  # [N, D, G, G]
        if self.out_grid != self.in_grid:
            x = F.adaptive_avg_pool2d(x, self.out_grid)  # [N, D, g, g]
        x = x + self.dwconv(x)
        x = x.flatten(2).transpose(1, 2)  # [N, g*g, D]
        return self.norm(x)
