"""How a model's inputs are made, saved with the model: frames per video, sampling, image size, normalisation and
the chat template (a processor config in the Hugging Face sense, ``frame_processor_config.json``).

Training writes it into every output and checkpoint; inference, evaluation and the lmms-eval plugin read it back,
so a model trained on 4 frames is evaluated on 4. A command-line value overrides the saved one (and is logged);
a folder written before this file existed loads with the family's defaults and a warning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

logger = logging.getLogger(__name__)

PROCESSING_FILE = "frame_processor_config.json"
SAMPLING_MODES = ("uniform", "fps")


@dataclass(frozen=True)
class ProcessingConfig:
    """Frame sampling and preprocessing of one model.

    Attributes:
        family: the model family (`gemma3.model.families`) these settings belong to.
        num_frames: frames sampled per video.
        frame_sampling: ``uniform`` over the clip, or ``fps`` (``fps`` frames per second, then uniform).
        fps: frames per second for ``fps`` sampling.
        image_size: square side the frames are resized / cropped to (None: the processor decides).
        image_mean / image_std: per-channel normalisation (None: the processor decides).
        chat_template: registered template name (`conversation.get_template`).
    """

    family: str
    num_frames: int
    frame_sampling: str = "uniform"
    fps: float = 1.0
    image_size: int | None = None
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    chat_template: str | None = None
    processor_class: str = "FrameProcessor"

    def __post_init__(self) -> None:
        if int(self.num_frames) < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.frame_sampling not in SAMPLING_MODES:
            raise ValueError(f"frame_sampling must be one of {SAMPLING_MODES}, got {self.frame_sampling!r}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")

    def to_dict(self) -> dict:
        return asdict(self)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``frame_processor_config.json`` into ``folder``."""
        path = Path(folder) / PROCESSING_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ProcessingConfig | None:
        """The config saved in ``folder``, or None when it has none."""
        path = Path(folder) / PROCESSING_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("%s: ignoring unknown fields %s", path, unknown)
        for key in ("image_mean", "image_std"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err

    def with_overrides(self, **overrides) -> ProcessingConfig:
        """A copy with the non-None ``overrides`` applied; each change is logged."""
        changes = {k: v for k, v in overrides.items() if v is not None and getattr(self, k) != v}
        for key, value in changes.items():
            logger.info("processing: %s=%r overrides the model's %r", key, value, getattr(self, key))
        return replace(self, **changes) if changes else self


def resolve_processing(folder: str | Path | None, family, model, processor, **overrides) -> ProcessingConfig:
    """The processing to use with a loaded model: the folder's saved config (or the family's defaults, with a
    warning, for folders written before it was saved), then command-line ``overrides`` (None = keep)."""
    saved = ProcessingConfig.from_pretrained(folder) if folder is not None and Path(str(folder)).is_dir() else None
    if saved is None:
        saved = family.default_processing(model, processor)
        if folder is not None:
            logger.warning(
                "%s has no %s (saved before processing was recorded): using the %s defaults %s",
                folder,
                PROCESSING_FILE,
                family.name,
                json.dumps({k: v for k, v in saved.to_dict().items() if k != "processor_class"}),
            )
    elif saved.family != family.name:
        raise ValueError(f"{folder}/{PROCESSING_FILE} is for family {saved.family!r}, the model is {family.name!r}")
    return saved.with_overrides(**overrides)
