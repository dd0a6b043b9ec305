"""Procedural action videos: shapes performing distinct actions, in the QEVD-style layout the trainers read.

    python -m gemma3.data.synthetic --out data/synthetic_actions --clips-per-class 40

Each clip is a circle, square or triangle with a random bright colour, size, speed and start, over a dark
background (solid, gradient or noise) that varies per clip. Shapes are always brighter than the background, so the
action is visible whatever the colours. Augmented variants (colour jitter, background swap; never time reversal
or horizontal flips, which would change the label) stay in their source clip's split.

Layout: ``videos/<class>/<id>.mp4``, ``annotations/{train,val,test}.json`` (LLaVA style), ``classes.txt``,
``checksums.sha256`` and ``dataset_info.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gemma3.data.media import write_video
from gemma3.utils.errors import run_main
from gemma3.utils.files import write_json_atomic

logger = logging.getLogger(__name__)

ACTIONS = ("moving left", "moving right", "moving up", "moving down", "growing", "shrinking", "rotating", "bouncing")
SHAPES = ("circle", "square", "triangle")
QUESTION = "What action is being performed in this video?"


@dataclass
class SyntheticConfig:
    clips_per_class: int = 40
    num_frames: int = 16
    size: int = 64
    fps: int = 8
    variants: int = 1  # augmented copies per source clip
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    with_feedback: bool = False  # answer "<action> - <description>" (QEVD style) instead of the action alone
    classes: tuple[str, ...] = field(default=ACTIONS)
    # x264's constant rate factor. 0 is lossless, and the only setting whose files decode to the same pixels in every
    # process: with lossy settings x264 made different choices for the same frames in different runs (24 to 63 of
    # 1,024 clips changed between two generations with the same seed, some by up to 56 intensity levels), so a
    # same-seed run on a fresh clone trained on different data.
    crf: int = 0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(3)
    base = rng.uniform(0.0, 0.3, 3)
    if kind == 0:
        bg = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == 1:
        other = rng.uniform(0.0, 0.3, 3)
        ramp = np.linspace(0, 1, size)[:, None, None]
        bg = base * (1 - ramp) + other * ramp
        bg = np.broadcast_to(bg, (size, size, 3)).copy() if bg.shape[1] == 1 else bg
        if bg.shape[1] == 1:
            bg = np.repeat(bg, size, axis=1)
    else:
        bg = base + rng.uniform(-0.08, 0.08, (size, size, 3))
    return np.clip(bg, 0, 0.35)


def _mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    if shape == "circle":
        # An ellipse, so rotation is visible for circles too.
        return (u / r) ** 2 + (v / (0.55 * r)) ** 2 <= 1
    if shape == "square":
        return (np.abs(u) <= r) & (np.abs(v) <= 0.6 * r)
    # triangle: pointing along +u
    return (u >= -r) & (u <= r) & (np.abs(v) <= (r - u) * 0.5)


def render_clip(action: str, rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[np.ndarray, dict]:
    """One clip [T, S, S, 3] uint8 and its parameters."""
    s, t_n = cfg.size, cfg.num_frames
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = rng.uniform(0.7, 1.0, 3)
    r = rng.uniform(0.09, 0.15) * s
    travel = rng.uniform(0.35, 0.55) * s  # distance covered by moving actions
    cx, cy = rng.uniform(0.4, 0.6, 2) * s
    spin = rng.uniform(0.2, 0.4) * rng.choice([-1, 1])
    base_angle = rng.uniform(0, math.pi)
    bg = _background(rng, s)
    frames = np.empty((t_n, s, s, 3), np.uint8)
    for t in range(t_n):
        p = t / (t_n - 1) - 0.5  # -0.5 .. 0.5
        x, y, rr, ang = cx, cy, r, base_angle
        if action == "moving left":
            x = cx - p * travel
        elif action == "moving right":
            x = cx + p * travel
        elif action == "moving up":
            y = cy - p * travel
        elif action == "moving down":
            y = cy + p * travel
        elif action == "growing":
            rr = r * (0.5 + 1.5 * (p + 0.5))
        elif action == "shrinking":
            rr = r * (2.0 - 1.5 * (p + 0.5))
        elif action == "rotating":
            ang = base_angle + spin * t * 2.5
        elif action == "bouncing":
            y = cy + 0.3 * s * (abs(math.sin((p + 0.5) * 2 * math.pi)) - 0.5)
        img = bg.copy()
        img[_mask(shape, s, x, y, rr, ang)] = colour
        frames[t] = (img * 255).round().astype(np.uint8)
    params = {"shape": shape, "colour": colour.round(3).tolist(), "radius": round(float(r), 2)}
    return frames, params


def _jitter(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour-jittered copy (label preserving): per-channel gain and offset, brightness order kept."""
    gain = rng.uniform(0.85, 1.15, 3)
    out = frames.astype(np.float32) * gain + rng.uniform(-10, 10, 3)
    return np.clip(out, 0, 255).astype(np.uint8)


