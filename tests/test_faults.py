"""Faults and bad input: nothing lost, nothing counted twice, every error clear (file, sample and field named)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_checkpoints import custom_train_args, make_custom_assets, save_custom_model

import gemma3.serve.inference as inf
from gemma3.data import validate as validate_cli
from gemma3.data.dataset import SupervisedDataset
from gemma3.data.formats import AnnotationError, Media, Sample, load_annotations
from gemma3.data.synthetic import SyntheticConfig, make_synthetic_dataset, verify_dataset
from gemma3.evaluation.evaluate import CoverageError, evaluate
from gemma3.model.families import CUSTOM
from gemma3.train import train as T

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, gemma270m_dir):
    """A saved tiny custom model (full weights + tokenizer) and a 4-clip dataset."""
    root = tmp_path_factory.mktemp("faults")
    llm, clip, vm, data = make_custom_assets(root, gemma270m_dir)
    save_custom_model(root / "model", llm, clip, vm)
    return root, data, llm, clip, vm


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------- training data


def test_bad_samples_are_counted_across_dataloader_workers(tiny):
    root, data, *_ = tiny
    model, tok = CUSTOM.load(root / "model")
    plugin = CUSTOM.plugin(model, tok, CUSTOM.default_processing(model, tok))
    samples = load_annotations(data)
    broken = [Sample(s.id, s.messages, (Media("video", str(root / "missing.mp4")),), s.source)
              for s in samples[:2]]  # fmt: skip
    # 2 bad of 4 with a 60% limit: training goes on, and the main process knows both were skipped.
    d = SupervisedDataset(broken + samples[2:], plugin, tok, CUSTOM.template(model.config), max_bad_fraction=0.6)
    loader = torch.utils.data.DataLoader(d, batch_size=1, num_workers=2, collate_fn=lambda b: b)
    assert len(list(loader)) == 4
    assert d.stats.bad == {0, 1} and str(d.stats) == "2 of 4 samples skipped as bad (missing file: 2)"
    # With a 30% limit the second bad sample (whichever worker meets it) stops the run.
    d = SupervisedDataset(broken + samples[2:], plugin, tok, CUSTOM.template(model.config), max_bad_fraction=0.3)
    loader = torch.utils.data.DataLoader(d, batch_size=1, num_workers=2, collate_fn=lambda b: b)
    with pytest.raises(RuntimeError, match="2 of 4 samples are bad, over the allowed 30.0%"):
        list(loader)


def test_empty_reply_is_skipped_in_training_and_reported_by_validate(tiny, tmp_path):
    root, data, *_ = tiny
    recs = json.loads(data.read_text())
    recs[1]["conversations"][1]["value"] = "  "
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(recs))
    model, tok = CUSTOM.load(root / "model")
    plugin = CUSTOM.plugin(model, tok, CUSTOM.default_processing(model, tok))
    d = SupervisedDataset(load_annotations(ann, media_root=data.parent), plugin, tok,
                             CUSTOM.template(model.config), max_bad_fraction=0.5)  # fmt: skip
    [d[i] for i in range(4)]
    assert d.stats.bad == {1}
    report = validate_cli.validate_annotations(ann, data.parent)
    assert [(p.index, p.field) for p in report.problems] == [(1, "conversations")]
    assert "empty assistant reply" in report.problems[0].problem


def test_validate_counts_length_with_template_and_placeholders(tiny, tmp_path):
    root, data, *_ = tiny
    model, _ = CUSTOM.load(root / "model")
    n_video = model.config.num_video_tokens
    # The raw text is far below the limit; with the template and the expanded <video> it is not.
    limit = n_video + 5
    tok = CUSTOM.load_config_and_processor(root / "model")[1]
    text_only = validate_cli.validate_annotations(data, data.parent, tokenizer=tok, max_length=limit)
    assert text_only.ok
    proc = _run("dataset.py", "validate", str(data), "--media-root", str(data.parent), "--model_path",
                str(root / "model"), "--max-length", str(limit))  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "field=length" in proc.stdout and "tokens with template and media, over max_length" in proc.stdout
    ok = _run("dataset.py", "validate", str(data), "--media-root", str(data.parent), "--model_path",
              str(root / "model"), "--max-length", "4096")  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_malformed_annotation_file_is_named(tmp_path):
    bad = tmp_path / "train.json"
    bad.write_text('[{"id": "a", "conversations": []},\n {"id": "b",, }]')
    with pytest.raises(AnnotationError, match=r"train.json: invalid JSON at line 2"):
        load_annotations(bad)
    bad.write_text('"just a string"')
    with pytest.raises(AnnotationError, match=r"train.json: expected a JSON list"):
        load_annotations(bad)


# ---------------------------------------------------------------- training arguments and saving


def test_training_argument_ranges(tiny, tmp_path):
    root, data, llm, clip, vm = tiny
    base = custom_train_args(llm, clip, vm, data, tmp_path / "o")
    for flag, value, msg in (
        ("--num_frames", "0", "--num_frames must be >= 1, got 0"),
        ("--per_device_train_batch_size", "0", "--per_device_train_batch_size must be >= 1"),
        ("--max_bad_fraction", "2", "--max_bad_fraction must be in"),
    ):
        with pytest.raises(ValueError, match=msg):
            T.main([*base, flag, value])
    with pytest.raises(FileNotFoundError, match="model path .*nope: does not exist"):
        T.main([*base, "--model_id", str(tmp_path / "nope")])
    assert not (tmp_path / "o").exists()  # nothing written before the checks pass


def test_full_disk_at_the_final_save_leaves_the_output_as_it_was(tiny, tmp_path, monkeypatch):
    root, data, llm, clip, vm = tiny
    out = tmp_path / "run"
    args = custom_train_args(llm, clip, vm, data, out, stage="finetune", use_lora=True, max_steps=1)
    T.main(args)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.suffix == ".safetensors"}
    assert "adapter_model.safetensors" in before

    real = T.VideoGemmaTrainer.save_model

    def full_disk(self, output_dir=None, _internal_call=False):
        real(self, output_dir)  # the files appear, then the disk fills up
        with open(Path(output_dir) / "adapter_model.safetensors", "r+b") as f:
            f.truncate(10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(T.VideoGemmaTrainer, "save_model", full_disk)
    with pytest.raises(OSError, match=r"saving the final model into .*run failed .*No space left.*left as it was"):
        T.main([*args, "--seed", "1"])
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.suffix == ".safetensors"}
    assert after == before and not (out / T.FINAL_STAGING).exists()


# ---------------------------------------------------------------- inference


def test_video_dir_ids_are_relative_paths(tiny, tmp_path):
    root, data, *_ = tiny
    for sub in ("a", "b"):
        (tmp_path / "clips" / sub).mkdir(parents=True)
        shutil.copy(data.parent / "videos" / "clip0.mp4", tmp_path / "clips" / sub / "same.mp4")
    out = tmp_path / "p.jsonl"
    inf.main(["--model_path", str(root / "model"), "--video_dir", str(tmp_path / "clips"), "--output", str(out),
              "--max_new_tokens", "2"])  # fmt: skip
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a/same.mp4", "b/same.mp4"]
    assert [r["media"] for r in rows] == [[str(tmp_path / "clips" / s / "same.mp4")] for s in ("a", "b")]
    again = inf.main(["--model_path", str(root / "model"), "--video_dir", str(tmp_path / "clips"), "--output",
                      str(out), "--max_new_tokens", "2"])  # fmt: skip
    assert again["skipped_existing"] == 2 and len(out.read_text().splitlines()) == 2


def test_failed_records_are_retried_and_written_once(tiny, tmp_path):
    root, data, *_ = tiny
    recs = json.loads(data.read_text())
    recs[2]["video"] = "videos/late.mp4"  # not there yet
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(recs))
    out = tmp_path / "p.jsonl"
    argv = ["--model_path", str(root / "model"), "--annotations", str(ann), "--media_root", str(data.parent),
            "--output", str(out), "--max_new_tokens", "2", "--batch_size", "2"]  # fmt: skip
    first = inf.main(argv)
    assert first["errors"] == 1
    shutil.copy(data.parent / "videos" / "clip2.mp4", data.parent / "videos" / "late.mp4")
    try:
        second = inf.main(argv)
    finally:
        (data.parent / "videos" / "late.mp4").unlink()
    assert second["retried"] == 1 and second["done"] == 1 and second["errors"] == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in recs) and not any("error" in r for r in rows)


def test_a_second_writer_of_one_output_is_refused(tiny, tmp_path):
    import fcntl

    root, data, *_ = tiny
    out = tmp_path / "p.jsonl"
    with open(tmp_path / "p.jsonl.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process is writing
        pred = inf.load_predictor(root / "model")
        with pytest.raises(RuntimeError, match="another inference process is writing this file"):
            inf.predict(pred, load_annotations(data), out)
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value", "msg"),
    [
        ("--batch_size", "-1", "argument --batch_size: must be >= 1, got -1"),
        ("--batch_size", "0", "argument --batch_size: must be >= 1, got 0"),
        ("--num_frames", "0", "argument --num_frames: must be >= 1, got 0"),
        ("--max_new_tokens", "x", "argument --max_new_tokens: 'x' is not an integer"),
    ],
)
def test_inference_argument_ranges(tiny, tmp_path, flag, value, msg):
    root, data, *_ = tiny
    proc = _run("gemma3n_batch_inference.py", "--model_path", str(root / "model"), "--annotations", str(data),
                "--output", str(tmp_path / "p.jsonl"), flag, value)  # fmt: skip
    assert proc.returncode == 2 and msg in proc.stderr and not (tmp_path / "p.jsonl").exists()


def test_missing_model_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model path .*/nope: does not exist"):
        inf.load_predictor(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"model path outputs/never_trained: no such local folder"):
        inf.load_predictor("outputs/never_trained")


# ---------------------------------------------------------------- evaluation input


def _preds(path: Path, rows: list, extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra)
    return path


def test_evaluate_reports_and_refuses_bad_prediction_files(tiny, tmp_path):
    _, data, *_ = tiny
    refs = {r["id"]: r["conversations"][1]["value"] for r in json.loads(data.read_text())}
    rows = [{"id": i, "prediction": r} for i, r in refs.items()]
    classes = ["moving left", "moving right"]
    full = evaluate("action_recognition", _preds(tmp_path / "full.jsonl", rows), data, classes=classes, plot=False)
    assert full["top1_accuracy"] == 1.0 and full["input"]["coverage"] == 1.0
    with pytest.raises(CoverageError, match=r"cover 50.0% of the 4 annotated samples"):
        evaluate("action_recognition", _preds(tmp_path / "half.jsonl", rows[:2]), data, classes=classes)
    half = evaluate("action_recognition", tmp_path / "half.jsonl", data, classes=classes, min_coverage=0, plot=False)
    assert half["num_samples"] == 2 and half["input"]["missing_ids"] == ["clip2", "clip3"]
    twice = evaluate("action_recognition", _preds(tmp_path / "twice.jsonl", rows + rows), data, classes=classes,
                     plot=False)  # fmt: skip
    assert twice["num_samples"] == 4 and twice["input"]["duplicate_ids"] == sorted(refs)
    corrupt = _preds(tmp_path / "corrupt.jsonl", rows[:2], '{"id": "clip2", "predic\n')
    with open(corrupt, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows[2:]))
    mid = evaluate("action_recognition", corrupt, data, classes=classes, plot=False)
    assert mid["input"]["unreadable_lines"] == [3] and mid["num_samples"] == 4
    with pytest.raises(CoverageError, match="no predictions to score"):
        evaluate("action_recognition", _preds(tmp_path / "empty.jsonl", []), classes=classes)
    (tmp_path / "classes.txt").write_text("\n".join(classes))
    cli = _run("eval/evaluate.py", "--benchmark", "action_recognition", "--predictions", str(tmp_path / "half.jsonl"),
               "--annotations", str(data), "--classes", str(tmp_path / "classes.txt"), "--output_dir",
               str(tmp_path / "ev"))  # fmt: skip
    assert cli.returncode == 2 and "cover 50.0%" in cli.stderr and not (tmp_path / "ev" / "metrics.json").exists()


# ---------------------------------------------------------------- data preparation


def test_synthetic_generation_verifies_what_it_keeps(tmp_path):
    cfg = SyntheticConfig(clips_per_class=1, num_frames=4, size=32, variants=0, classes=("growing", "shrinking"))
    make_synthetic_dataset(tmp_path / "d", cfg)
    assert verify_dataset(tmp_path / "d") == []
    clip = next((tmp_path / "d" / "videos").rglob("*.mp4"))
    good = clip.read_bytes()
    clip.write_bytes(good[: len(good) // 2])  # a clip cut short by a killed generation
    assert verify_dataset(tmp_path / "d") == [f"{clip}: checksum mismatch"]
    make_synthetic_dataset(tmp_path / "d", cfg)
    assert clip.read_bytes() == good and verify_dataset(tmp_path / "d") == []
    (tmp_path / "d" / "dataset_info.json").unlink()  # killed before the marker was written
    assert "generation did not finish" in verify_dataset(tmp_path / "d")[0]
    proc = _run("-m", "gemma3.data.synthetic", "--out", str(tmp_path / "e"), "--clips-per-class", "0")
    assert proc.returncode == 2 and "clips_per_class must be >= 1 (got 0)" in proc.stderr
    assert not (tmp_path / "e" / "dataset_info.json").exists()


def test_prepare_drops_unreadable_and_duplicate_rows_and_names_missing_inputs(tiny, tmp_path):
    _, data, *_ = tiny
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        shutil.copy(data.parent / "videos" / f"clip{i}.mp4", videos / f"c{i}.mp4")
    (videos / "broken.mp4").write_bytes(b"not a video")
    rows = [{"video_path": f"c{i}.mp4", "labels_descriptive": "squat - knees out"} for i in range(3)]
    rows += [{"video_path": "broken.mp4", "labels_descriptive": "squat - ok"}, rows[0]]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(rows))
    from gemma3.data.prepare import prepare

    info = prepare(videos, labels, tmp_path / "out")
    assert sum(info["counts"].values()) == 3
    report = json.loads((tmp_path / "out" / "validation_report.json").read_text())["labels_file_problems"]
    assert {(p["index"], p["problem"].split(":")[0]) for p in report} == {
        (3, "unreadable"),
        (4, "duplicate of label row 0"),
    }
    proc = _run("-m", "gemma3.data.prepare", "--videos", str(tmp_path / "none"), "--labels", str(labels), "--out",
                str(tmp_path / "o2"))  # fmt: skip
    assert proc.returncode == 2 and "--videos" in proc.stderr and "no such folder" in proc.stderr
