"""Reliability at the command line and at scale: expected errors are one message and an exit code, never a
traceback (unless ``--debug``)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import long_runs
import numpy as np
import pytest
from media_utils import long_frame, served, write_awkward_clips, write_long_video
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_checkpoints import custom_train_args, make_llm, save_custom_model, train_argv

import gemma3.export.hf as export_hf
import gemma3.serve.inference as inf
import gemma3.serve.stream as stream
from gemma3.data.formats import load_annotations
from gemma3.data.media import MediaError, read_video
from gemma3.export.hf import main as export_main
from gemma3.model.families import CUSTOM
from gemma3.serve import prediction_files
from gemma3.serve.stream import StreamConfig, open_source, run_stream
from gemma3.serve.stream import main as stream_main
from gemma3.train import train as T
from gemma3.train.guards import NonFiniteLossError, training_lock
from gemma3.utils.errors import CheckpointError, UserError, run_main
from gemma3.utils.locks import BusyError

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "args, message",
    [
        (["gemma3n_batch_inference.py", "--model_path", "{tmp}/missing", "--annotations", "{tmp}/a.json",
          "--output", "{tmp}/p.jsonl"], "model path {tmp}/missing: does not exist"),
        (["-m", "gemma3.cli", "train", "--model_id", "{tmp}/missing", "--data_path", "{tmp}/a.json",
          "--output_dir", "{tmp}/run"], "model path {tmp}/missing: does not exist"),
        (["eval/evaluate.py", "--benchmark", "action_recognition", "--predictions", "{tmp}/p.jsonl",
          "--annotations", "{tmp}/a.json"], "predictions file not found: {tmp}/p.jsonl"),
    ],
)  # fmt: skip
def test_commands_turn_expected_errors_into_one_message(tmp_path, args, message):
    (tmp_path / "a.json").write_text("[]")
    proc = _run(*(a.format(tmp=tmp_path) for a in args))
    assert proc.returncode == 2, proc.stderr
    assert message.format(tmp=tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "a.json").write_text("[]")
    proc = _run("gemma3n_batch_inference.py", "--model_path", str(tmp_path / "missing"), "--annotations",
                str(tmp_path / "a.json"), "--output", str(tmp_path / "p.jsonl"), "--debug")  # fmt: skip
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


def _raises(err: BaseException):
    def main(argv):
        raise err

    return main


@pytest.mark.parametrize(
    "err, code, text",
    [
        (MediaError("clip.mp4: unreadable video"), 2, "clip.mp4: unreadable video"),
        (CheckpointError("ckpt/model.safetensors: truncated"), 2, "truncated"),
        (FileNotFoundError("data.json: no such file"), 2, "data.json"),
        (OSError(errno.ENOSPC, "No space left on device", "out/predictions.jsonl"), 1,
         "no space left on the device while writing out/predictions.jsonl"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)  # fmt: skip
def test_run_main_maps_expected_errors(capsys, err, code, text):
    assert run_main(_raises(err), [], prog="cmd") == code
    err_out = capsys.readouterr().err
    assert text in err_out and err_out.startswith("cmd: ")


def test_run_main_keeps_the_traceback_of_bugs_and_of_debug():
    with pytest.raises(TypeError):
        run_main(_raises(TypeError("a bug")), [], prog="cmd")
    with pytest.raises(UserError):
        run_main(_raises(UserError("bad input")), ["--debug"], prog="cmd")
    assert run_main(lambda argv: {"done": argv}, ["--x"], prog="cmd") == 0


# ---------------------------------------------------------------- training runs that go wrong


def test_a_second_training_on_one_output_is_refused(assets, tmp_path):
    out = tmp_path / "run"
    with training_lock(out), pytest.raises(BusyError, match="another training run is writing this output folder"):
        T.main(train_argv(assets, out))
    assert not (out / "hyperparameters.json").exists()  # refused before anything was written
    assert T.main(train_argv(assets, out, max_steps=1))["global_step"] == 1  # the lock went with its holder


def test_resume_refuses_changed_arguments_and_accepts_harmless_ones(assets, tmp_path):
    out = tmp_path / "run"
    common = dict(stage="finetune", use_lora=True, lora_r=4, save_strategy="steps", save_steps=2, max_steps=2)
    T.main(train_argv(assets, out, **common))
    with pytest.raises(UserError, match=r"(?s)cannot resume .*checkpoint-2.*model\.lora_r: saved 4, now 8") as err:
        T.main(
            train_argv(assets, out, **{**common, "lora_r": 8, "max_steps": 3}) + ["--resume_from_checkpoint", "auto"]
        )
    assert "training.max_steps: saved 2, now 3" in str(err.value)
    resumed = T.main(train_argv(assets, out, **{**common, "logging_steps": 5, "dataloader_num_workers": 1})
                     + ["--resume_from_checkpoint", "auto"])  # fmt: skip
    assert resumed["global_step"] == 2


def test_a_nonfinite_loss_stops_with_step_samples_and_checkpoint_or_is_skipped(assets, tmp_path):
    # A learning rate of 1e30 sends the weights to 1e30 at the first step: the second step's loss is not finite.
    blow_up = dict(stage="finetune", learning_rate=1e30, projector_lr=1e30, max_steps=3, save_strategy="steps",
                   save_steps=1, per_device_train_batch_size=2)  # fmt: skip
    with pytest.raises(NonFiniteLossError, match=r"step 2: the loss is (nan|inf) on samples \[clip\d, clip\d\]") as e:
        T.main(train_argv(assets, tmp_path / "stop", **blow_up))
    assert "checkpoint-1" in str(e.value) and (tmp_path / "stop" / "checkpoint-1").is_dir()
    assert not (tmp_path / "stop" / "checkpoint-2").exists()
    summary = T.main(train_argv(assets, tmp_path / "skip", on_nonfinite_loss="skip", **blow_up))
    assert summary["global_step"] == 3 and summary["skipped_batches"] == 2


# ---------------------------------------------------------------- checkpoint folders that are half there


def _copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_tensor(path: Path) -> None:
    state = load_file(str(path))
    state.pop(sorted(k for k in state if "video_projector" in k)[0])
    save_file(state, str(path))


def _set_model_type(folder: Path, model_type: str) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(cfg))


def _other_hidden_size(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"]["hidden_size"] = 64
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: _truncate(d / "model.safetensors"), r"model\.safetensors: truncated or not a safetensors file"),
        (lambda d: _drop_tensor(d / "model.safetensors"), r"the saved weights lack 1 tensor\(s\).*video_projector"),
        (_other_hidden_size, r"the weights do not fit the model.*saved \[32\], the config gives \[64\]"),
        (lambda d: (d / "config.json").unlink(), r"has no config\.json"),
        (lambda d: _set_model_type(d, "llama"), r"model_type 'llama' is not supported"),
    ],
)
def test_half_written_model_folders_are_refused_by_inference_and_export(assets, tmp_path, edit, message):
    llm, clip, vm, _ = assets
    good = save_custom_model(tmp_path / "model", llm, clip, vm)
    bad = _copy(good, tmp_path / "bad", edit)
    with pytest.raises((CheckpointError, FileNotFoundError, ValueError), match=message):
        inf.load_predictor(bad)
    assert run_main(export_main, ["--model_path", str(bad), "--to", "hf", "--output", str(tmp_path / "x")]) != 0
    assert not (tmp_path / "x").exists()


def test_half_written_adapters_are_refused(assets, tmp_path, gemma270m_dir):
    out = tmp_path / "lora"
    T.main(train_argv(assets, out, stage="finetune", use_lora=True, max_steps=1))
    bad = _copy(out, tmp_path / "truncated", lambda d: _truncate(d / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors: truncated"):
        inf.load_predictor(bad)
    # The adapter's base model recorded in its config is now one with another hidden size.
    wide = make_llm(tmp_path, gemma270m_dir, name="tiny-wide", hidden_size=64, intermediate_size=128)

    def other_base(d: Path) -> None:
        cfg = json.loads((d / "config.json").read_text())
        cfg["sources"]["llm"] = str(wide)
        (d / "config.json").write_text(json.dumps(cfg))

    moved = _copy(out, tmp_path / "other_base", other_base)
    with pytest.raises(CheckpointError, match=r"do not fit .*size mismatch"):
        inf.load_predictor(moved)


def test_auto_resume_passes_over_a_damaged_newest_checkpoint(assets, tmp_path):
    out = tmp_path / "run"
    common = dict(stage="finetune", use_lora=True, save_strategy="steps", save_steps=1, max_steps=2)
    T.main(train_argv(assets, out, **common))
    _truncate(out / "checkpoint-2" / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match=r"checkpoint-2/adapter_model\.safetensors: truncated"):
        T.main(train_argv(assets, out, **common) + ["--resume_from_checkpoint", str(out / "checkpoint-2")])
    resumed = T.main(train_argv(assets, out, **common) + ["--resume_from_checkpoint", "auto"])
    assert resumed["global_step"] == 2 and (out / "checkpoint-2.damaged").is_dir()
    assert (out / "checkpoint-2").is_dir()  # step 2 trained again and saved whole


# ---------------------------------------------------------------- a full disk


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_predictions_keeps_what_was_written(assets, tmp_path, monkeypatch, capsys):
    llm, clip, vm, data = assets
    model = save_custom_model(tmp_path / "model", llm, clip, vm)
    out = tmp_path / "p.jsonl"
    argv = ["--model_path", str(model), "--annotations", str(data), "--media_root", str(data.parent), "--output",
            str(out), "--max_new_tokens", "2", "--batch_size", "2"]  # fmt: skip
    calls = []
    real_fsync = os.fsync

    def fsync_then_full(fd):  # the first batch is written whole, the second fills the disk
        calls.append(fd)
        return real_fsync(fd) if len(calls) == 1 else _no_space()

    monkeypatch.setattr(prediction_files.os, "fsync", fsync_then_full)
    assert run_main(inf.main, argv, prog="infer") == 1
    assert f"no space left on the device while writing {out}" in capsys.readouterr().err
    monkeypatch.undo()
    assert len(prediction_files.done_ids(prediction_files.read_records_by_line(out))) >= 2  # the first batch
    again = inf.main(argv)
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted({*ids}) and len(ids) == 4 and again["errors"] == 0


def test_a_full_disk_while_writing_the_merged_model_keeps_the_earlier_one(assets, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = train_argv(assets, out, stage="finetune", use_lora=True, max_steps=1, merge_lora=True)
    T.main(argv)
    before = {p.name: p.read_bytes() for p in (out / "merged").iterdir()}
    real = CUSTOM.load_merged

    class HalfSaved:
        def __init__(self, model):
            self.model = model

        def save_pretrained(self, folder):
            self.model.save_pretrained(folder)
            _no_space()

    monkeypatch.setattr(type(CUSTOM), "load_merged", lambda self, d: HalfSaved(real(d)))
    assert run_main(T.main, argv, prog="train") == 1
    assert f"no space left on the device while writing {out / 'merged'}" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (out / "merged").iterdir()} == before
    assert not (out / ".merged-staging").exists()


def test_a_full_disk_during_export_leaves_no_partial_folder(assets, tmp_path, monkeypatch, capsys):
    llm, clip, vm, _ = assets
    model = save_custom_model(tmp_path / "model", llm, clip, vm)

    def half_written(model_path, staging, dtype):
        (staging / "model.safetensors").write_bytes(b"\0" * 100)
        _no_space()

    monkeypatch.setattr(export_hf, "export_custom_hf", half_written)
    target = tmp_path / "exports" / "x"
    assert run_main(export_main, ["--model_path", str(model), "--to", "hf", "--output", str(target)]) == 1
    assert f"no space left on the device while writing {target}" in capsys.readouterr().err
    assert list((tmp_path / "exports").iterdir()) == []  # neither the export nor its partial folder


def test_a_full_disk_during_a_stream_keeps_the_windows_written(assets, tmp_path, monkeypatch, capsys):
    llm, clip, vm, data = assets
    model = save_custom_model(tmp_path / "model", llm, clip, vm)
    video = data.parent / "videos" / "clip0.mp4"
    out = tmp_path / "s.jsonl"
    argv = ["--model_path", str(model), "--source", str(video), "--output", str(out), "--window", "2",
            "--stride", "1", "--max_new_tokens", "2"]  # fmt: skip
    assert run_main(stream_main, argv) == 0
    complete = out.read_text()
    out.write_text(complete + '{"window": 99, "torn')  # a torn line from a killed run, repaired on resume
    monkeypatch.setattr(stream.Path, "write_text", _no_space)  # the repair's rewrite fills the disk
    assert run_main(stream_main, argv, prog="stream") == 1
    assert "no space left on the device while writing" in capsys.readouterr().err
    assert out.read_text() == complete + '{"window": 99, "torn'  # the file as it was
    monkeypatch.undo()
    assert run_main(stream_main, argv) == 0 and out.read_text() == complete


# ---------------------------------------------------------------- awkward and broken clips


def test_awkward_clips_are_read_and_broken_ones_named_by_kind(tmp_path):
    clips = write_awkward_clips(tmp_path)
    good = read_video(clips["good"], 8).frames
    # Rotation metadata is applied as a player shows the clip: 90 degrees clockwise, pixel for pixel, and as
    # decord (which applies it too) reads the same file.
    rotated = read_video(clips["rotated"], 8)
    np.testing.assert_array_equal(rotated.frames, np.rot90(good, k=-1, axes=(1, 2)))
    decord = pytest.importorskip("decord")
    reference = decord.VideoReader(str(clips["rotated"]), num_threads=1).get_batch(rotated.indices).asnumpy()
    np.testing.assert_array_equal(rotated.frames, reference)
    # The live stream shows a phone's portrait clip as the file reader does (it streamed it sideways before).
    streamed = [frame for _, frame in open_source(str(clips["rotated"]))]
    np.testing.assert_array_equal(np.stack(streamed)[rotated.indices], rotated.frames)
    assert np.abs(read_video(clips["ten_bit"], 8).frames.astype(int) - good).mean() < 2  # 10-bit, lossy, -> 8-bit
    assert read_video(clips["two_frames"], 8).indices == [0, 0, 0, 0, 1, 1, 1, 1]  # frames repeated
    assert read_video(clips["variable_frame_rate"], 8).frames.shape == (8, 32, 32, 3)
    kinds = {}
    for name in ("truncated", "zero_bytes", "audio_only", "still_image"):
        with pytest.raises(MediaError) as err:
            read_video(clips[name], 8)
        assert str(clips[name]) in str(err.value)
        kinds[name] = err.value.kind
    assert kinds == {"truncated": "unreadable", "zero_bytes": "empty file", "audio_only": "no video stream",
                     "still_image": "image, not a video"}  # fmt: skip


def test_training_over_broken_clips_counts_them_per_kind_and_finishes(assets, tmp_path):
    """20 good clips and the 8 awkward ones (4 unreadable: 1 in 7 of the set) through 2 DataLoader workers for a
    whole epoch: the 4 broken ones are skipped and counted by kind, the 4 awkward but readable ones trained on."""
    llm, clip, vm, data = assets
    clips = write_awkward_clips(tmp_path / "videos")
    good = json.loads(data.read_text())
    reply = good[0]["conversations"]
    rows = [{**good[i % 4], "id": f"good{i}", "video": str(data.parent / good[i % 4]["video"])} for i in range(20)]
    rows += [{"id": name, "video": str(path), "conversations": reply} for name, path in clips.items() if name != "good"]
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps(rows))
    argv = custom_train_args(llm, clip, vm, ann, tmp_path / "run", max_steps=-1, num_train_epochs=1,
                             per_device_train_batch_size=4, dataloader_num_workers=2, max_bad_fraction=0.2)  # fmt: skip
    summary = T.main(argv)
    assert summary["global_step"] == 7  # 28 samples / 4: the broken ones replaced by the next good one
    assert summary["skipped_samples"] == {"empty file": 1, "no video stream": 1, "image, not a video": 1,
                                          "unreadable": 1}  # fmt: skip


# ---------------------------------------------------------------- many samples, long streams


class FlakyPredictor:
    """The real predictor, with failures injected by sample id: ``once`` fail their first encode (a file still
    being copied), ``always`` fail every encode, ``poison`` fail every generate call that includes them."""

    def __init__(self, real, once=(), always=(), poison=()) -> None:
        self.real, self.once, self.always, self.poison = real, set(once), set(always), set(poison)
        self.poisoned: set[int] = set()

    def encode(self, sample):
        if sample.id in self.once:
            self.once.discard(sample.id)
            raise OSError(f"{sample.id}: resource temporarily unavailable")
        if sample.id in self.always:
            raise MediaError(f"{sample.id}: unreadable video")
        feats = self.real.encode(sample)
        if sample.id in self.poison:
            self.poisoned.add(id(feats))
        return feats

    def generate(self, feats, **kw):
        if any(id(f) in self.poisoned for f in feats):
            raise RuntimeError("generation failed")
        return self.real.generate(feats, **kw)


def test_a_failing_sample_is_retried_once_then_recorded_without_stopping_the_run(assets, tmp_path):
    llm, clip, vm, data = assets
    real = inf.load_predictor(save_custom_model(tmp_path / "model", llm, clip, vm),
                              generation=inf.GenerationConfig(max_new_tokens=2))  # fmt: skip
    samples = load_annotations(data, data.parent)
    out = tmp_path / "p.jsonl"
    flaky = FlakyPredictor(real, once={"clip1"}, always={"clip2"}, poison={"clip3"})
    stats = inf.predict(flaky, samples, out, batch_size=4, progress=False)
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert stats["errors"] == 2 and sorted(rows) == ["clip0", "clip1", "clip2", "clip3"]
    assert rows["clip0"]["prediction"] and rows["clip1"]["prediction"]  # clip0 generated alone after the batch
    assert rows["clip2"]["error"] == "MediaError: clip2: unreadable video"
    assert rows["clip3"]["error"] == "RuntimeError: generation failed"
    again = inf.predict(real, samples, out, batch_size=4, progress=False)  # the failed ones, once more
    assert again["retried"] == 2 and again["errors"] == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == ["clip0", "clip1", "clip2", "clip3"]


def _long_run(out: Path, n: int, *extra: str) -> subprocess.CompletedProcess:
    return _run(str(REPO / "tests" / "long_runs.py"), str(out), str(n), *extra)


def test_ten_thousand_samples_survive_three_kills_with_nothing_lost_or_repeated(tmp_path):
    n, out = 10_000, tmp_path / "p.jsonl"
    rng = np.random.default_rng(0)
    for k, torn in zip(rng.integers(300, 3_000, size=3), (False, True, False)):  # each counts from its resume
        proc = _long_run(out, n, "--kill_at", str(int(k)), *(["--torn"] if torn else []))
        assert proc.returncode == -9, proc.stderr  # killed, as kill -9 kills
    written_before = len(out.read_text().splitlines())
    assert 0 < written_before < n
    done = _long_run(out, n, "--rss", str(tmp_path / "rss.json"))
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.splitlines()[-1])
    assert stats["skipped_existing"] > 0 and stats["skipped_existing"] + stats["done"] == n
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == sorted({r["id"] for r in rows}) and len(rows) == n  # each once, in order
    assert all(r["prediction"] == f"answer {r['id']}" for r in rows)


def test_batch_inference_memory_stays_flat_over_ten_thousand_samples(tmp_path):
    proc = _long_run(tmp_path / "p.jsonl", 10_000, "--rss", str(tmp_path / "rss.json"))
    assert proc.returncode == 0, proc.stderr
    rss = json.loads((tmp_path / "rss.json").read_text())  # MB after 1,000, 2,000, ... samples
    assert len(rss) == 10 and rss[-1] - rss[0] < 8, rss


HOUR = 3600  # seconds of stream; 1 frame a second at 32 px, windows of 4 s every 4 s: 900 windows


@pytest.fixture(scope="module")
def hour_predictor(assets, tmp_path_factory):
    llm, clip, vm, _ = assets
    model = save_custom_model(tmp_path_factory.mktemp("hour") / "model", llm, clip, vm)
    return inf.load_predictor(model, generation=inf.GenerationConfig(max_new_tokens=1))


def _hour_stream(predictor, source: str, out: Path, stop_after: int | None = None, **cfg) -> tuple[dict, dict]:
    """Stream ``source``; returns (summary, RSS in MB when the stream passed 5, 30 and 60 minutes). With
    ``stop_after`` the stream is interrupted once that many windows are written."""
    rss, stop = {}, threading.Event()

    def on_record(rec: dict) -> None:
        for minute in (5, 30, 60):
            if rec["end"] >= minute * 60 - 4 and minute not in rss:
                rss[minute] = long_runs.rss_mb()
        if stop_after is not None and rec["window"] + 1 >= stop_after:
            stop.set()

    config = StreamConfig(window=4.0, stride=4.0, batch_size=8, folder_fps=1.0, **cfg)
    return run_stream(predictor, source, out, config, stop=stop, on_record=on_record), rss


def test_an_hour_long_file_streams_in_flat_memory_and_resumes_without_gaps(hour_predictor, tmp_path):
    video = write_long_video(tmp_path / "hour.mp4", HOUR)
    summary, rss = _hour_stream(hour_predictor, str(video), tmp_path / "straight.jsonl")
    assert summary["windows"] == HOUR // 4 and sorted(rss) == [5, 30, 60]
    assert rss[60] - rss[30] < 8 and rss[60] - rss[5] < 40, rss  # no growth with the stream's length
    straight = [json.loads(line) for line in (tmp_path / "straight.jsonl").read_text().splitlines()]
    assert [r["window"] for r in straight] == list(range(HOUR // 4))
    # Interrupted after 400 windows, then run again: every window once, the same as the straight run.
    resumed = tmp_path / "resumed.jsonl"
    _hour_stream(hour_predictor, str(video), resumed, stop_after=400)
    assert 400 <= len(resumed.read_text().splitlines()) < HOUR // 4
    _hour_stream(hour_predictor, str(video), resumed)
    rows = [json.loads(line) for line in resumed.read_text().splitlines()]
    key = lambda rs: [(r["window"], r["start"], r["end"], r["reply"]) for r in rs]  # noqa: E731
    assert key(rows) == key(straight)


def test_an_hour_from_a_growing_folder_and_from_a_url_gives_every_window_once(hour_predictor, tmp_path):
    write_long_video(tmp_path / "hour.mp4", HOUR)
    with served(tmp_path) as base:
        summary, rss = _hour_stream(hour_predictor, f"{base}/hour.mp4", tmp_path / "url.jsonl")
    assert summary["windows"] == HOUR // 4 and rss[60] - rss[5] < 40, rss
    folder = tmp_path / "frames"
    folder.mkdir()

    def camera() -> None:  # frames arrive while the stream reads them
        for i in range(HOUR):
            Image.fromarray(long_frame(i)).save(folder / f"frame_{i + 1}.png")

    writer = threading.Thread(target=camera)
    writer.start()
    summary, rss = _hour_stream(hour_predictor, str(folder), tmp_path / "folder.jsonl", idle_timeout=10.0)
    writer.join()
    assert summary["windows"] == HOUR // 4 and rss[60] - rss[5] < 40, rss
    for name in ("url", "folder"):
        windows = [json.loads(line)["window"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert windows == list(range(HOUR // 4)), name
