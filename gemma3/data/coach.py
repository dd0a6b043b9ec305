"""The rendered coach dataset: people exercising (`gemma3.data.exercises`) written in QEVD's own release layouts, so
the main job reads it through the readers users point at the real dataset.

    python -m gemma3.data.coach --out data/qevd_coach --seed 0

One ROOT holds both parts, as a QEVD download does:

- QEVD-FIT-300K short clips: ``ROOT/fine_grained_labels.json`` (``video_path``, ``labels`` = ``["<exercise> -
  <form>"]``, ``labels_descriptive`` = ``["<exercise> - <feedback sentence>"]``, ``split``) and the clips in
  ``ROOT/short_clips/``. Every (exercise, form) label, and standing between exercises (``rest - getting ready``),
  gets ``clips_per_label`` clips, each a new person, camera, room, pace and starting phase; each clip's sentence is
  one of its label's phrasings, drawn at random. Read as ``qevd_fit_300k:ROOT:train`` / ``:test``.
- QEVD-FIT-COACH long sessions: ``ROOT/QEVD-FIT-COACH-Benchmark/feedbacks_long_range.json`` with
  ``long_range_videos/<id>.mp4`` and the per-frame ``<id>_timestamps.npy`` (UNIX nanoseconds), as FitCoach reads
  them. A session is one person doing ``exercises_per_session`` exercises, each after a few seconds of rest, in
  ``runs_per_exercise`` runs of one form each (consecutive runs differ). The coach speaks at the start of each rest
  (``"First up are squats!"``, ``"Moving on to lunges!"``, and the closing words: ``is_transition``), and once per
  run, one repetition after the run's form begins (a coach reacts to what it has seen): ``feedbacks`` holds, per
  frame, the last thing said, and ``feedback_timestamps`` the moment each was said on the release's clock
  (FitCoach's: the npy clock
  + 8 h). Read as ``qevd_fit_coach:ROOT:benchmark``.

Clips are lossless H.264 (the only setting that decodes to the same pixels in every process), so the same seed
writes the same bytes; ``checksums.sha256`` and ``dataset_info.json`` (written last) mark a complete dataset.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gemma3.data import exercises as X
from gemma3.data.media import write_video
from gemma3.data.releases.qevd import CLOCK_OFFSET_S
from gemma3.data.synthetic import sha256, verify_dataset
from gemma3.utils.errors import run_main
from gemma3.utils.files import write_json_atomic

logger = logging.getLogger(__name__)

GENERATOR = "gemma3.data.coach"
BENCHMARK = "QEVD-FIT-COACH-Benchmark"
START_NS = 1_700_000_000 * 10**9  # the sessions' first frame on the npy clock


@dataclass(frozen=True)
class CoachConfig:
    seed: int = 0
    size: int = 64
    fps: int = 4
    clip_frames: int = 8  # a short clip: 2 s at 4 fps
    clips_per_label: int = 40
    test_fraction: float = 0.25
    sessions: int = 4
    exercises_per_session: int = 3
    runs_per_exercise: int = 2
    rest_seconds: tuple[float, float] = (2.5, 3.5)
    run_seconds: tuple[float, float] = (4.5, 7.0)
    crf: int = 0  # lossless (see gemma3.data.synthetic.SyntheticConfig.crf)

    def check(self) -> None:
        if self.clips_per_label < 2 or self.clip_frames < 2 or self.size < 32 or self.sessions < 0:
            raise ValueError(
                "coach dataset: clips_per_label >= 2, clip_frames >= 2, size >= 32 and sessions >= 0 (got "
                f"{self.clips_per_label}, {self.clip_frames}, {self.size}, {self.sessions})"
            )
        if not 0 < self.test_fraction < 1 or not 1 <= self.exercises_per_session <= len(X.EXERCISES):
            raise ValueError(f"coach dataset: test_fraction in (0, 1) and 1..{len(X.EXERCISES)} exercises per session")


# ---------------------------------------------------------------- short clips (QEVD-FIT-300K)


def short_clip(rng: np.random.Generator, cfg: CoachConfig, exercise: str, form: str) -> np.ndarray:
    """One clip [T, S, S, 3] uint8 of a new person doing ``exercise`` with ``form`` (``REST``: standing)."""
    performer = X.Performer.random(rng, cfg.size, exercise)
    if exercise == X.REST:
        return X.standing(performer, cfg.clip_frames)
    return X.render_frames(performer, exercise, [form] * cfg.clip_frames, cfg.fps, phase0=float(rng.uniform(0, 1)))


def write_short_clips(root: Path, rng: np.random.Generator, cfg: CoachConfig) -> list[dict]:
    """The clips and their ``fine_grained_labels.json`` records; each label's clips split by ``test_fraction``."""
    pairs = [(e, f) for e, forms in X.FORMS.items() for f in forms] + [(X.REST, X.REST_FORM)]
    n_test = max(1, int(round(cfg.clips_per_label * cfg.test_fraction)))
    records = []
    for exercise, form in pairs:
        for k in range(cfg.clips_per_label):
            name = f"{len(records):08d}.mp4"
            write_video(root / "short_clips" / name, short_clip(rng, cfg, exercise, form), fps=cfg.fps, crf=cfg.crf)
            records.append({
                "video_path": f"./{name}",
                "labels": [X.label(exercise, form)],
                "labels_descriptive": [X.feedback(exercise, form, rng)],
                "split": "test" if k < n_test else "train",
            })  # fmt: skip
        logger.info("short clips: %s done", X.label(exercise, form))
    return records


