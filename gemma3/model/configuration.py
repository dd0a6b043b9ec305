"""Typed configuration for the Mobile-VideoGPT-style video-language model.

`VideoGemmaConfig` holds four sub-configs:

- ``text_config``: the Gemma backbone (Gemma 3 text, Gemma-3n text or Gemma 4 text config),
- ``vision_config``: the CLIP image encoder (`transformers.CLIPVisionConfig`),
- ``video_config``: the VideoMamba video encoder (`VideoMambaConfig`),
- ``projector_config``: the two ETP projectors (`ProjectorConfig`),

plus the explicit fields the splice needs (placeholder token ids, frame counts, token grids). Token counts are
derived from those fields, never inferred from tensor widths.
"""

from __future__ import annotations

from typing import Any

from transformers import CONFIG_MAPPING, CLIPVisionConfig, PreTrainedConfig

from gemma3.constants import DEFAULT_KEYFRAME_CHUNK, DEFAULT_KEYFRAMES_PER_CHUNK, DEFAULT_NUM_FRAMES
from gemma3.model.backbones import family_for_model_type

# VideoMamba sizes (OpenGVLab): tiny / small / middle.
VIDEOMAMBA_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"embed_dim": 192, "depth": 24},
    "small": {"embed_dim": 384, "depth": 24},
    "middle": {"embed_dim": 576, "depth": 32},
}


def count_keyframes(num_frames: int, chunk_size: int, per_chunk: int) -> int:
    """Frames kept by key-frame selection: ``per_chunk`` of each chunk (all frames when a chunk holds fewer)."""
    chunk = min(chunk_size, num_frames)
    return (num_frames // chunk) * min(per_chunk, chunk)


class VideoMambaConfig(PreTrainedConfig):
    """VideoMamba encoder: patch embedding, bidirectional Mamba blocks, per-frame patch tokens pooled to a grid.

    Input ``[B, T, 3, H, W]``; output ``[B, T, out_grid**2, embed_dim]``.
    """

    model_type = "videomamba"

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        embed_dim: int = 576,
        depth: int = 32,
        num_frames: int = 8,
        tubelet_size: int = 1,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        rms_norm: bool = True,
        residual_in_fp32: bool = True,
        drop_path_rate: float = 0.0,
        out_grid: int = 7,
        use_cuda_kernels: bool = True,
        **kwargs: Any,
    ) -> None:
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.dt_rank = dt_rank
        self.rms_norm = rms_norm
        self.residual_in_fp32 = residual_in_fp32
        self.drop_path_rate = drop_path_rate
        self.out_grid = out_grid
        self.use_cuda_kernels = use_cuda_kernels
        super().__init__(**kwargs)

    @property
    def grid_size(self) -> int:
        """Patch grid side, e.g. 14 for 224 px / patch 16."""
        return self.img_size // self.patch_size

    @classmethod
    def from_size(cls, size: str, **kwargs: Any) -> VideoMambaConfig:
        """Build a config for a named size: ``tiny`` (192), ``small`` (384) or ``middle`` (576)."""
        if size not in VIDEOMAMBA_SIZES:
            raise ValueError(f"Unknown VideoMamba size {size!r}; choose one of {sorted(VIDEOMAMBA_SIZES)}")
        return cls(**{**VIDEOMAMBA_SIZES[size], **kwargs})


class ProjectorConfig(PreTrainedConfig):
    """ETP projectors: Linear -> GELU -> Linear to the LLM width, then grid pooling with a depthwise-conv residual.

    Grids are explicit: ``*_input_grid`` is the side of the token grid the encoder emits per frame, and
    ``*_output_grid`` the side after pooling. Tokens per frame = ``*_output_grid ** 2``. ``norm_position``: the
    RMSNorm on the soft tokens (``output``) or on the encoder tokens before the MLP (``input``; see `ETPProjector`).
    """

    model_type = "etp_projector"

    def __init__(
        self,
        projector_type: str = "etp",
        video_input_grid: int = 7,
        video_output_grid: int = 7,
        image_input_grid: int = 14,
        image_output_grid: int = 7,
        hidden_act: str = "gelu",
        use_norm: bool = True,
        norm_position: str = "output",
        **kwargs: Any,
    ) -> None:
        self.projector_type = projector_type
        self.video_input_grid = video_input_grid
        self.video_output_grid = video_output_grid
        self.image_input_grid = image_input_grid
        self.image_output_grid = image_output_grid
        self.hidden_act = hidden_act
        self.use_norm = use_norm
        self.norm_position = norm_position  # RMSNorm on the soft tokens ("output") or the encoder tokens ("input")
        super().__init__(**kwargs)


