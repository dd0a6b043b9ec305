"""VideoMamba release files in each official layout, key names and shapes as OpenGVLab/VideoMamba defines them
(read from its source, not from this project's module), with random values: the tests' fixtures (tiny width) and
the GPU-path rehearsal's stand-in for the UMT release (real width, cut depth; `gemma3.train.rehearsal`).

- mixer (``mamba/mamba_ssm/modules/mamba_simple.py``, ``bimamba=True``): ``in_proj`` [2E, D] and ``out_proj``
  [D, E] without bias; ``conv1d`` [E, 1, d_conv] + bias, ``x_proj`` [R + 2 d_state, E], ``dt_proj`` [E, R] + bias,
  ``A_log`` [E, d_state], ``D`` [E], and the backward twins ``A_b_log``, ``D_b``, ``conv1d_b``, ``x_proj_b``,
  ``dt_proj_b`` (E = 2 D, R = ceil(D / 16)); ``layers.i.norm.weight`` (RMSNorm, no bias).
- video embedding: ``patch_embed.proj`` [D, 3, 1, p, p] + bias, ``cls_token`` [1, 1, D], ``pos_embed``
  [1, (S/p)^2 + 1, D], ``temporal_pos_embedding`` [1, T, D].
- umt (``video_mm/models/umt_videomamba.py`` + ``backbones/videomamba/videomamba.py``): the above under
  ``vision_encoder.`` with final ``norm``, ``clip_decoder.0.{head,norm}``, ``pool_norm``; top level ``temp``,
  ``vision_proj``, ``text_proj``, ``itm_head``, ``text_encoder.bert.*`` (+ ``cls.predictions``), ``clip_teacher.*``;
  a flat dict, tensors in bf16 (the whole model is cast before saving).
- supervised (``video_sm/models/videomamba.py``): final ``norm_f``, ``head``; flat.
- masked_pretrain (``video_sm/models/videomamba_pretrain.py``): final ``norm``, ``clip_decoder.0.*``; flat.
- image (``image_sm/models/videomamba.py``): ``patch_embed.proj`` [D, 3, p, p], no temporal embedding, ``head``,
  ``norm_f``; saved as ``{"model": state}``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

LAYOUTS = ("umt", "supervised", "masked_pretrain", "image")


def _mixer(prefix: str, d: int, d_state: int, d_conv: int = 4) -> dict:
    e, r = 2 * d, math.ceil(d / 16)
    s = {f"{prefix}in_proj.weight": (2 * e, d), f"{prefix}out_proj.weight": (d, e)}
    for sfx in ("", "_b"):
        s[f"{prefix}A{sfx}_log"] = (e, d_state)
        s[f"{prefix}D{sfx}"] = (e,)
        s[f"{prefix}conv1d{sfx}.weight"] = (e, 1, d_conv)
        s[f"{prefix}conv1d{sfx}.bias"] = (e,)
        s[f"{prefix}x_proj{sfx}.weight"] = (r + 2 * d_state, e)
        s[f"{prefix}dt_proj{sfx}.weight"] = (e, r)
        s[f"{prefix}dt_proj{sfx}.bias"] = (e,)
    return s


def _trunk(d: int, n: int, d_state: int, pre: str = "") -> dict:
    s = {}
    for i in range(n):
        s.update(_mixer(f"{pre}layers.{i}.mixer.", d, d_state))
        s[f"{pre}layers.{i}.norm.weight"] = (d,)
    return s


def _video_embed(d: int, p: int, t: int, size: int, pre: str = "") -> dict:
    return {
        f"{pre}cls_token": (1, 1, d),
        f"{pre}pos_embed": (1, (size // p) ** 2 + 1, d),
        f"{pre}temporal_pos_embedding": (1, t, d),
        f"{pre}patch_embed.proj.weight": (d, 3, 1, p, p),
        f"{pre}patch_embed.proj.bias": (d,),
    }


def _clip_decoder(d: int, pre: str = "", out: int = 16) -> dict:
    return {f"{pre}clip_decoder.0.head.weight": (out, d), f"{pre}clip_decoder.0.head.bias": (out,),
            f"{pre}clip_decoder.0.norm.weight": (out,), f"{pre}clip_decoder.0.norm.bias": (out,)}  # fmt: skip


def _text_and_teacher(d: int, h: int = 16, vocab: int = 50, max_pos: int = 8) -> dict:
    b = "text_encoder.bert."
    s = {b + "embeddings.word_embeddings.weight": (vocab, h), b + "embeddings.position_embeddings.weight": (max_pos, h),
         b + "embeddings.LayerNorm.weight": (h,), b + "embeddings.LayerNorm.bias": (h,),
         b + "encoder.layer.0.attention.self.query.weight": (h, h),
         b + "encoder.layer.0.crossattention.self.key.weight": (h, d),  # cross-attends to the video tokens
         "text_encoder.cls.predictions.decoder.weight": (vocab, h),
         "clip_teacher.conv1.weight": (h, 3, 1, 4, 4), "clip_teacher.proj": (h, 16),
         "clip_teacher.transformer.resblocks.0.attn.in_proj_weight": (3 * h, h)}  # fmt: skip
    return s


def release_shapes(layout: str, d: int, n: int, p: int, t: int, size: int, d_state: int) -> dict[str, tuple]:
    """{key: shape} of one release family (flat, before any wrapper)."""
    if layout == "supervised":
        return {**_video_embed(d, p, t, size), **_trunk(d, n, d_state), "norm_f.weight": (d,),
                "head.weight": (5, d), "head.bias": (5,)}  # fmt: skip
    if layout == "masked_pretrain":
        return {**_video_embed(d, p, t, size), **_trunk(d, n, d_state), "norm.weight": (d,), **_clip_decoder(d)}
    if layout == "image":
        emb = _video_embed(d, p, t, size)
        del emb["temporal_pos_embedding"]
        emb["patch_embed.proj.weight"] = (d, 3, p, p)
        return {**emb, **_trunk(d, n, d_state), "norm_f.weight": (d,), "head.weight": (10, d), "head.bias": (10,)}
    if layout == "umt":
        ve = "vision_encoder."
        return {**_video_embed(d, p, t, size, ve), **_trunk(d, n, d_state, ve), ve + "norm.weight": (d,),
                **_clip_decoder(d, ve), ve + "pool_norm.weight": (d,), ve + "pool_norm.bias": (d,),
                "temp": (), "vision_proj.weight": (16, d), "vision_proj.bias": (16,), "text_proj.weight": (16, 16),
                "text_proj.bias": (16,), "itm_head.weight": (2, 16), "itm_head.bias": (2,),
                **_text_and_teacher(d)}  # fmt: skip
    raise KeyError(layout)


def write_release(path: Path, layout: str, d: int = 32, n: int = 2, p: int = 8, t: int = 2, size: int = 32,
                  d_state: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:  # fmt: skip
    """Write a release file of ``layout``; returns its flat state dict."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if layout == "umt" else torch.float32
    state = {k: (torch.randn(s, generator=g) * 0.1).to(dtype) for k, s in release_shapes(layout, d, n, p, t, size,
                                                                                        d_state).items()}  # fmt: skip
    for k in state:
        if k.endswith("A_log") or k.endswith("A_b_log"):  # positive decay rates, as the official init
            state[k] = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(2 * d, 1).to(dtype)
    torch.save({"model": state} if layout == "image" else state, path)
    return state