# ---------------------------------------------------------------- long sessions (QEVD-FIT-COACH)


def _forms_for_runs(rng: np.random.Generator, exercise: str, runs: int) -> list[str]:
    forms, previous = [], None
    for _ in range(runs):
        form = str(rng.choice([f for f in X.FORMS[exercise] if f != previous]))
        forms.append(form)
        previous = form
    return forms


def session(rng: np.random.Generator, cfg: CoachConfig) -> tuple[np.ndarray, list[dict]]:
    """Frames [T, S, S, 3] of one session and what the coach said: ``{"frame", "text", "is_transition"}``."""
    body = X.Body.random(rng)
    order = [str(e) for e in rng.permutation(np.array(X.EXERCISES, dtype=object))[: cfg.exercises_per_session]]
    frames: list[np.ndarray] = []
    said: list[dict] = []
    for i, exercise in enumerate(order):
        performer = X.Performer.random(rng, cfg.size, exercise, body=body)
        said.append({"frame": sum(len(f) for f in frames), "is_transition": True,
                     "text": f"{'First up are' if i == 0 else 'Moving on to'} {exercise}!"})  # fmt: skip
        frames.append(X.standing(performer, int(round(rng.uniform(*cfg.rest_seconds) * cfg.fps))))
        phase = float(rng.uniform(0, 1))
        for form in _forms_for_runs(rng, exercise, cfg.runs_per_exercise):
            n = int(round(rng.uniform(*cfg.run_seconds) * cfg.fps))
            start = sum(len(f) for f in frames)
            # the coach speaks one repetition into the run (a plank has no repetitions: after the same time)
            said.append({"frame": start + int(round(performer.rep_seconds * cfg.fps)), "is_transition": False,
                         "text": X.feedback(exercise, form, rng)})  # fmt: skip
            frames.append(X.render_frames(performer, exercise, [form] * n, cfg.fps, phase0=phase))
            phase += n / cfg.fps / performer.rep_seconds  # the next run continues the movement
    # the closing words end the last exercise's segment, as a transition ends each one before it
    said.append({"frame": sum(len(f) for f in frames), "is_transition": True, "text": "That's the workout, great job!"})
    frames.append(X.standing(performer, int(round(cfg.rest_seconds[0] * cfg.fps))))
    return np.concatenate(frames), said


