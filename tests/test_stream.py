"""Streaming inference: windows over a file, a growing frame folder and an HTTP URL; a source that breaks; resume;
real-time dropping; SIGINT; the native models through the same loop."""

from __future__ import annotations

import json
import signal
import threading

import numpy as np
import pytest
from media_utils import served
from tiny_checkpoints import custom_train_args, make_custom_assets

from gemma3.data.long_videos import LongVideoConfig, make_long_videos
from gemma3.serve.stream import Clock, StreamConfig, Windower, run_stream

FPS = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, gemma270m_dir):
    from gemma3.train import train as T

    root = tmp_path_factory.mktemp("stream_model")
    llm, clip, vm, data = make_custom_assets(root, gemma270m_dir, n=4)
    T.main(custom_train_args(llm, clip, vm, data, root / "out", stage="finetune", use_lora=True, max_steps=1))
    return root / "out"


@pytest.fixture(scope="module")
def predictor(model_dir):
    import gemma3.serve.inference as inf

    return inf.load_predictor(str(model_dir), generation=inf.GenerationConfig(max_new_tokens=3))


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    rec = make_long_videos(root, LongVideoConfig(videos=1, segments=2, min_seconds=2.0, max_seconds=2.0, size=32))[0]
    return root / rec["video"], rec


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_windows_cover_the_stream_at_the_stride():
    w = Windower(window=1.0, stride=0.5)
    out = []
    for i in range(20):  # 2.5 s at 8 fps
        out += w.push(i / FPS, np.full((4, 4, 3), i, np.uint8))
    out += w.flush()
    assert [(x.start, x.end) for x in out] == [(k * 0.5, k * 0.5 + 1.0) for k in range(5)]
    assert [len(x.frames) for x in out] == [8, 8, 8, 8, 4]  # the last two come from flush (end of stream)
    assert out[1].frames[0, 0, 0, 0] == 4  # frame at t = 0.5 s opens window 1
    with pytest.raises(ValueError, match="positive"):
        Windower(window=0, stride=1)
    hd = Windower(window=1.0, stride=1.0, short_side=224)  # HD frames are kept at the model's input size
    hd.push(0.0, np.zeros((1080, 1920, 3), np.uint8))
    (first,) = hd.push(1.0, np.zeros((1080, 1920, 3), np.uint8))
    assert first.frames.shape == (1, 224, 398, 3)


def test_file_stream_writes_every_window_and_resumes(predictor, long_video, tmp_path):
    video, rec = long_video
    out = tmp_path / "out.jsonl"
    summary = run_stream(predictor, str(video), out, StreamConfig(window=2.0, stride=1.0, batch_size=3))
    records = _read(out)
    assert [r["window"] for r in records] == list(range(len(records))) and len(records) == 4
    assert [(r["start"], r["end"]) for r in records] == [(k * 1.0, k * 1.0 + 2.0) for k in range(4)]
    assert all(r["frames"] == 2 * FPS for r in records[:3]) and records[3]["frames"] == FPS  # last one partial
    fields = {"reply", "action", "feedback", "input_tokens", "output_tokens", "latency_s", "ttft_s"}
    assert fields <= set(records[0]) and all(0 < r["ttft_s"] <= r["latency_s"] for r in records)
    assert summary["windows"] == 4 and summary["dropped"] == 0 and "error" not in summary
    assert json.loads((tmp_path / "out.jsonl.summary.json").read_text())["windows"] == 4
    assert summary["stream_seconds"] == pytest.approx(rec["duration"] - 1 / FPS)
    # A killed run: two windows written and a torn third line. The rerun keeps them and writes the rest once.
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:20])
    again = run_stream(predictor, str(video), out, StreamConfig(window=2.0, stride=1.0, batch_size=3))
    assert [r["window"] for r in _read(out)] == [0, 1, 2, 3] and again["windows"] == 2
    assert [r["reply"] for r in _read(out)] == [r["reply"] for r in records]  # greedy: same replies


