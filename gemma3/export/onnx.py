"""The custom model's vision path as ONNX graphs for edge runtimes (``--to onnx``), and a runner that uses them.

Graphs (``torch.onnx.export(dynamo=True)``, opset 18, fp32, the batch axis dynamic in every one):

=====================  ========================================  =============================================
file                   input                                     output
=====================  ========================================  =============================================
clip_encoder.onnx      pixel_values [N, 3, S, S], CLIP-normed    CLIP tokens [N, G*G, Dc] (feature layer, no CLS)
image_projector.onnx   CLIP tokens [N, G*G, Dc]                  image soft tokens [N, g*g, H]
video_encoder.onnx     key frames [V, K, 3, S, S], CLIP-normed   VideoMamba tokens [V, K, gv*gv, Dv]
video_projector.onnx   VideoMamba tokens [N, gv*gv, Dv]          video soft tokens [N, gv'*gv', H]
video_features.onnx    frames [V, T, 3, S, S], CLIP-normed       the LLM's video tokens [V, n, H]
=====================  ========================================  =============================================

``video_features.onnx`` is `VideoGemmaForCausalLM.get_video_features` end to end: CLIP on every frame, the
attention-based key-frame selection, VideoMamba (re-normalising to ImageNet statistics inside), both projectors.
The VideoMamba graph holds its bidirectional selective scan as ONNX ``Scan`` loops (`selective_scan_graph`),
one per layer, not a graph unrolled over the ``1 + K*h*w`` timesteps. The language model is not here: it goes to
llama.cpp (``--to gguf``) or to an HF folder (``--to hf``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gemma3.model.builder import load_model
from gemma3.model.encoders import clip_to_imagenet
from gemma3.model.families import CUSTOM

logger = logging.getLogger(__name__)

OPSET = 18
PARTS_FILE = "onnx_parts.json"


class _ClipTokens(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.encoder = model.image_encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values)  # [N, G*G, Dc]


class _VideoTokens(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.encoder = model.video_encoder

    def forward(self, key_frames: torch.Tensor) -> torch.Tensor:
        return self.encoder(clip_to_imagenet(key_frames))  # [V, K, gv*gv, Dv]


class _VideoFeatures(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        return self.model.get_video_features(pixel_values_videos)  # [V, n, H]


def vision_parts(model) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], str, str]]:
    """name -> (module, example inputs, input name, output name) for every graph this model has."""
    cfg = model.config
    s = cfg.vision_config.image_size if model.image_encoder is not None else cfg.video_config.image_size
    frames = torch.randn(2, cfg.num_frames, 3, s, s)  # [V, T, 3, S, S]
    parts = {}
    if model.image_encoder is not None:
        clip_tokens = model.image_encoder(frames[:, 0])
        parts["clip_encoder"] = (_ClipTokens(model), (frames[:, 0],), "pixel_values", "clip_tokens")
        parts["image_projector"] = (model.image_projector, (clip_tokens,), "clip_tokens", "image_tokens")
    if model.video_encoder is not None:
        key = frames[:, : cfg.num_keyframes]
        mamba_tokens = _VideoTokens(model)(key)
        parts["video_encoder"] = (_VideoTokens(model), (key,), "key_frames", "mamba_tokens")
        parts["video_projector"] = (model.video_projector, (mamba_tokens.flatten(0, 1),), "mamba_tokens",
                                    "video_tokens")  # fmt: skip
    parts["video_features"] = (_VideoFeatures(model), (frames,), "pixel_values_videos", "video_features")
    return parts


# Tracing torch's ``scan`` operator makes dynamo log recoverable errors ("Error while creating guard",
# "always_classified is unsupported") with stack traces; the export succeeds and is checked. Those loggers are
# quietened while exporting.
_NOISY_LOGGERS = ("torch._guards", "torch.export._trace", "torch._dynamo", "torch.onnx")


@contextlib.contextmanager
def _quiet_tracing():
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_graph(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, input_name: str,
                 output_name: str) -> None:  # fmt: skip
    """One module to ``path`` with its first axis dynamic."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet_tracing(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(), inputs, dynamo=True, opset_version=OPSET, input_names=[input_name],
            output_names=[output_name], dynamic_shapes=({0: batch},), verbose=False,
        )  # fmt: skip
    program.save(str(path))


def export_onnx(model_path: str | Path, output: Path, family) -> dict:
    """Every vision graph of a custom output into ``output`` (see the module docstring); returns the manifest."""

    if family is not CUSTOM:
        raise ValueError(f"--to onnx exports the custom model's vision path (CLIP, VideoMamba, projectors); "
                         f"{model_path} is a native {family.name} model: use --to hf for it")  # fmt: skip
    model, _ = load_model(model_path, dtype=torch.float32, merge_lora=True)
    model.eval()
    output.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    graphs = {}
    with torch.no_grad():
        for name, (module, inputs, in_name, out_name) in vision_parts(model).items():
            logger.info("exporting %s", name)
            export_graph(module, inputs, output / f"{name}.onnx", in_name, out_name)
            graphs[name] = {"file": f"{name}.onnx", "input": in_name, "output": out_name,
                            "input_shape": ["batch", *inputs[0].shape[1:]]}  # fmt: skip
    parts = {
        "graphs": graphs,
        "num_frames": cfg.num_frames,
        "num_keyframes": cfg.num_keyframes,
        "normalisation": "CLIP mean/std on [0, 1] RGB (as the project's video processor)",
        "opset": OPSET,
    }
    (output / PARTS_FILE).write_text(json.dumps(parts, indent=2))
    return {"format": "onnx", "family": "video_gemma", **parts}


class OnnxVision:
    """onnxruntime sessions over an ``--to onnx`` folder: the same calls as the PyTorch model's vision path."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        parts = json.loads((folder / PARTS_FILE).read_text())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        cpu = ["CPUExecutionProvider"]
        self.sessions = {
            name: ort.InferenceSession(str(folder / g["file"]), options, providers=cpu)
            for name, g in parts["graphs"].items()
        }
        self.parts = parts

    def run(self, name: str, array: np.ndarray) -> np.ndarray:
        """Run graph ``name`` on one float32 input."""
        if name not in self.sessions:
            raise KeyError(f"no {name}.onnx in this export; it has {sorted(self.sessions)}")
        session = self.sessions[name]
        return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(array, dtype=np.float32)})[0]

    def video_features(self, pixel_values_videos: np.ndarray) -> np.ndarray:
        """[V, T, 3, S, S] CLIP-normalised frames -> the language model's video tokens [V, n, H]."""
        return self.run("video_features", pixel_values_videos)

    def image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        """[N, 3, S, S] CLIP-normalised images -> image tokens [N, g*g, H]."""
        return self.run("image_projector", self.run("clip_encoder", pixel_values))
