"""Loading every public VideoMamba release into `VideoMambaModel`, with a load report.

Layouts (OpenGVLab/VideoMamba; key names and shapes as its modules define them):

- ``umt``: the multi-modality releases (``videomamba_m16_{5M,17M,25M}_f8_res224.pth``, the one Mobile-VideoGPT
  uses; ``video_mm/models/umt_videomamba.py``): the encoder under ``vision_encoder.`` with its final norm as
  ``norm``, a CLIP-distillation decoder (``clip_decoder``) and ``pool_norm``; beside it the BERT text tower
  (``text_encoder.``), the CLIP teacher (``clip_teacher.``), ``vision_proj`` / ``text_proj`` / ``itm_head`` / ``temp``.
- ``supervised``: Kinetics-400 / SSv2 / ... fine-tuned video models (``video_sm/models/videomamba.py``): final norm
  ``norm_f`` and a classification ``head``.
- ``masked_pretrain``: masked pretraining (``video_sm/models/videomamba_pretrain.py``): final norm ``norm`` and a
  ``clip_decoder``.
- ``image``: ImageNet models (``image_sm/models/videomamba.py``, saved as ``{"model": state}``): a 2D patch kernel,
  no temporal embedding, ``head`` (and ``distill_head`` in the self-distilled ones).

Everything that is not the encoder is ignored with its reason; adaptations (2D -> 3D kernel, position-embedding
interpolation for another resolution or frame count, renamed final norm) are listed; a missing encoder key or a
shape the config does not produce is an error naming the file and key. Nothing is silently dropped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from gemma3.utils.errors import CheckpointError

logger = logging.getLogger(__name__)

# Non-encoder parts of the releases: key prefix (after unwrapping) -> why it is not loaded.
IGNORED = {
    "umt": {
        "text_encoder.": "text tower (BERT)",
        "clip_teacher.": "CLIP distillation teacher",
        "vision_proj.": "video-text contrastive projection",
        "text_proj.": "video-text contrastive projection",
        "itm_head.": "video-text matching head",
        "temp": "contrastive temperature",
        "vision_encoder.clip_decoder.": "CLIP distillation decoder",
        "vision_encoder.pool_norm.": "retrieval pooling norm",
    },
    "supervised": {"head.": "classification head", "head_drop.": "classification head", "fc_norm.": "head norm"},
    "masked_pretrain": {"clip_decoder.": "CLIP distillation decoder", "decoder": "pretraining decoder"},
    "image": {"head.": "classification head", "distill_head.": "self-distillation head"},
}


@dataclass
class LoadReport:
    """What loading a VideoMamba checkpoint did (also logged)."""

    path: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)  # key -> reason
    adapted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for why in self.ignored.values():
            reasons[why] = reasons.get(why, 0) + 1
        ignored = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())) or "nothing"
        return (
            f"VideoMamba {self.path} ({self.layout} layout): loaded {len(self.loaded)} encoder tensors; "
            f"ignored {ignored}; adapted {self.adapted or 'nothing'}; missing {self.missing or 'nothing'}"
        )


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict of a release file (``model`` / ``module`` / ``state_dict`` wrappers removed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VideoMamba checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated download, not a torch file, ...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    return unwrap(state, str(path))


def unwrap(state, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    while isinstance(state, dict):
        inner = next((state[k] for k in ("model", "module", "state_dict", "model_state") if k in state), None)
        if not isinstance(inner, dict):
            break
        state = inner
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{where}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def detect_layout(state: dict[str, torch.Tensor], where: str = "checkpoint") -> str:
    """``umt``, ``supervised``, ``masked_pretrain`` or ``image``; a clear error for anything else."""
    if any(k.startswith("vision_encoder.") for k in state):
        return "umt"
    kernel = state.get("patch_embed.proj.weight")
    if kernel is None or not any(k.startswith("layers.0.mixer.") for k in state):
        raise CheckpointError(
            f"{where}: unknown checkpoint layout, not a VideoMamba release (no patch_embed.proj.weight / "
            f"layers.N.mixer.*; keys e.g. {sorted(state)[:5]})"
        )
    if kernel.dim() == 4:
        return "image"
    if "head.weight" in state:
        return "supervised"
    return "masked_pretrain"


def encoder_state(state: dict[str, torch.Tensor], layout: str, report: LoadReport) -> dict[str, torch.Tensor]:
    """The encoder's tensors in this project's names; everything else goes to ``report.ignored``."""
    out = {}
    for key, value in state.items():
        why = next((w for prefix, w in IGNORED[layout].items() if key.startswith(prefix)), None)
        if why is not None:
            report.ignored[key] = why
            continue
        if layout == "umt":
            if not key.startswith("vision_encoder."):
                raise CheckpointError(f"{report.path}: unexpected key {key!r} in a UMT checkpoint")
            key = key.removeprefix("vision_encoder.")
        out[key] = value
    if "norm.weight" in out and "norm_f.weight" not in out:
        out["norm_f.weight"] = out.pop("norm.weight")
        report.adapted.append("norm -> norm_f (final norm)")
    return out


def adapt(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], report: LoadReport) -> None:
    """2D kernel -> 3D tubelet kernel, temporal / spatial position embeddings resized, in place."""
    w, target = state.get("patch_embed.proj.weight"), own["patch_embed.proj.weight"]
    if w is not None and w.dim() == 4:  # [C, 3, p, p] -> [C, 3, t, p, p], at the centre frame (official inflate)
        t = target.shape[2]
        inflated = torch.zeros(*w.shape[:2], t, *w.shape[2:], dtype=w.dtype)
        inflated[:, :, t // 2] = w
        state["patch_embed.proj.weight"] = inflated
        report.adapted.append(f"patch_embed.proj.weight 2D -> 3D (tubelet {t})")
    if "temporal_pos_embedding" not in state and report.layout == "image":
        state["temporal_pos_embedding"] = torch.zeros_like(own["temporal_pos_embedding"])
        report.adapted.append("temporal_pos_embedding zero-initialised (image checkpoint)")
    tpe = state.get("temporal_pos_embedding")
    if tpe is not None and tpe.dim() == 3 and tpe.shape[1] != own["temporal_pos_embedding"].shape[1]:
        n = own["temporal_pos_embedding"].shape[1]
        state["temporal_pos_embedding"] = F.interpolate(
            tpe.float().transpose(1, 2), size=n, mode="linear", align_corners=False
        ).transpose(1, 2)
        report.adapted.append(f"temporal_pos_embedding {tpe.shape[1]} -> {n} frames")
    pe = state.get("pos_embed")
    if pe is not None and pe.dim() == 3 and pe.shape[1] != own["pos_embed"].shape[1]:
        old, new = math.isqrt(pe.shape[1] - 1), math.isqrt(own["pos_embed"].shape[1] - 1)
        if old * old != pe.shape[1] - 1:
            raise CheckpointError(f"{report.path}: pos_embed has {pe.shape[1]} rows, not a square grid + CLS")
        grid = pe[:, 1:].float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        state["pos_embed"] = torch.cat([pe[:, :1].float(), grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)], 1)
        report.adapted.append(f"pos_embed {old}x{old} -> {new}x{new} patches")


def load_videomamba_checkpoint(model: torch.nn.Module, path_or_state: str | Path | dict) -> LoadReport:
    """Load any VideoMamba release (file or state dict) into ``model``; returns (and logs) the `LoadReport`.

    All checks run before the model is touched: an unknown layout, a missing encoder key, an encoder key the
    model does not have or a shape the config does not produce raise `CheckpointError` naming the file and key.
    """
    if isinstance(path_or_state, dict):
        where, state = "state dict", unwrap(dict(path_or_state))
    else:
        where, state = str(path_or_state), read_checkpoint(path_or_state)
    report = LoadReport(where, detect_layout(state, where))
    enc = encoder_state(state, report.layout, report)
    own = model.state_dict()
    adapt(enc, own, report)
    report.missing = sorted(set(own) - set(enc))
    unexpected = sorted(set(enc) - set(own))
    if report.missing or unexpected:
        raise CheckpointError(
            f"{where} ({report.layout} layout) does not match the encoder: missing {report.missing[:8]} "
            f"({len(report.missing)} keys), unexpected {unexpected[:8]} ({len(unexpected)} keys)"
        )
    for key, value in enc.items():
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"{where}: {key} has shape {tuple(value.shape)}, the configured encoder needs {tuple(own[key].shape)} "
                "(check --video_size / the VideoMamba config against the checkpoint)"
            )
    model.load_state_dict(enc, strict=True)  # dtype cast to the model's (releases may be bf16)
    report.loaded = sorted(enc)
    logger.info(report.summary())
    return report