class SimClock(Clock):
    """Simulated stream time: it moves only when the source sleeps (at once, no real waiting). ``on_sleep`` runs at
    every sleep (a camera writing frames while the reader waits); ``hold_at`` keeps the source there until
    ``release`` is set. Waits on it are bounded (60 s) so a broken stream fails instead of hanging."""

    def __init__(self, on_sleep=None, hold_at: float | None = None, release: threading.Event | None = None):
        self.t, self.sleeps = 0.0, 0
        self.on_sleep, self.hold_at, self.release = on_sleep, hold_at, release
        self.moved = threading.Condition()

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        with self.moved:
            self.t += max(0.0, seconds)
            self.sleeps += 1
            self.moved.notify_all()
        if self.on_sleep is not None:
            self.on_sleep(self)
        if self.hold_at is not None and self.t >= self.hold_at:
            assert self.release.wait(timeout=60), "the held source was never released"

    def wait_until(self, t: float) -> None:
        with self.moved:
            assert self.moved.wait_for(lambda: self.t >= t, timeout=60), f"the source never reached {t} s"


def test_growing_frame_folder_is_followed_until_idle(predictor, tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    written = []

    def camera(clock):  # two new frames each time the reader waits, 24 in all (3 s at 8 fps)
        for i in range(len(written), min(24, len(written) + 2)):
            Image.fromarray(np.full((32, 32, 3), i * 10, np.uint8)).save(folder / f"frame_{i}.png")
            written.append(i)

    clock = SimClock(on_sleep=camera)
    out = tmp_path / "folder.jsonl"
    cfg = StreamConfig(window=1.0, stride=1.0, idle_timeout=1.5, clock=clock)
    summary = run_stream(predictor, str(folder), out, cfg)
    assert len(written) == 24 and clock.t > 1.5  # every frame was read, then the reader waited out the timeout
    records = _read(out)
    assert [(r["start"], r["end"], r["frames"]) for r in records] == [(k, k + 1.0, FPS) for k in range(3)]
    assert summary["windows"] == 3


def test_http_url_streams_like_the_file(predictor, long_video, tmp_path):
    video, _ = long_video
    with served(video.parent) as base:
        run_stream(predictor, f"{base}/{video.name}", tmp_path / "http.jsonl", StreamConfig(window=2.0, stride=2.0))
    run_stream(predictor, str(video), tmp_path / "file.jsonl", StreamConfig(window=2.0, stride=2.0))
    strip = lambda rs: [{k: r[k] for k in ("window", "start", "end", "frames", "reply")} for r in rs]  # noqa: E731
    assert strip(_read(tmp_path / "http.jsonl")) == strip(_read(tmp_path / "file.jsonl"))


def test_a_source_that_breaks_keeps_what_was_produced(predictor, tmp_path, caplog):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(20):
        Image.fromarray(np.full((32, 32, 3), i * 10, np.uint8)).save(folder / f"frame_{i}.png")
    (folder / "frame_20.png").write_bytes(b"not a png")  # the camera died mid-write
    out = tmp_path / "broken.jsonl"
    summary = run_stream(predictor, str(folder), out, StreamConfig(window=1.0, stride=1.0, idle_timeout=0.5))
    assert [r["window"] for r in _read(out)] == [0, 1, 2]  # 20 good frames: two full windows and a partial one
    assert "frame_20.png" in summary["error"] and "the source broke" in caplog.text
    missing = run_stream(predictor, str(tmp_path / "nope.mp4"), tmp_path / "x.jsonl", StreamConfig())
    assert "no such file" in missing["error"] and _read(tmp_path / "x.jsonl") == []


def test_realtime_drops_stale_windows_and_says_so(predictor, long_video, tmp_path, caplog):
    video, rec = long_video
    clock = SimClock()

    class Slow:  # the real predictor, slower than the source: its first answer takes until the source is at 3 s
        def __init__(self, inner):
            self.inner = inner

        def encode(self, sample):
            clock.wait_until(3.0)
            return self.inner.encode(sample)

        def generate(self, *a, **k):
            return self.inner.generate(*a, **k)

    out = tmp_path / "rt.jsonl"
    cfg = StreamConfig(window=1.0, stride=0.5, realtime=True, clock=clock)
    summary = run_stream(Slow(predictor), str(video), out, cfg)
    assert clock.sleeps > 0  # real-time: the source was paced to its timestamps
    assert summary["dropped"] > 0 and "dropped" in caplog.text
    assert summary["windows"] + summary["dropped"] == int(rec["duration"] / 0.5)
    assert summary["real_time_factor"] > 0


def test_sigint_ends_cleanly_with_the_summary(predictor, long_video, tmp_path):
    video, _ = long_video
    before = signal.getsignal(signal.SIGINT)
    stop = threading.Event()
    clock = SimClock(hold_at=2.0, release=stop)  # the source waits at 2 s until the stream is stopped

    class Interrupted:  # Ctrl-C while the first window is being answered
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def encode(self, sample):
            self.calls += 1
            if self.calls == 1:
                signal.raise_signal(signal.SIGINT)
            return self.inner.encode(sample)

        def generate(self, *a, **k):
            return self.inner.generate(*a, **k)

    out = tmp_path / "int.jsonl"
    cfg = StreamConfig(window=1.0, stride=0.5, realtime=True, clock=clock)
    summary = run_stream(Interrupted(predictor), str(video), out, cfg, stop=stop)
    assert stop.is_set()  # SIGINT set the stream's stop event
    assert (tmp_path / "int.jsonl.summary.json").exists() and summary["windows"] == len(_read(out)) == 1
    assert summary["stream_seconds"] <= 2.0 + 1 / FPS  # stopped before the end of the 4 s video
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back


def test_native_gemma3_streams_through_the_same_loop(long_video, tmp_path, gemma270m_dir):
    from tiny_native import make_native

    import gemma3.serve.inference as inf

    native = make_native(tmp_path, gemma270m_dir, "gemma3")
    pred = inf.load_predictor(str(native), num_frames=2, generation=inf.GenerationConfig(max_new_tokens=2))
    video, _ = long_video
    summary = run_stream(pred, str(video), tmp_path / "native.jsonl", StreamConfig(window=2.0, stride=2.0))
    records = _read(tmp_path / "native.jsonl")
    assert summary["windows"] == 2 and all(r["input_tokens"] > 2 * pred.plugin.per_frame for r in records)


def test_qevd_fit_coach_streams_each_long_video_then_scores(model_dir, long_video, tmp_path):
    from fit_coach_layout import make_fit_coach

    from gemma3.evaluation.evaluate import stream_model_then_evaluate

    video, _ = long_video
    spec = make_fit_coach(tmp_path / "coach", ("0000", "0001"), video_file=video)
    cfg = StreamConfig(window=1.0, stride=1.0, batch_size=4)
    res = stream_model_then_evaluate("qevd_fit_coach", model_dir, spec, tmp_path / "eval", cfg)
    streams = {n: _read(tmp_path / "eval" / "streams" / f"{n}.jsonl") for n in ("0000", "0001")}
    assert [len(r) for r in streams.values()] == [4, 4]  # a 4 s video in 1 s windows, each video streamed
    assert res["num_samples"] == 2 and res["input"]["coverage"] == 1.0 and res["references"] == 4
    again = stream_model_then_evaluate("qevd_fit_coach", model_dir, spec, tmp_path / "eval", cfg)
    assert {n: _read(tmp_path / "eval" / "streams" / f"{n}.jsonl") for n in streams} == streams  # resumed, no rerun
    assert again["temporal_f_score"] == res["temporal_f_score"]
