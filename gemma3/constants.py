"""Constants shared by every layer: special tags, ignore index, media defaults.

Nothing here is mutable state; every module reads these as plain values.
"""

from __future__ import annotations

# Loss masking: label value ignored by cross-entropy.
IGNORE_INDEX: int = -100

# Media tags written in annotation text. The processor expands each tag into the exact number of placeholder
# token ids the model fills with visual features (see `mm_utils.expand_media_tags`).
VIDEO_TAG: str = "<video>"
IMAGE_TAG: str = "<image>"
MEDIA_TAGS: tuple[str, ...] = (VIDEO_TAG, IMAGE_TAG)

# Frame sampling defaults (Mobile-VideoGPT): 16 frames, 224 px, chunks of 8, top-4 key frames per chunk.
DEFAULT_NUM_FRAMES: int = 16
DEFAULT_IMAGE_SIZE: int = 224
DEFAULT_KEYFRAME_CHUNK: int = 8
DEFAULT_KEYFRAMES_PER_CHUNK: int = 4
# Frames per video for the native Gemma VLMs (each frame costs ~260 tokens) when the model folder records none.
DEFAULT_NATIVE_FRAMES: int = 8

# The question asked of each video when inference runs over a folder of clips.
DEFAULT_PROMPT: str = "What action is being performed in this video?"

# Pixel normalisation. CLIP (openai) statistics; VideoMamba's official checkpoints use ImageNet statistics.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Default checkpoints (HF ids). Local folders work wherever an id does.
DEFAULT_LLM: str = "google/gemma-3n-E2B-it"
DEFAULT_IMAGE_ENCODER: str = "openai/clip-vit-base-patch16"
DEFAULT_VIDEO_ENCODER: str = "OpenGVLab/VideoMamba"
DEFAULT_VIDEO_ENCODER_FILE: str = "videomamba_m16_25M_f8_res224.pth"

# Video file extensions the readers accept.
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Fraction of bad samples tolerated at training time before the run stops.
DEFAULT_MAX_BAD_FRACTION: float = 0.01
