"""Synthetic action dataset and real-data preparation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from media_utils import make_frames, write_video

from gemma3.data.media import read_video
from gemma3.data.prepare import build_answer, prepare, source_id
from gemma3.data.synthetic import ACTIONS, SyntheticConfig, make_synthetic_dataset, render_clip


def _centroid(frame: np.ndarray, bg: np.ndarray) -> tuple[float, float, float]:
    mask = np.abs(frame.astype(int) - bg.astype(int)).sum(-1) > 120
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean(), mask.sum()


@pytest.mark.parametrize("action", ACTIONS[:6])
def test_motion_is_really_there(action):
    frames, _ = render_clip(action, np.random.default_rng(3), SyntheticConfig(num_frames=8, size=64))
    first, last = frames[0], frames[-1]
    bg = np.median(frames.reshape(-1, 3), axis=0)  # the background dominates every frame
    (x0, y0, a0), (x1, y1, a1) = _centroid(first, bg), _centroid(last, bg)
    checks = {
        "moving left": x1 < x0 - 10,
        "moving right": x1 > x0 + 10,
        "moving up": y1 < y0 - 10,
        "moving down": y1 > y0 + 10,
        "growing": a1 > 2 * a0,
        "shrinking": a1 < a0 / 2,
    }
    assert checks[action], (action, (x0, y0, a0), (x1, y1, a1))


def test_synthetic_dataset_layout_balance_no_leak_determinism(tmp_path):
    cfg = SyntheticConfig(clips_per_class=5, num_frames=8, size=32, variants=1, seed=1)
    info = make_synthetic_dataset(tmp_path / "a", cfg)
    ann = {s: json.loads((tmp_path / "a" / "annotations" / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    assert sum(info["counts"].values()) == sum(len(v) for v in ann.values())
    groups = {s: {r["group"] for r in recs} for s, recs in ann.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert not (groups["val"] & groups["test"])
    assert len(groups["train"]) + len(groups["val"]) + len(groups["test"]) == 8 * 5
    labels = [r["conversations"][1]["value"] for r in ann["train"]]
    assert set(labels) <= set(ACTIONS) and len(set(labels)) == 8
    clip = read_video(tmp_path / "a" / ann["test"][0]["video"], 8, backend="pyav")
    assert clip.frames.shape == (8, 32, 32, 3)
    lines = (tmp_path / "a" / "checksums.sha256").read_text().splitlines()
    assert len(lines) == len({r["video"] for v in ann.values() for r in v})
    assert (tmp_path / "a" / "classes.txt").read_text().split("\n")[:8] == list(ACTIONS)
    make_synthetic_dataset(tmp_path / "b", cfg)
    for s in ann:
        assert (tmp_path / "b" / "annotations" / f"{s}.json").read_text() == json.dumps(ann[s], indent=1)


def test_same_seed_generations_in_two_processes_write_the_same_files(tmp_path):
    """Lossless H.264 makes the dataset byte-identical from process to process. With x264's lossy default (crf 10),
    about one clip in twenty came out different in a second process, so a fresh clone's same-seed run trained on
    different pixels."""
    root = Path(__file__).resolve().parents[1]
    for name in ("a", "b"):
        args = ["-m", "gemma3.data.synthetic", "--out", str(tmp_path / name), "--clips-per-class", "16", "--seed", "2"]
        subprocess.run([sys.executable, *args], cwd=root, check=True, capture_output=True)
    sums = [(tmp_path / name / "checksums.sha256").read_text() for name in ("a", "b")]
    assert len(sums[0].splitlines()) > 8 * 16 and sums[0] == sums[1]


def test_real_data_preparation(tmp_path):
    vids = tmp_path / "clips"
    labels = []
    for i in range(10):
        write_video(vids / f"clip_{i:03d}.mp4", make_frames(4))
        labels.append({"video_path": f"clip_{i:03d}.mp4", "labels_descriptive": ["squat", "knees caving in"]})
    write_video(vids / "clip_000_aug1.mp4", make_frames(4))
    labels.append({"video_path": "clip_000_aug1.mp4", "labels_descriptive": "squat - knees caving in"})
    labels.append({"video_path": "missing.mp4", "labels_descriptive": ["lunge"]})
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    info = prepare(vids, tmp_path / "labels.json", tmp_path / "out", seed=42)
    assert info["counts"]["train"] + info["counts"]["val"] + info["counts"]["test"] == 11
    assert info["counts"]["train"] in (6, 7)  # 60% of 10 groups (one group has 2 clips)
    ann = {
        s: json.loads((tmp_path / "out" / "annotations" / f"{s}.json").read_text()) for s in ("train", "val", "test")
    }
    where = {r["id"]: s for s, recs in ann.items() for r in recs}
    assert where["clip_000"] == where["clip_000_aug1"]  # variants stay with their source
    report = json.loads((tmp_path / "out" / "validation_report.json").read_text())
    assert report["labels_file_problems"][0]["problem"] == "file not found"
    assert all(report[s]["problems"] == [] for s in ("train", "val", "test"))
    assert ann["train"][0]["conversations"][1]["value"] == "squat - knees caving in"
    assert source_id("a/b/clip_7_aug2_flip.mp4") == "clip_7"
    assert (
        build_answer({"labels_descriptive": ["lunge", "back straight", "good depth"]})
        == "lunge - back straight; good depth"
    )
