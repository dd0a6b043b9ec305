"""`VisualTokens`: the seven settings that decide how a clip becomes soft tokens in the custom model, as one record.

Frames sampled, key-frame chunk and count, the ETP output grids of both encoders, where the projector normalises,
and the VideoMamba size. A pipeline preset holds one, the training flags are its fields (`ModelArguments` inherits
them, so ``--num_frames``, ``--video_output_grid`` ... are parsed into it), and the builder takes it whole
(`gemma3.model.builder.custom_config`); a saved model's config gives it back (`VisualTokens.from_config`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from gemma3.constants import DEFAULT_KEYFRAME_CHUNK, DEFAULT_KEYFRAMES_PER_CHUNK, DEFAULT_NUM_FRAMES
from gemma3.model.configuration import VIDEOMAMBA_SIZES, VideoGemmaConfig, count_keyframes
from gemma3.model.projector import NORM_POSITIONS


@dataclass
class VisualTokens:
    """How one clip becomes soft tokens (the custom model; the native VLMs read only ``num_frames``). Not frozen:
    `ModelArguments` inherits the fields, and argument dataclasses are filled in place."""

    num_frames: int = field(default=DEFAULT_NUM_FRAMES, metadata={"help": "frames sampled from each video"})
    keyframe_chunk_size: int = field(default=DEFAULT_KEYFRAME_CHUNK, metadata={"help": "frames per key-frame chunk"})
    keyframes_per_chunk: int = field(
        default=DEFAULT_KEYFRAMES_PER_CHUNK, metadata={"help": "key frames kept per chunk (go to VideoMamba)"}
    )
    image_output_grid: int = field(default=7, metadata={"help": "ETP pooled grid side for CLIP tokens"})
    video_output_grid: int = field(default=7, metadata={"help": "ETP pooled grid side for VideoMamba tokens"})
    projector_norm: str = field(
        default="output", metadata={"help": "ETP RMSNorm on the soft tokens (output) or the encoder tokens (input)"}
    )
    video_size: str = field(default="middle", metadata={"help": "VideoMamba size: tiny | small | middle"})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names (the training flags these settings go by)."""
        return tuple(f.name for f in fields(VisualTokens))

    def visual_tokens(self) -> VisualTokens:
        """These settings as a plain record (also on `ModelArguments`, which inherits the fields)."""
        return VisualTokens(**{name: getattr(self, name) for name in VisualTokens.names()})

    @classmethod
    def from_config(cls, config: VideoGemmaConfig, video_size: str = "middle") -> VisualTokens:
        """The settings a saved custom model was built with (its config does not record the VideoMamba size name:
        ``video_size`` stands in, the config's own widths still apply)."""
        return cls(
            num_frames=config.num_frames,
            keyframe_chunk_size=config.keyframe_chunk_size,
            keyframes_per_chunk=config.keyframes_per_chunk,
            image_output_grid=config.projector_config.image_output_grid,
            video_output_grid=config.projector_config.video_output_grid,
            projector_norm=config.projector_config.norm_position,
            video_size=video_size,
        )

    @property
    def num_keyframes(self) -> int:
        """Frames key-frame selection keeps (what VideoMamba sees)."""
        return count_keyframes(self.num_frames, self.keyframe_chunk_size, self.keyframes_per_chunk)

    def as_dict(self) -> dict:
        return asdict(self.visual_tokens())

    def check(self) -> None:
        """A clear error naming the flag for a setting out of range."""
        for name in ("num_frames", "keyframe_chunk_size", "keyframes_per_chunk", "image_output_grid",
                     "video_output_grid"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.projector_norm not in NORM_POSITIONS:
            raise ValueError(f"--projector_norm must be one of {NORM_POSITIONS}, got {self.projector_norm!r}")
        if self.video_size not in VIDEOMAMBA_SIZES:
            raise ValueError(f"--video_size must be one of {sorted(VIDEOMAMBA_SIZES)}, got {self.video_size!r}")
