"""A tiny QEVD-FIT-COACH release in the official layout (``QEVD-FIT-COACH-Benchmark/feedbacks_long_range.json``, the
per-frame ``*_timestamps.npy``), for the release reader and the benchmark's tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from gemma3.data.releases.qevd import CLOCK_OFFSET_S

FPS = 4
START_NS = 1_700_000_000 * 10**9
# (text, first frame, last frame, is_transition); frames at 4 fps: frame i is i / 4 s into the video
SPANS = [
    ("First up are squats!", 4, 7, True),  # t 1.0
    ("Push your knees out.", 14, 17, False),  # t 3.5
    ("Moving on to armcrosschest!", 24, 27, True),  # t 6.0: FitCoach renames the exercise "deltoid stretch"
    ("Keep your arm straight.", 32, 33, False),  # t 8.0
    ("Great workout, you're done!", 36, 37, True),  # t 9.0, the session's last transition
]
FRAMES = 40


def make_fit_coach(root: Path, videos: tuple[str, ...] = ("0000",), video_file: Path | None = None) -> str:
    """Write the layout under ``root`` (one record per video name; ``video_file`` is copied as each video, else an
    empty file stands in) and return its spec ``qevd_fit_coach:ROOT:benchmark``."""
    folder = root / "QEVD-FIT-COACH-Benchmark" / "long_range_videos"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    clock0 = START_NS / 1e9 + CLOCK_OFFSET_S
    for name in videos:
        np.save(folder / f"{name}_timestamps.npy", np.array([START_NS + i * 10**9 // FPS for i in range(FRAMES)]))
        if video_file is not None:
            shutil.copyfile(video_file, folder / f"{name}.mp4")
        else:
            (folder / f"{name}.mp4").write_bytes(b"")
        feedbacks = [""] * FRAMES
        for text, a, b, _ in SPANS:
            feedbacks[a : b + 1] = [text] * (b - a + 1)
        records.append({"long_range_video_file": f"./long_range_videos/{name}.mp4",
                        "video_timestamps": f"./long_range_videos/{name}_timestamps.npy", "feedbacks": feedbacks,
                        "feedback_timestamps": [clock0 + a / FPS for _, a, _, _ in SPANS],
                        "is_transition": [tr for *_, tr in SPANS]})  # fmt: skip
    (root / "QEVD-FIT-COACH-Benchmark" / "feedbacks_long_range.json").write_text(json.dumps(records))
    return f"qevd_fit_coach:{root}:benchmark"


def stream_records(emitted: list[tuple[float, str]]) -> list[dict]:
    """Stream window records (`gemma3.serve.stream` JSONL) whose feedback events are ``emitted`` (time, text): one
    window ending at each time, each with a new action."""
    return [{"window": i, "start": t - 2.0, "end": t, "reply": text, "action": f"action {i}", "feedback": ""}
            for i, (t, text) in enumerate(emitted)]  # fmt: skip