def _sub_config(value: Any, default_type: str) -> PreTrainedConfig:
    """Turn a dict (with optional ``model_type``) or a config into a config instance."""
    if isinstance(value, PreTrainedConfig):
        return value
    value = dict(value or {})
    model_type = value.pop("model_type", default_type)
    if model_type == VideoMambaConfig.model_type:
        return VideoMambaConfig(**value)
    if model_type == ProjectorConfig.model_type:
        return ProjectorConfig(**value)
    return CONFIG_MAPPING[model_type](**value)


class VideoGemmaConfig(PreTrainedConfig):
    """Whole-model configuration: Gemma backbone + CLIP + VideoMamba + ETP projectors.

    A ``<video>`` tag becomes ``num_video_tokens`` copies of ``video_token_id``: for each of the
    ``num_keyframes`` selected frames, ``video_output_grid**2`` VideoMamba tokens, followed by the same frames'
    ``image_output_grid**2`` CLIP tokens. An ``<image>`` tag becomes ``num_image_tokens`` copies of
    ``image_token_id``.
    """

    model_type = "video_gemma"
    sub_configs = {
        "text_config": PreTrainedConfig,
        "vision_config": CLIPVisionConfig,
        "video_config": VideoMambaConfig,
        "projector_config": ProjectorConfig,
    }

    def __init__(
        self,
        text_config: dict | PreTrainedConfig | None = None,
        vision_config: dict | PreTrainedConfig | None = None,
        video_config: dict | PreTrainedConfig | None = None,
        projector_config: dict | PreTrainedConfig | None = None,
        image_token_id: int = 262_143,
        video_token_id: int = 262_142,
        num_frames: int = DEFAULT_NUM_FRAMES,
        keyframe_chunk_size: int = DEFAULT_KEYFRAME_CHUNK,
        keyframes_per_chunk: int = DEFAULT_KEYFRAMES_PER_CHUNK,
        vision_feature_layer: int = -2,
        use_image_encoder: bool = True,
        use_video_encoder: bool = True,
        chat_template: str | None = None,
        sources: dict[str, str | None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.text_config = _sub_config(text_config, "gemma3_text")
        self.vision_config = _sub_config(vision_config, "clip_vision_model")
        self.video_config = _sub_config(video_config, VideoMambaConfig.model_type)
        self.projector_config = _sub_config(projector_config, ProjectorConfig.model_type)
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.num_frames = num_frames
        self.keyframe_chunk_size = keyframe_chunk_size
        self.keyframes_per_chunk = keyframes_per_chunk
        self.vision_feature_layer = vision_feature_layer
        self.use_image_encoder = use_image_encoder
        self.use_video_encoder = use_video_encoder
        self.chat_template = chat_template
        # Where the pretrained parts came from (HF ids / paths), so a trained output can rebuild its base.
        self.sources = dict(sources or {})
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", True))
        super().__init__(**kwargs)
        if num_frames % keyframe_chunk_size and num_frames > keyframe_chunk_size:
            raise ValueError(f"num_frames={num_frames} must be a multiple of keyframe_chunk_size={keyframe_chunk_size}")
        if not (use_image_encoder or use_video_encoder):
            raise ValueError("At least one of use_image_encoder / use_video_encoder must be True")

    # ---- derived token counts (used by the processor and checked by the model) ----
    @property
    def num_keyframes(self) -> int:
        """Frames kept after key-frame selection (all frames when a chunk holds fewer than the budget)."""
        return count_keyframes(self.num_frames, self.keyframe_chunk_size, self.keyframes_per_chunk)

    @property
    def video_tokens_per_frame(self) -> int:
        """Tokens one key frame contributes to a video: VideoMamba grid plus CLIP grid (each when enabled)."""
        p = self.projector_config
        n = 0
        if self.use_video_encoder:
            n += p.video_output_grid**2
        if self.use_image_encoder:
            n += p.image_output_grid**2
        return n

    @property
    def num_video_tokens(self) -> int:
        """Placeholder ids one ``<video>`` tag expands to."""
        return self.num_keyframes * self.video_tokens_per_frame

    @property
    def num_image_tokens(self) -> int:
        """Placeholder ids one ``<image>`` tag expands to."""
        return self.projector_config.image_output_grid**2

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def backbone_family(self) -> str:
        """Backbone family key (``gemma3``, ``gemma3n`` or ``gemma4``) from the text config's model type."""

        return family_for_model_type(self.text_config.model_type)
