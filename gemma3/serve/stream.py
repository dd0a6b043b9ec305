"""Streaming feedback over long videos and live sources: sliding windows in, one JSON line per window out.

    python -m gemma3.serve.stream --model_path OUT --source SRC --output OUT.jsonl --window 4 --stride 2

Sources (`open_source`): a video file; a frame folder, also one still being written (new frames are picked up as
they arrive; ``--folder_fps`` gives their rate, ``--idle_timeout`` ends the stream when none arrive); a camera index
(``0`` -> ``/dev/video0`` through PyAV's v4l2 input); and network streams PyAV can open (``rtsp://``, ``http://``).

Windows: ``--window`` / ``--stride`` in seconds (or frames with ``--unit frames``), window k covering
``[k*stride, k*stride + window)`` of stream time; the model's frame count is sampled uniformly from each window.
Without ``--realtime`` every window is answered, in batches of ``--batch_size``. With ``--realtime`` the source is
read at its own pace (a file is paced by its timestamps) and when the model is slower, windows that went stale
while it was busy are dropped and counted (``dropped`` in the summary and a log line each time).

Output: one JSON line per window, flushed as produced: ``window, start, end, reply, action, feedback,
input_tokens, output_tokens, latency_s, ttft_s, frames``. A summary (mean / p50 / p95 latency and time to first
token, tokens/s, windows answered and dropped, real-time factor) is logged and written to ``OUT.summary.json``.
Ctrl-C or the end of the stream ends cleanly with everything written; a source that breaks mid-stream ends the
same way with the error logged. Rerunning with the same output continues after the last window written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gemma3.constants import VIDEO_TAG
from gemma3.data.formats import Media, Sample
from gemma3.data.media import FrameArray, FrameConverter, MediaError, list_frame_files, read_image
from gemma3.data.releases.qevd import QEVDFit300K
from gemma3.serve.inference import GenerationConfig, load_predictor
from gemma3.utils.errors import UserError, run_main, writing
from gemma3.utils.locks import exclusive_lock

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = QEVDFit300K.prompt  # what the main job's coach is trained on (QEVD-FIT-300K's reader)
NATIVE_MAX_SIDE = 896  # frames kept at most this size when the processor decides the size (Gemma 3's SigLIP input)


# ---------------------------------------------------------------- sources


class SourceError(UserError, RuntimeError):
    """The source could not be opened or broke while streaming; the message names it."""


class Clock:
    """The time a source lives in: a real-time file paced to its timestamps, a frame folder's idle timeout. The
    stream reads it only through ``now`` and ``sleep``, so a test can run a stream on a simulated clock."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _pyav_frames(url: str, fmt: str | None = None, paced: bool = False,
                 clock: Clock | None = None) -> Iterator[tuple[float, np.ndarray]]:  # fmt: skip
    import av

    clock = clock or Clock()
    to_rgb = FrameConverter()  # one colour converter for the stream
    try:
        container = av.open(url, format=fmt, timeout=10.0)
    except Exception as err:  # av raises per-protocol errors
        raise SourceError(f"{url}: cannot open ({err})") from err
    start_wall = clock.now()
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        first = None
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else clock.now() - start_wall
            first = t if first is None else first
            t -= first
            if paced:
                delay = start_wall + t - clock.now()
                if delay > 0:
                    clock.sleep(delay)
            yield t, to_rgb(frame)  # a phone's portrait video upright
    except Exception as err:
        raise SourceError(f"{url}: broke while streaming ({type(err).__name__}: {err})") from err
    finally:
        container.close()


def _folder_frames(folder: Path, fps: float, idle_timeout: float, poll: float = 0.05,
                   stop: threading.Event | None = None,
                   clock: Clock | None = None) -> Iterator[tuple[float, np.ndarray]]:  # fmt: skip
    """Frames of a folder in numeric order, waiting for new ones until none arrive for ``idle_timeout`` s."""
    clock = clock or Clock()
    seen = 0
    last_new = clock.now()
    while stop is None or not stop.is_set():
        files = list_frame_files(folder)
        if len(files) > seen:
            for path in files[seen:]:
                try:
                    image = read_image(path)
                except MediaError:  # perhaps still being written: one more try after a poll
                    clock.sleep(max(poll, 0.2))
                    try:
                        image = read_image(path)
                    except MediaError as err:
                        raise SourceError(f"{folder}: unreadable frame {path.name} ({err})") from err
                yield seen / fps, image
                seen += 1
            last_new = clock.now()
        elif clock.now() - last_new > idle_timeout:
            return
        else:
            clock.sleep(poll)


