"""Long synthetic videos with time-stamped ground truth, for streaming and timed evaluation.

    python -m gemma3.data.long_videos --out data/long_videos --videos 4 --segments 6

Each video chains action segments of the synthetic action set (`gemma3.data.synthetic.render_clip`: the same
shapes, colours and backgrounds the main job trains on), each segment 3-8 s long with its own shape and background,
so every boundary is a visible change. A segment repeats one clip of the training clips' length (``rep_frames``,
16 frames = 2 s at 8 fps), like the repetitions of an exercise: any window of that length shows the motion at the
speed the model was trained on (one 6 s sweep would move three times slower than any training clip). Segment
lengths are rounded to whole repetitions. The ground truth (``timed.json``) lists, per video, one event at the start
of every segment: ``{"t": seconds, "text": <feedback>, "label": <action>}``, the format `gemma3.evaluation.timed`
reads, plus the segment boundaries and the duration.

Layout: ``videos/long_<i>.mp4`` and ``timed.json`` (``[{"video", "duration", "fps", "segments", "events"}]``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gemma3.data.media import write_video
from gemma3.data.synthetic import ACTIONS, SyntheticConfig, render_clip
from gemma3.utils.errors import run_main

logger = logging.getLogger(__name__)
GROUND_TRUTH = "timed.json"


@dataclass
class LongVideoConfig:
    videos: int = 4
    segments: int = 6  # actions per video
    min_seconds: float = 3.0
    max_seconds: float = 8.0
    fps: int = 8
    size: int = 64
    seed: int = 0
    classes: tuple[str, ...] = ACTIONS
    rep_frames: int = SyntheticConfig().num_frames  # frames per repetition: the training clips' length
    crf: int = SyntheticConfig().crf  # lossless: the same pixels in every process (see SyntheticConfig)


def feedback_text(action: str, shape: str) -> str:
    """The feedback a coach would give when an action starts (what the timed evaluation compares with)."""
    return f"{action} - the {shape} is now {action}"


def make_long_video(rng: np.random.Generator, cfg: LongVideoConfig) -> tuple[np.ndarray, list[dict]]:
    """Frames [T, S, S, 3] of one video and its segments ``{"start", "end", "label", "text"}`` (seconds)."""
    frames, segments, t = [], [], 0
    previous = None
    for _ in range(cfg.segments):
        action = str(rng.choice([a for a in cfg.classes if a != previous]))  # consecutive segments differ
        reps = max(1, int(round(rng.uniform(cfg.min_seconds, cfg.max_seconds) * cfg.fps / cfg.rep_frames)))
        rep_cfg = replace(SyntheticConfig(), num_frames=cfg.rep_frames, size=cfg.size, fps=cfg.fps)
        clip, params = render_clip(action, rng, rep_cfg)
        n = reps * cfg.rep_frames
        frames.append(np.concatenate([clip] * reps))
        segments.append({"start": t / cfg.fps, "end": (t + n) / cfg.fps, "label": action,
                         "text": feedback_text(action, params["shape"])})  # fmt: skip
        t += n
        previous = action
    return np.concatenate(frames), segments


def make_long_videos(out: str | Path, cfg: LongVideoConfig | None = None) -> list[dict]:
    """Write ``cfg.videos`` long videos and their ground truth under ``out``; returns the ground-truth records."""
    cfg = cfg or LongVideoConfig()
    if cfg.min_seconds <= 0 or cfg.max_seconds < cfg.min_seconds:
        raise ValueError(f"segment length {cfg.min_seconds}-{cfg.max_seconds} s is not a valid range")
    out = Path(out)
    rng = np.random.default_rng(cfg.seed)
    records = []
    for i in range(cfg.videos):
        frames, segments = make_long_video(rng, cfg)
        rel = f"videos/long_{i:03d}.mp4"
        write_video(out / rel, frames, fps=cfg.fps, crf=cfg.crf, gop=cfg.fps * 2)
        events = [{"t": s["start"], "text": s["text"], "label": s["label"]} for s in segments]
        records.append({"video": rel, "duration": len(frames) / cfg.fps, "fps": cfg.fps, "segments": segments,
                        "events": events})  # fmt: skip
        logger.info("%s: %.1f s, %d segments", rel, len(frames) / cfg.fps, len(segments))
    (out / GROUND_TRUTH).write_text(json.dumps(records, indent=1))
    return records


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--segments", type=int, default=6)
    ap.add_argument("--min_seconds", type=float, default=3.0)
    ap.add_argument("--max_seconds", type=float, default=8.0)
    ap.add_argument("--fps", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rep_frames", type=int, default=SyntheticConfig().num_frames, help="frames per repetition")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = LongVideoConfig(args.videos, args.segments, args.min_seconds, args.max_seconds, args.fps, args.size,
                          args.seed, rep_frames=args.rep_frames)  # fmt: skip
    make_long_videos(args.out, cfg)


if __name__ == "__main__":
    sys.exit(run_main(main))
