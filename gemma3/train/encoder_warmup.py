"""Supervised warm-up of encoders that have no checkpoint: CLIP and VideoMamba trained as one clip classifier on the
training clips' labels, before the language model sees them.

The gpu preset starts from CLIP and VideoMamba checkpoints; offline, the cpu preset has none and builds both small
and random. Trained only through the frozen language model, such encoders learned too little in the job's time
(exercise / form-error accuracy 0.46 / 0.13 on the rendered coach; a linear probe on their tokens, trained on the
labels directly, reached no more). A classifier step without the language model costs a twentieth of a
language-model step on an AVX2 CPU (0.23 against 4.8 s; VideoMamba's scan trains through its fused kernel's
backward), so the encoders first learn to tell the clips apart here, on exactly the tokens the projector receives
(CLIP pooled to ``image_output_grid``, VideoMamba to ``video_output_grid``, per frame), and the language-model stages
then start from them, frozen, as the gpu preset's start from checkpoints.

The head reads each frame's pooled tokens, mixes neighbouring frames (a temporal convolution) and keeps the
strongest response over time: a form error shows at one point of the repetition (the bottom of a squat), not in
the clip's average (CLIP alone on 1,920 clips, 1,200 steps: 0.81 / 0.44 exercise / form accuracy with the average
of the tokens as the head, 0.95 / 0.61 with this one).

The encoders are written as releases the builder loads: CLIP as a ``CLIPVisionModel`` folder, VideoMamba as a
supervised VideoMamba checkpoint (``{"model": ...}`` with ``norm_f`` and a ``head``, OpenGVLab's fine-tuned layout).
``warmup.json``, written last, marks a finished warm-up; a rerun with the same settings keeps it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import CLIPVisionConfig

from gemma3.data.dataset import skip_kind
from gemma3.data.formats import load_annotations
from gemma3.data.media import MediaError, preprocess_frames, read_clip
from gemma3.model.builder import video_encoder_config_for
from gemma3.model.encoders import CLIPImageEncoder, clip_to_imagenet
from gemma3.model.videomamba import VideoMambaModel
from gemma3.model.visual_tokens import VisualTokens
from gemma3.utils.errors import UserError, writing
from gemma3.utils.files import write_json_atomic

logger = logging.getLogger(__name__)

DONE = "warmup.json"
IMAGE_ENCODER_DIR = "image_encoder"
VIDEO_ENCODER_FILE = "videomamba_warmup.pth"


@dataclass(frozen=True)
class WarmupConfig:
    steps: int = 1200
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    hidden: int = 128  # the head's temporal convolution width
    seed: int = 0
    bf16: bool = False
    max_bad_fraction: float = 0.05


@dataclass(frozen=True)
class WarmedEncoders:
    """Where the warm-up wrote the encoders, and how well its classifier did on its own training clips."""

    image_encoder: Path
    video_encoder: Path | None
    classes: tuple[str, ...]
    train_accuracy: float
    skipped: int
    heldout_accuracy: float | None = None  # on ``heldout`` clips, when given (reported, never used to choose)


class ClipClassifier(nn.Module):
    """CLIP and VideoMamba tokens of a clip -> class logits, through the tokens the projector receives."""

    def __init__(self, clip: CLIPImageEncoder, video: VideoMambaModel | None, visual: VisualTokens, classes: int,
                 hidden: int = 128) -> None:  # fmt: skip
        super().__init__()
        self.clip, self.video = clip, video
        self.image_grid, self.video_grid = visual.image_output_grid, visual.video_output_grid
        width = clip.hidden_size * self.image_grid**2
        if video is not None:
            width += video.config.embed_dim * self.video_grid**2
        self.temporal = nn.Conv1d(width, hidden, kernel_size=3, padding=1)
        self.head = nn.Linear(hidden, classes)

    @staticmethod
    def _pool(tokens: torch.Tensor, grid: int) -> torch.Tensor:
        """[N, g*g, D] -> [N, grid*grid*D] (the ETP projector's average pooling)."""
        side = math.isqrt(tokens.shape[1])
        x = tokens.transpose(1, 2).unflatten(2, (side, side))  # [N, D, g, g]
        return F.adaptive_avg_pool2d(x, grid).flatten(1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, T, 3, S, S] (CLIP-normalised) -> logits [B, classes]."""
        b, t = pixels.shape[:2]
        feats = [self._pool(self.clip(pixels.flatten(0, 1)), self.image_grid).unflatten(0, (b, t))]  # [B, T, W1]
        if self.video is not None:
            v = self.video(clip_to_imagenet(pixels))  # [B, T, g*g, C]
            feats.append(self._pool(v.flatten(0, 1), self.video_grid).unflatten(0, (b, t)))  # [B, T, W2]
        x = torch.cat(feats, -1).float().transpose(1, 2)  # [B, W, T]
        return self.head(F.gelu(self.temporal(x)).amax(-1))  # [B, classes]


def load_labelled_clips(spec: str, num_frames: int, size: int, max_bad_fraction: float = 0.05,
                        media_root: str | Path | None = None) -> tuple[torch.Tensor, list[str], int]:  # fmt: skip
    """Every clip of ``spec`` (an annotation file or release whose samples are answered with their label) read as
    the media plugin reads it: pixels [N, T, 3, S, S] (fp16, CLIP-normalised), their labels, and how many clips
    were skipped as unreadable."""
    samples = load_annotations(spec, media_root=media_root)
    clips, labels, skipped = [], [], 0
    for sample in tqdm(samples, desc="warm-up: reading clips", mininterval=5):
        videos = [m for m in sample.media if m.kind == "video"]
        if len(videos) != 1 or not sample.reference:
            raise UserError(f"{sample.source} (id {sample.id}): the encoder warm-up needs one video and a label")
        try:
            frames = read_clip(videos[0].path, num_frames).frames
        except (MediaError, OSError) as err:
            skipped += 1
            logger.warning("warm-up: skipping %s (id %s, %s): %s", sample.source, sample.id, skip_kind(err), err)
            if skipped > max_bad_fraction * len(samples):
                raise UserError(f"{skipped} of {len(samples)} clips of {spec} are unreadable") from err
            continue
        clips.append(preprocess_frames(frames, size).half())  # [T, 3, S, S]
        labels.append(sample.reference.strip())
    if not clips:
        raise UserError(f"{spec}: no readable clip for the encoder warm-up")
    return torch.stack(clips), labels, skipped


def _schedule(cfg: WarmupConfig):
    """Linear warm-up, then a cosine down to 5% of the learning rate."""
    return lambda step: (
        min(1.0, (step + 1) / cfg.warmup_steps) * max(0.05, 0.5 + 0.5 * math.cos(math.pi * step / cfg.steps))
    )


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool, batch: int = 64) -> float:
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hits = sum(int((model(x[i : i + batch].float()).argmax(-1) == y[i : i + batch]).sum())
                   for i in range(0, len(x), batch))  # fmt: skip
    model.train()
    return hits / len(x)


def warm_up_encoders(
    train_spec: str,
    out_dir: str | Path,
    clip_config: dict,
    videomamba_config: dict | None,
    visual: VisualTokens,
    cfg: WarmupConfig | None = None,
    heldout: str | None = None,
    media_root: str | Path | None = None,
) -> WarmedEncoders:
    """Train CLIP (built from ``clip_config``) and VideoMamba (from ``videomamba_config``; None: CLIP only) as a
    classifier of ``train_spec``'s labels and write them to ``out_dir``; a finished warm-up with the same settings
    there is kept. ``heldout``: labelled clips (same classes) the classifier is scored on at the end; ``media_root``:
    where an annotation file's media paths start (default: its folder)."""
    cfg = cfg or WarmupConfig()
    out = Path(out_dir)
    params = {"train": train_spec, "clip": clip_config, "videomamba": videomamba_config, "visual": visual.as_dict(),
              **asdict(cfg)}  # fmt: skip
    params = json.loads(json.dumps(params))
    done = _finished(out, params)
    if done is not None:
        logger.info("encoder warm-up: %s already holds it (train accuracy %.3f); keeping it", out, done.train_accuracy)
        return done
    torch.manual_seed(cfg.seed)
    clip_cfg = CLIPVisionConfig(**clip_config)
    pixels, names, skipped = load_labelled_clips(train_spec, visual.num_frames, clip_cfg.image_size,
                                                 cfg.max_bad_fraction, media_root)  # fmt: skip
    classes = tuple(sorted(set(names)))
    targets = torch.tensor([classes.index(n) for n in names])
    video = None
    if videomamba_config is not None:
        video = VideoMambaModel(video_encoder_config_for(visual, clip_cfg.image_size, videomamba_config))
    model = ClipClassifier(CLIPImageEncoder(clip_cfg), video, visual, len(classes), cfg.hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    gen = torch.Generator().manual_seed(cfg.seed)
    logger.info("encoder warm-up: %d clips, %d classes, %d steps of %d (%d unreadable clips skipped)", len(pixels),
                len(classes), cfg.steps, cfg.batch, skipped)  # fmt: skip
    start, losses = time.perf_counter(), []
    bar = tqdm(range(cfg.steps), desc="warm-up", mininterval=5)
    for step in bar:
        idx = torch.randint(0, len(pixels), (cfg.batch,), generator=gen)
        x = pixels[idx].float()  # [B, T, 3, S, S]
        if torch.rand(1, generator=gen).item() < 0.5:
            x = x.flip(-1)  # a mirrored clip shows the same exercise and form
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = F.cross_entropy(model(x), targets[idx])
        if not torch.isfinite(loss):
            raise RuntimeError(f"encoder warm-up: the loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.3f}")
            logger.info("warm-up step %d: loss %.3f", step + 1, sum(losses[-100:]) / len(losses[-100:]))
    accuracy = _accuracy(model, pixels, targets, cfg.bf16)
    held = None
    if heldout is not None:
        x, held_names, _ = load_labelled_clips(heldout, visual.num_frames, clip_cfg.image_size, 1.0, media_root)
        y = torch.tensor([classes.index(n) if n in classes else -1 for n in held_names])
        held = _accuracy(model, x, y, cfg.bf16)
    logger.info("encoder warm-up: %.0f s, train accuracy %.3f, held-out accuracy %s", time.perf_counter() - start,
                accuracy, "-" if held is None else f"{held:.3f}")  # fmt: skip
    result = WarmedEncoders(out / IMAGE_ENCODER_DIR, None if video is None else out / VIDEO_ENCODER_FILE, classes,
                            accuracy, skipped, held)  # fmt: skip
    _save(model, result, params)
    return result


def _save(model: ClipClassifier, result: WarmedEncoders, params: dict) -> None:
    out = result.image_encoder.parent
    out.mkdir(parents=True, exist_ok=True)
    with writing(out):
        model.clip.vision_model.save_pretrained(result.image_encoder)
        if result.video_encoder is not None:
            state = {**model.video.state_dict(), "head.weight": model.head.weight.detach(),
                     "head.bias": model.head.bias.detach()}  # fmt: skip
            torch.save({"model": state}, result.video_encoder)
        record = {"params": params, "classes": list(result.classes), "train_accuracy": result.train_accuracy,
                  "heldout_accuracy": result.heldout_accuracy, "skipped": result.skipped,
                  "video_encoder": result.video_encoder is not None}  # fmt: skip
        write_json_atomic(out / DONE, record)  # last: its presence marks a finished warm-up


def _finished(out: Path, params: dict) -> WarmedEncoders | None:
    try:
        record = json.loads((out / DONE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("params") != params:
        logger.info("encoder warm-up: %s holds one with other settings; training again", out)
        return None
    video = out / VIDEO_ENCODER_FILE if record.get("video_encoder") else None
    return WarmedEncoders(out / IMAGE_ENCODER_DIR, video, tuple(record["classes"]), record["train_accuracy"],
                          record.get("skipped", 0), record.get("heldout_accuracy"))  # fmt: skip
