"""Long runs: memory and latency over an hour of streaming and over 10,000 batch-inference samples.

    python bench/bench_long_runs.py [--minutes 60] [--samples 10000] [--size 96] [--fps 4] [--threads 2]

A small custom model (the tests' tiny one: Gemma 3 tokenizer, 2 layers) answers; what is measured is the
project's loops around it. Streaming: one clip of ``--minutes`` at ``--size`` px and ``--fps`` read from a file, a
frame folder written while it is read, and a loopback HTTP URL, in 4 s windows every 4 s; printed: the resident set
size (RSS, MB) when the stream passes 5, 30 and 60 minutes and the median latency per window in each sixth of the
stream. Batch inference: ``--samples`` text prompts through `predict`, RSS and samples/s per tenth of the run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]

import torch  # noqa: E402
from timing import cpu_line  # noqa: E402


def stream_once(predictor, source: str, out: Path, minutes: int) -> dict:
    from long_runs import rss_mb

    from gemma3.serve.stream import StreamConfig, run_stream

    marks, lat = {}, []

    def on_record(rec: dict) -> None:
        lat.append((rec["end"], rec["latency_s"]))
        for m in (5, 30, 60):
            if m <= minutes and rec["end"] >= m * 60 - 4 and m not in marks:
                marks[m] = round(rss_mb(), 1)

    cfg = StreamConfig(window=4.0, stride=4.0, batch_size=8, folder_fps=4.0, idle_timeout=10.0)
    summary = run_stream(predictor, source, out, cfg, on_record=on_record)
    sixth = minutes * 60 / 6
    medians = [round(1000 * statistics.median([x for t, x in lat if k * sixth < t <= (k + 1) * sixth] or [0]), 1)
               for k in range(6)]  # fmt: skip
    return {"windows": summary["windows"], "rss_mb": marks, "latency_ms_by_sixth": medians}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=int, default=60)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--fps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from long_runs import rss_mb, samples
    from media_utils import long_frame, served, write_long_video
    from PIL import Image
    from tiny_checkpoints import make_custom_assets, save_custom_model

    import gemma3.serve.inference as inf
    from gemma3.model.offline import gemma3_270m_path

    print(f"CPU: {cpu_line()}, {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        llm, clip, vm, _ = make_custom_assets(tmp, gemma3_270m_path())
        model = save_custom_model(tmp / "model", llm, clip, vm)
        predictor = inf.load_predictor(model, generation=inf.GenerationConfig(max_new_tokens=1))
        seconds = args.minutes * 60
        video = write_long_video(tmp / "long.mp4", seconds, args.fps, args.size)
        print(f"stream: {args.minutes} min at {args.size} px, {args.fps} fps ({video.stat().st_size / 1e6:.1f} MB)")
        print("file  ", stream_once(predictor, str(video), tmp / "file.jsonl", args.minutes))
        with served(tmp) as base:
            print("url   ", stream_once(predictor, f"{base}/long.mp4", tmp / "url.jsonl", args.minutes))
        folder = tmp / "frames"
        folder.mkdir()

        def camera() -> None:
            for i in range(seconds * args.fps):
                Image.fromarray(long_frame(i, args.size)).save(folder / f"frame_{i + 1}.png")

        writer = threading.Thread(target=camera)
        writer.start()
        print("folder", stream_once(predictor, str(folder), tmp / "folder.jsonl", args.minutes))
        writer.join()

        rows, marks = samples(args.samples), []

        class Timed:  # the real predictor, with RSS and throughput taken every tenth of the run
            seen, t0 = 0, time.perf_counter()

            def encode(self, sample):
                return predictor.encode(sample)

            def generate(self, feats, **kw):
                out = predictor.generate(feats, **kw)
                before, Timed.seen = Timed.seen, Timed.seen + len(feats)
                if Timed.seen * 10 // args.samples > before * 10 // args.samples:
                    now = time.perf_counter()
                    marks.append((Timed.seen, round(rss_mb(), 1), round(Timed.seen / (now - Timed.t0), 1)))
                return out

        inf.predict(Timed(), rows, tmp / "batch.jsonl", batch_size=32, progress=False)
        print(f"batch inference, {args.samples} samples: (samples done, RSS MB, samples/s so far)")
        print("      ", marks)


if __name__ == "__main__":
    main()