def _answer(action: str, params: dict, with_feedback: bool) -> str:
    if not with_feedback:
        return action
    return f"{action} - a {params['shape']} is {action} steadily across the frame"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_groups(groups: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Seeded assignment of whole groups (a source clip and its variants) to train/val/test."""
    order = sorted(groups)
    rng = np.random.default_rng(seed)
    rng.shuffle(order)
    n = len(order)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    out = {}
    for i, g in enumerate(order):
        out[g] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out


def write_dataset(out: Path, records: dict[str, list[dict]], classes: list[str], info: dict) -> dict:
    """Annotation files, classes.txt, checksums.sha256 and dataset_info.json for a prepared dataset."""
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, recs in records.items():
        (out / "annotations" / f"{split}.json").write_text(json.dumps(recs, indent=1))
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    videos = sorted({r["video"] for recs in records.values() for r in recs})
    lines = [f"{sha256(out / v)}  {v}" for v in videos]
    (out / "checksums.sha256").write_text("\n".join(lines) + "\n")
    info = {**info, "counts": {s: len(r) for s, r in records.items()}, "complete": True}
    # Written last and atomically: its presence marks a finished dataset.
    write_json_atomic(out / "dataset_info.json", info)
    return info


def verify_dataset(out: str | Path) -> list[str]:
    """Problems of a written dataset: no completion marker, or a clip missing or differing from its checksum."""
    out = Path(out)
    info_path, sums = out / "dataset_info.json", out / "checksums.sha256"
    if not info_path.is_file():
        return [f"{info_path}: missing (generation did not finish)"]
    try:
        if not json.loads(info_path.read_text()).get("complete"):
            return [f"{info_path}: not marked complete"]
    except json.JSONDecodeError as err:
        return [f"{info_path}: unreadable ({err})"]
    if not sums.is_file():
        return [f"{sums}: missing"]
    problems = []
    for line in sums.read_text().splitlines():
        digest, _, rel = line.partition("  ")
        path = out / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256(path) != digest:
            problems.append(f"{path}: checksum mismatch")
    return problems


def make_synthetic_dataset(out: str | Path, cfg: SyntheticConfig | None = None) -> dict:
    """Generate the dataset (idempotent: an existing dataset with the same parameters is kept)."""
    cfg = cfg or SyntheticConfig()
    out = Path(out)
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    if cfg.clips_per_class < 1 or not cfg.classes or cfg.num_frames < 2 or cfg.size < 16:
        raise ValueError(
            f"synthetic dataset: clips_per_class must be >= 1 (got {cfg.clips_per_class}), num_frames >= 2 (got "
            f"{cfg.num_frames}), size >= 16 (got {cfg.size}), with at least one class"
        )
    info_path = out / "dataset_info.json"
    if info_path.exists():
        try:
            old = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("params") == params:
            problems = verify_dataset(out)
            if not problems:
                logger.info("%s already holds this synthetic dataset (checksums verified); keeping it", out)
                return old
            logger.warning("%s: %d problems (%s); generating it again", out, len(problems), problems[0])
        info_path.unlink()  # an interrupted generation must never leave a valid-looking marker behind
    rng = np.random.default_rng(cfg.seed)
    groups: dict[str, list[dict]] = {}
    for ci, action in enumerate(cfg.classes):
        for k in range(cfg.clips_per_class):
            gid = f"{action.replace(' ', '_')}_{k:04d}"
            frames, p = render_clip(action, rng, cfg)
            copies = [(gid, frames)] + [(f"{gid}_aug{j + 1}", _jitter(frames, rng)) for j in range(cfg.variants)]
            recs = []
            for vid, clip in copies:
                rel = f"videos/{action.replace(' ', '_')}/{vid}.mp4"
                write_video(out / rel, clip, fps=cfg.fps, crf=cfg.crf)
                recs.append(
                    {
                        "id": vid,
                        "video": rel,
                        "label": action,
                        "group": gid,
                        "conversations": [
                            {"from": "human", "value": f"<video>\n{QUESTION}"},
                            {"from": "gpt", "value": _answer(action, p, cfg.with_feedback)},
                        ],
                    }
                )
            groups[gid] = recs
        logger.info("class %d/%d (%s) done", ci + 1, len(cfg.classes), action)
    assignment = split_groups(list(groups), cfg.split, cfg.seed)
    records: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for gid, recs in groups.items():
        split = assignment[gid]
        # Evaluation splits keep only the source clips; variants are training data.
        records[split] += recs if split == "train" else recs[:1]
    return write_dataset(out, records, list(cfg.classes), {"generator": "gemma3.data.synthetic", "params": params})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/synthetic_actions")
    ap.add_argument("--clips-per-class", type=int, default=40)
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--variants", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-feedback", action="store_true")
    ap.add_argument("--crf", type=int, default=SyntheticConfig.crf, help="x264 quality (0: lossless, reproducible)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = _make_from_args(args)
    print(json.dumps(info["counts"]))


def _make_from_args(args: argparse.Namespace) -> dict:
    return make_synthetic_dataset(
        args.out,
        SyntheticConfig(
            clips_per_class=args.clips_per_class,
            num_frames=args.num_frames,
            size=args.size,
            variants=args.variants,
            seed=args.seed,
            with_feedback=args.with_feedback,
            crf=args.crf,
        ),
    )


if __name__ == "__main__":
    sys.exit(run_main(main))