def coach_record(vid: str, frames: int, said: list[dict], fps: int) -> tuple[dict, np.ndarray]:
    """The ``feedbacks_long_range.json`` record of one session and its per-frame timestamps (int64 ns)."""
    stamps = START_NS + np.arange(frames, dtype=np.int64) * (10**9 // fps)  # [frames]
    per_frame = [""] * frames
    for k, s in enumerate(said):
        end = said[k + 1]["frame"] if k + 1 < len(said) else frames
        per_frame[s["frame"] : end] = [s["text"]] * (end - s["frame"])
    clock = START_NS / 1e9 + CLOCK_OFFSET_S
    record = {
        "long_range_video_file": f"long_range_videos/{vid}.mp4",
        "video_timestamps": f"long_range_videos/{vid}_timestamps.npy",
        "feedbacks": per_frame,
        "feedback_timestamps": [round(clock + s["frame"] / fps, 3) for s in said],
        "is_transition": [s["is_transition"] for s in said],
    }
    return record, stamps


def write_sessions(root: Path, rng: np.random.Generator, cfg: CoachConfig) -> list[dict]:
    folder = root / BENCHMARK
    records = []
    for i in range(cfg.sessions):
        vid = f"{i:04d}"
        frames, said = session(rng, cfg)
        write_video(folder / "long_range_videos" / f"{vid}.mp4", frames, fps=cfg.fps, crf=cfg.crf)
        record, stamps = coach_record(vid, len(frames), said, cfg.fps)
        np.save(folder / record["video_timestamps"], stamps)
        records.append(record)
        logger.info("session %d/%d: %.0f s, %d things said", i + 1, cfg.sessions, len(frames) / cfg.fps, len(said))
    (folder / "feedbacks_long_range.json").write_text(json.dumps(records, indent=1))
    return records


# ---------------------------------------------------------------- the dataset


def make_coach_dataset(root: str | Path, cfg: CoachConfig | None = None) -> dict:
    """Write the dataset into ``root`` (kept as it is when a complete one with the same parameters is there)."""
    cfg = cfg or CoachConfig()
    cfg.check()
    root = Path(root)
    params = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, as they read back
    info_path = root / "dataset_info.json"
    old = generated_info(root)
    if old is None and root.exists() and any(root.iterdir()):
        raise ValueError(f"{root}: holds files the coach generator did not write (a real release?); "
                         "give an empty or new folder")  # fmt: skip
    if old is not None:
        if old.get("params") == params and not verify_dataset(root):
            logger.info("%s already holds this coach dataset (checksums verified); keeping it", root)
            return old
        logger.info("%s: an earlier or interrupted coach dataset; writing it again", root)
    root.mkdir(parents=True, exist_ok=True)
    # marked as this generator's, not complete, before the first file: a rerun knows the folder is its own
    info_path.write_text(json.dumps({"generator": GENERATOR, "params": params, "complete": False}))
    rng = np.random.default_rng(cfg.seed)
    clips = write_short_clips(root, rng, cfg)
    (root / "fine_grained_labels.json").write_text(json.dumps(clips, indent=1))
    sessions = write_sessions(root, rng, cfg) if cfg.sessions else []
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix in (".mp4", ".npy"))
    files += ["fine_grained_labels.json"] + ([f"{BENCHMARK}/feedbacks_long_range.json"] if sessions else [])
    (root / "checksums.sha256").write_text("".join(f"{sha256(root / f)}  {f}\n" for f in files))
    counts = {s: sum(r["split"] == s for r in clips) for s in ("train", "test")}
    info = {"generator": GENERATOR, "params": params, "counts": {**counts, "sessions": len(sessions)},
            "labels": X.all_labels(), "complete": True}  # fmt: skip
    write_json_atomic(info_path, info)  # last: its presence marks a finished dataset
    return info


def preview_png(out: str | Path, cfg: CoachConfig | None = None, frames: int = 3) -> Path:
    """A contact sheet of the short clips: one row per label (a new person each), ``frames`` frames across the
    clip, the label written above each row."""
    from PIL import Image, ImageDraw

    cfg = cfg or CoachConfig()
    rng = np.random.default_rng(cfg.seed)
    pairs = [(e, f) for e, forms in X.FORMS.items() for f in forms] + [(X.REST, X.REST_FORM)]
    cell, pad, cols = cfg.size * 2, 14, 2
    rows = (len(pairs) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (frames * cell + 8), rows * (cell + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (exercise, form) in enumerate(pairs):
        clip = short_clip(rng, cfg, exercise, form)
        x0, y0 = (i % cols) * (frames * cell + 8), (i // cols) * (cell + pad)
        draw.text((x0 + 2, y0), X.label(exercise, form), fill=(0, 0, 0))
        for k, t in enumerate(np.linspace(0, len(clip) - 1, frames).round().astype(int)):
            sheet.paste(Image.fromarray(clip[t]).resize((cell, cell), Image.NEAREST), (x0 + k * cell, y0 + pad))
    sheet.save(out)
    return Path(out)


def generated_info(root: str | Path) -> dict | None:
    """``dataset_info.json`` of a folder this generator writes (complete or not), else None."""
    try:
        info = json.loads((Path(root) / "dataset_info.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) and info.get("generator") == GENERATOR else None


def specs(root: str | Path) -> dict[str, str]:
    """The release specs of a coach dataset: ``train`` / ``test`` short clips (answered with the coach's sentence),
    ``train_labels`` / ``test_labels`` (the same clips answered with their labels), ``sessions`` (the long
    videos)."""
    return {
        "train": f"qevd_fit_300k:{root}:train",
        "test": f"qevd_fit_300k:{root}:test",
        "train_labels": f"qevd_fit_300k_labels:{root}:train",
        "test_labels": f"qevd_fit_300k_labels:{root}:test",
        "sessions": f"qevd_fit_coach:{root}:benchmark",
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/qevd_coach")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clips_per_label", type=int, default=CoachConfig.clips_per_label)
    ap.add_argument("--test_fraction", type=float, default=CoachConfig.test_fraction)
    ap.add_argument("--sessions", type=int, default=CoachConfig.sessions)
    ap.add_argument("--size", type=int, default=CoachConfig.size)
    ap.add_argument("--preview", default=None, help="only write a contact sheet of the short clips to this PNG")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = CoachConfig(seed=args.seed, clips_per_label=args.clips_per_label, sessions=args.sessions, size=args.size,
                      test_fraction=args.test_fraction)  # fmt: skip
    if args.preview:
        print(preview_png(args.preview, cfg))
        return
    info = make_coach_dataset(args.out, cfg)
    print(json.dumps(info["counts"]))


if __name__ == "__main__":
    sys.exit(run_main(main))
