"""Frames/s of the project's loader (`mm_utils.read_video`, decord with PyAV fallback, seek-based sampling) vs
plain decord decoding the whole clip and indexing, on the same synthetic clips, in one run.

    python bench/bench_video_decode.py [--clips 6] [--frames 8] [--size 224] [--length 80]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]

import numpy as np  # noqa: E402

from mm_utils import read_video, sample_frame_indices  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--length", type=int, default=80, help="frames per clip (10 s at 8 fps)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import decord
    from media_utils import write_video

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        clips = []
        for i in range(args.clips):
            frames = rng.integers(0, 255, (args.length, args.size, args.size, 3), dtype=np.uint8)
            clips.append(write_video(Path(tmp) / f"c{i}.mp4", frames))

        def plain_decord():
            for c in clips:
                vr = decord.VideoReader(str(c))
                all_frames = vr.get_batch(list(range(len(vr)))).asnumpy()  # decode everything, then index
                _ = all_frames[sample_frame_indices(len(vr), args.frames)]

        def project(backend):
            def run():
                for c in clips:
                    read_video(c, args.frames, backend=backend)

            return run

        results = {}
        for name, fn in [
            ("plain decord (whole clip)", plain_decord),
            ("project (decord)", project("decord")),
            ("project (pyav)", project("pyav")),
        ]:
            fn()
            best = min(_timed(fn) for _ in range(args.repeats))
            results[name] = args.clips * args.frames / best
        base = results["plain decord (whole clip)"]
        for name, fps in results.items():
            print(f"{name:28s} {fps:8.1f} sampled frames/s   ratio vs plain decord {fps / base:5.2f}x")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