def open_source(spec: str, paced: bool = False, folder_fps: float = 8.0, idle_timeout: float = 5.0,
                clock: Clock | None = None) -> Iterator[tuple[float, np.ndarray]]:  # fmt: skip
    """(stream time in seconds, uint8 RGB frame [H, W, 3]) of a file, frame folder, camera index or URL."""
    if re.fullmatch(r"\d+", spec):
        return _pyav_frames(f"/dev/video{spec}", fmt="v4l2", clock=clock)
    if "://" in spec:
        return _pyav_frames(spec, clock=clock)
    path = Path(spec)
    if path.is_dir():
        return _folder_frames(path, folder_fps, idle_timeout, clock=clock)
    if not path.exists():
        raise SourceError(f"{spec}: no such file, folder, camera index or URL")
    return _pyav_frames(str(path), paced=paced, clock=clock)


# ---------------------------------------------------------------- windows


@dataclass
class Window:
    index: int
    start: float
    end: float
    frames: np.ndarray  # [T, H, W, 3] uint8, every frame of the window at the source rate (downscaled)


@dataclass
class Windower:
    """Sliding windows over timestamped frames. A frame whose shorter side exceeds ``short_side`` (the model's
    input size) is downscaled on arrival, so a long HD window costs little memory and the model sees what it would
    have seen from the full-size frame after its own resize."""

    window: float
    stride: float
    short_side: int | None = 448
    _buffer: list = field(default_factory=list)
    _next: int = 0

    def __post_init__(self) -> None:
        if self.window <= 0 or self.stride <= 0:
            raise ValueError(f"window ({self.window}) and stride ({self.stride}) must be positive")

    def _small(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        if self.short_side is None or min(h, w) <= self.short_side:
            return frame
        import torch
        import torch.nn.functional as F

        scale = self.short_side / min(h, w)
        x = torch.from_numpy(np.require(frame, requirements=["C", "W"])).permute(2, 0, 1)[None]
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
        return x[0].permute(1, 2, 0).numpy()

    def push(self, t: float, frame: np.ndarray) -> list[Window]:
        """Add a frame; returns the windows that it completed."""
        self._buffer.append((t, self._small(frame)))
        return self._ready(t)

    def _ready(self, now: float | None) -> list[Window]:
        out = []
        while True:
            start = self._next * self.stride
            end = start + self.window
            if now is not None and now < end:
                break
            frames = [f for t, f in self._buffer if start <= t < end]
            if not frames:
                if now is None or not self._buffer or self._buffer[-1][0] < start:
                    break
                self._next += 1
                continue
            out.append(Window(self._next, start, end, np.stack(frames)))
            self._next += 1
            self._buffer = [(t, f) for t, f in self._buffer if t >= self._next * self.stride]
        return out

    def flush(self) -> list[Window]:
        """The windows left at the end of the stream (a last partial window included)."""
        return self._ready(None)


# ---------------------------------------------------------------- model


class _FirstToken:
    """A `generate` streamer that records when the first new token arrived."""

    def __init__(self) -> None:
        self.calls = 0
        self.at: float | None = None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2 and self.at is None:  # the first call carries the prompt
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def split_reply(reply: str) -> tuple[str, str]:
    """(action, feedback) of a reply in the QEVD style ``<action> - <feedback>``; the whole reply is the action
    when there is no separator."""
    head, sep, tail = reply.partition(" - ")
    return head.strip().rstrip("."), tail.strip() if sep else ""


def answer(predictor, windows: list[Window], prompt: str) -> list[dict]:
    """One record per window: reply, parsed action / feedback, token counts, latency and time to first token."""

    samples = [Sample(f"window-{w.index}", [{"role": "user", "content": f"{VIDEO_TAG}\n{prompt}"}],
                      (Media("video", FrameArray(w.frames)),)) for w in windows]  # fmt: skip
    start = time.perf_counter()
    features = [predictor.encode(s) for s in samples]
    timer = _FirstToken()
    replies, counts = predictor.generate(features, streamer=timer)
    latency = time.perf_counter() - start
    ttft = (timer.at - start) if timer.at is not None else latency
    records = []
    for w, f, reply, n in zip(windows, features, replies, counts):
        action, feedback = split_reply(reply)
        records.append({"window": w.index, "start": round(w.start, 3), "end": round(w.end, 3), "reply": reply,
                        "action": action, "feedback": feedback, "input_tokens": int(f["input_ids"].numel()),
                        "output_tokens": int(n), "latency_s": round(latency, 4), "ttft_s": round(ttft, 4),
                        "frames": int(len(w.frames))})  # fmt: skip
    return records


# ---------------------------------------------------------------- the loop


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


SUMMARY_FIELDS = ("latency_s", "ttft_s", "output_tokens")  # what `summarize` reads of each window's record


def summarize(records: list[dict], dropped: int, stream_seconds: float, wall_seconds: float, busy: float) -> dict:
    """Latency / TTFT statistics, tokens/s (over the time spent answering), windows answered and dropped,
    real-time factor (wall time / stream time: below 1 keeps up with a live source)."""
    lat = [r["latency_s"] for r in records]
    ttft = [r["ttft_s"] for r in records]
    tokens = sum(r["output_tokens"] for r in records)
    return {
        "windows": len(records), "dropped": dropped,
        "latency_mean_s": float(np.mean(lat)) if lat else 0.0, "latency_p50_s": percentile(lat, 50),
        "latency_p95_s": percentile(lat, 95), "ttft_mean_s": float(np.mean(ttft)) if ttft else 0.0,
        "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
        "tokens_per_s": tokens / busy if busy else 0.0, "stream_seconds": round(stream_seconds, 3),
        "wall_seconds": round(wall_seconds, 3),
        "real_time_factor": wall_seconds / stream_seconds if stream_seconds else 0.0,
    }  # fmt: skip


def done_windows(output: Path) -> set[int]:
    """Windows already in an output file (a torn last line from a killed run is dropped and rewritten)."""
    if not output.exists():
        return set()
    done, good = set(), []
    text = output.read_text()
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            done.add(int(rec["window"]))
            good.append(line)
        except (ValueError, KeyError, TypeError):
            logger.warning("%s: dropping an unreadable line (an interrupted write): %.80s", output, line)
    kept = "".join(g + "\n" for g in good)
    if kept != text:  # rewritten beside it and renamed: a kill or a full disk now leaves the old file whole
        tmp = output.with_name(output.name + ".tmp")
        with writing(tmp):
            tmp.write_text(kept)
        os.replace(tmp, output)
    return done


@dataclass
class StreamConfig:
    window: float = 4.0
    stride: float = 2.0
    unit: str = "seconds"  # or "frames" (converted with the source rate given by folder_fps / 30 for files)
    prompt: str = DEFAULT_PROMPT
    realtime: bool = False
    batch_size: int = 4
    folder_fps: float = 8.0
    idle_timeout: float = 5.0
    clock: Clock = field(default_factory=Clock)  # the source's time (pacing, idle timeout); tests simulate it


def run_stream(predictor, source: str, output: str | Path, cfg: StreamConfig | None = None,
               stop: threading.Event | None = None,
               on_record: Callable[[dict], None] | None = None) -> dict:  # fmt: skip
    """Stream ``source`` through ``predictor`` into ``output`` (JSONL); returns the summary (also written to
    ``<output>.summary.json``). ``stop`` (or SIGINT) ends the stream early, cleanly; ``on_record`` sees each
    window's record once it is written (the web demo shows them as they come)."""
    cfg = cfg or StreamConfig()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = done_windows(output)
    if done:
        logger.info("%s: %d windows already written; continuing after them", output, len(done))
    window, stride = cfg.window, cfg.stride
    if cfg.unit == "frames":
        window, stride = window / cfg.folder_fps, stride / cfg.folder_fps
    processing = getattr(predictor, "processing", None)
    windower = Windower(window, stride, short_side=getattr(processing, "image_size", None) or NATIVE_MAX_SIDE)
    stop = stop or threading.Event()
    # A file is read as fast as the model answers, not faster: a bounded queue keeps an hour-long video from
    # piling up decoded windows in memory. Real time never waits for the model (stale windows are dropped).
    ready: queue.Queue = queue.Queue(maxsize=0 if cfg.realtime else 2 * cfg.batch_size)
    state = {"error": None, "last_t": 0.0, "dropped": 0, "busy": 0.0}

    def put(item) -> None:
        while True:
            try:
                ready.put(item, timeout=0.2)
                return
            except queue.Full:
                if stop.is_set():  # the consumer has stopped: nobody reads this any more
                    return

    def produce() -> None:
        try:
            frames = open_source(source, cfg.realtime, cfg.folder_fps, cfg.idle_timeout, cfg.clock)
            for t, frame in frames:
                if stop.is_set():
                    break
                state["last_t"] = t
                for w in windower.push(t, frame):
                    put(w)
            if not stop.is_set():
                for w in windower.flush():
                    put(w)
        except SourceError as err:
            state["error"] = str(err)
            for w in windower.flush():  # what was read before the break still counts
                put(w)
        finally:
            put(None)

    records: list[dict] = []
    busy = f"{output}: another stream is writing this file; wait for it or use another --output"
    started = time.perf_counter()
    producer = threading.Thread(target=produce, name="stream-source", daemon=True)
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    producer.start()
    finished = False
    try:
        with exclusive_lock(output.with_name(output.name + ".lock"), busy), writing(output), output.open("a") as out:
            while not finished and not stop.is_set():
                batch = []
                item = ready.get()
                if item is None:
                    break
                batch.append(item)
                while not ready.empty():  # what else is ready now
                    nxt = ready.get()
                    if nxt is None:
                        finished = True
                        break
                    batch.append(nxt)
                if cfg.realtime and len(batch) > 1:  # the model fell behind: answer the newest, drop the rest
                    stale = len(batch) - 1
                    state["dropped"] += stale
                    logger.warning("real-time: model behind the source, dropped %d stale window(s)", stale)
                    batch = batch[-1:]
                batch = [w for w in batch if w.index not in done]
                for i in range(0, len(batch), 1 if cfg.realtime else cfg.batch_size):
                    if stop.is_set():  # asked to stop (SIGINT, the demo's limit): no more answers
                        break
                    part = batch[i : i + (1 if cfg.realtime else cfg.batch_size)]
                    began = time.perf_counter()
                    answered = answer(predictor, part, cfg.prompt)
                    state["busy"] += time.perf_counter() - began
                    for rec in answered:
                        out.write(json.dumps(rec) + "\n")
                        out.flush()
                        records.append({k: rec[k] for k in SUMMARY_FIELDS})  # not the replies: an hour is 7,200
                        if on_record is not None:
                            on_record(rec)
                        logger.info("window %d [%.1f-%.1f s] %.2f s: %s", rec["window"], rec["start"], rec["end"],
                                    rec["latency_s"], rec["reply"][:80])  # fmt: skip
    finally:
        stop.set()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
    wall = time.perf_counter() - started
    summary = summarize(records, state["dropped"], state["last_t"], wall, state["busy"])
    summary["source"] = source
    if state["error"]:
        summary["error"] = state["error"]
        logger.error("the source broke: %s (the %d windows before it are written)", state["error"], len(records))
    Path(f"{output}.summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("summary: %s", json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_path", required=True)
    ap.add_argument("--source", required=True, help="video file, frame folder, camera index or rtsp/http URL")
    ap.add_argument("--output", required=True)
    ap.add_argument("--window", type=float, default=4.0)
    ap.add_argument("--stride", type=float, default=2.0)
    ap.add_argument("--unit", choices=("seconds", "frames"), default="seconds")
    ap.add_argument("--num_frames", type=int, default=None, help="frames per window (default: the model's)")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--realtime", action="store_true")
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--folder_fps", type=float, default=8.0)
    ap.add_argument("--idle_timeout", type=float, default=5.0)
    ap.add_argument("--max_new_tokens", type=int, default=32)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    predictor = load_predictor(args.model_path, num_frames=args.num_frames,
                               generation=GenerationConfig(max_new_tokens=args.max_new_tokens))  # fmt: skip
    cfg = StreamConfig(args.window, args.stride, args.unit, args.prompt, args.realtime, args.batch_size,
                       args.folder_fps, args.idle_timeout)  # fmt: skip
    summary = run_stream(predictor, args.source, args.output, cfg)
    return 2 if "error" in summary else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
