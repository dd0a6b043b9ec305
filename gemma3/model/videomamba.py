"""VideoMamba video encoder (OpenGVLab layout) returning per-frame patch tokens.

Parameter names match the official video model (``videomamba/video_sm/models/videomamba.py``): ``patch_embed.proj``
(Conv3d), ``cls_token``, ``pos_embed``, ``temporal_pos_embedding``, ``layers.N.mixer.*`` (bidirectional Mamba: the
forward-scan parameters and their ``*_b`` backward twins), ``layers.N.norm``, ``norm_f``. Every public release
(UMT multi-modality, supervised, masked-pretraining, ImageNet) loads through `videomamba_checkpoints`.

Input ``[B, T, 3, H, W]`` (ImageNet-normalised); output ``[B, T, out_grid**2, embed_dim]``: all patch tokens of
each frame after the final norm (CLS dropped), average-pooled from the patch grid to ``out_grid``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gemma3.model.configuration import VideoMambaConfig
from gemma3.model.projector import RMSNorm
from gemma3.model.selective_scan import causal_conv1d, selective_scan
from gemma3.model.videomamba_checkpoints import load_videomamba_checkpoint

logger = logging.getLogger(__name__)


class BiMamba(nn.Module):
    """Bidirectional Mamba mixer (bimamba v2): a forward scan and a scan over the reversed sequence, summed."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        use_cuda_kernels: bool = True,
    ) -> None:
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.use_cuda_kernels = use_cuda_kernels
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        for sfx in ("", "_b"):
            setattr(
                self,
                f"conv1d{sfx}",
                nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1),
            )
            setattr(self, f"x_proj{sfx}", nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False))
            dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
            self._init_dt(dt_proj)
            setattr(self, f"dt_proj{sfx}", dt_proj)
            a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # S4D-real init
            setattr(self, f"A{sfx}_log", nn.Parameter(torch.log(a)))
            setattr(self, f"D{sfx}", nn.Parameter(torch.ones(self.d_inner)))

    def _init_dt(self, dt_proj: nn.Linear, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        nn.init.uniform_(dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def _scan_inputs(self, x: torch.Tensor, sfx: str):
        """x [B, D, L] -> (u, delta, A, B, C, D, delta_bias) for one direction."""
        conv = getattr(self, f"conv1d{sfx}")
        u = causal_conv1d(x, conv.weight[:, 0], conv.bias, "silu", self.use_cuda_kernels)  # [B, D, L]
        x_dbl = getattr(self, f"x_proj{sfx}")(u.transpose(1, 2))  # [B, L, r + 2N]
        dt, b_mat, c_mat = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt_proj = getattr(self, f"dt_proj{sfx}")
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)  # [B, D, L], bias added inside the scan
        a = -torch.exp(getattr(self, f"A{sfx}_log").float())  # [D, N]
        return u, delta, a, b_mat.transpose(1, 2), c_mat.transpose(1, 2), getattr(self, f"D{sfx}"), dt_proj.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, L, d_model] -> [B, L, d_model]."""
        xz = self.in_proj(hidden).transpose(1, 2)  # [B, 2D, L]
        x, z = xz.chunk(2, dim=1)
        f = self._scan_inputs(x, "")
        b = self._scan_inputs(x.flip(-1), "_b")
        if hidden.is_cuda and self.use_cuda_kernels:  # kernels: one call per direction
            y_f = selective_scan(*f[:6], z=z, delta_bias=f[6], delta_softplus=True)
            y_b = selective_scan(*b[:6], z=z.flip(-1), delta_bias=b[6], delta_softplus=True)
        else:  # both directions as one grouped scan
            y = selective_scan(
                torch.cat([f[0], b[0]], 1),
                torch.cat([f[1], b[1]], 1),
                torch.cat([f[2], b[2]], 0),
                torch.stack([f[3], b[3]], 1),
                torch.stack([f[4], b[4]], 1),
                torch.cat([f[5], b[5]], 0),
                z=torch.cat([z, z.flip(-1)], 1),
                delta_bias=torch.cat([f[6], b[6]], 0),
                delta_softplus=True,
                use_cuda_kernels=False,
            )
            y_f, y_b = y.chunk(2, dim=1)
        out = y_f + y_b.flip(-1)  # [B, D, L]
        return self.out_proj(out.transpose(1, 2).to(hidden.dtype))


class Block(nn.Module):
    """Pre-norm residual block: residual += drop_path(mixer output); hidden = mixer(norm(residual))."""

    def __init__(self, config: VideoMambaConfig, drop_path: float) -> None:
        super().__init__()
        self.mixer = BiMamba(
            config.embed_dim, config.d_state, config.d_conv, config.expand, config.dt_rank, config.use_cuda_kernels
        )
        self.norm = RMSNorm(config.embed_dim, eps=1e-5) if config.rms_norm else nn.LayerNorm(config.embed_dim)
        self.drop_path = drop_path
        self.residual_in_fp32 = config.residual_in_fp32

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.drop_path)
        return x * keep / (1 - self.drop_path)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden if residual is None else residual + self._drop(hidden)
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        return self.mixer(hidden), residual


class PatchEmbed(nn.Module):
    def __init__(self, config: VideoMambaConfig) -> None:
        super().__init__()
        k, p = config.tubelet_size, config.patch_size
        self.proj = nn.Conv3d(config.num_channels, config.embed_dim, kernel_size=(k, p, p), stride=(k, p, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # [B, C, T', H', W']


class VideoMambaModel(nn.Module):
    """VideoMamba backbone; see the module docstring for the layout and shapes."""

    def __init__(self, config: VideoMambaConfig) -> None:
        super().__init__()
        self.config = config
        c = config.embed_dim
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid_size**2 + 1, c))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, config.num_frames // config.tubelet_size, c))
        rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]  # meta-safe
        self.layers = nn.ModuleList(Block(config, r) for r in rates)
        self.norm_f = RMSNorm(c, eps=1e-5) if config.rms_norm else nn.LayerNorm(c)
        self.gradient_checkpointing = False
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith(("in_proj.weight", "x_proj.weight", "x_proj_b.weight")):
                nn.init.trunc_normal_(p, std=0.02)
            elif name.endswith("out_proj.weight"):  # rescaled by depth, as in Mamba
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(config.depth)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, T, 3, H, W] -> patch tokens [B, T, out_grid**2, C]."""
        bsz = pixel_values.shape[0]
        x = self.patch_embed(pixel_values.transpose(1, 2))  # [B, C, T, h, w]
        _, c, t, h, w = x.shape
        if t != self.temporal_pos_embedding.shape[1]:
            raise ValueError(f"VideoMamba was built for {self.temporal_pos_embedding.shape[1]} frames, got {t}")
        x = x.permute(0, 2, 3, 4, 1).reshape(bsz * t, h * w, c)
        x = torch.cat([self.cls_token.expand(bsz * t, -1, -1), x], dim=1) + self.pos_embed  # [B*T, 1+hw, C]
        cls = x[:bsz, :1]  # the CLS of each video's first frame (official layout)
        x = x[:, 1:].reshape(bsz, t, h * w, c) + self.temporal_pos_embedding[:, :, None]  # [B, T, hw, C]
        hidden = torch.cat([cls, x.reshape(bsz, t * h * w, c)], dim=1)  # [B, 1 + T*hw, C]
        residual = None
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden, residual = checkpoint(layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual)
        residual = hidden if residual is None else residual + hidden
        hidden = self.norm_f(residual.to(self.norm_f.weight.dtype))  # [B, 1 + T*hw, C]
        tokens = hidden[:, 1:].reshape(bsz * t, h, w, c).permute(0, 3, 1, 2)  # [B*T, C, h, w]
        g = self.config.out_grid
        if (h, w) != (g, g):
            tokens = F.adaptive_avg_pool2d(tokens, g)
        return tokens.flatten(2).transpose(1, 2).reshape(bsz, t, g * g, c)

    @classmethod
    def from_checkpoint(cls, config: VideoMambaConfig, path: str | Path) -> VideoMambaModel:
        """A model of ``config`` with the weights of any VideoMamba release (see `videomamba_checkpoints`)."""

        model = cls(config)
        load_videomamba_checkpoint(model, path)
        return model
