"""The rendered coach: people exercising with named form errors, written in QEVD's release layouts and read back
through the QEVD readers; the form labels of replies; when a stream's coach speaks; the coach's scoring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gemma3.data import exercises as X
from gemma3.data.coach import BENCHMARK, CoachConfig, make_coach_dataset, session, specs
from gemma3.data.formats import load_annotations
from gemma3.data.plan import prepare_data
from gemma3.evaluation.benchmarks import get_benchmark
from gemma3.serve.feedback import feedback_events, form_label_key

TINY = CoachConfig(seed=3, size=32, clips_per_label=2, test_fraction=0.5, sessions=1, exercises_per_session=2)


@pytest.fixture(scope="module")
def tiny_coach(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coach")
    make_coach_dataset(root, TINY)
    return root


def test_every_phrasing_maps_back_to_its_label():
    for (exercise, form), options in X.PHRASES.items():
        for option in options:
            assert X.label_of(f"{exercise} - {option}") == X.label(exercise, form)
    assert X.label_of("") is None
    assert X.label_of("squats, push your knees out please") == "squats - knees caving in"  # worded differently


def test_form_errors_change_the_pose_visibly():
    """Each named error moves some joint by at least 2 pixels of a 64-pixel frame at the repetition's bottom."""
    body = X.Body.random(np.random.default_rng(0))
    scale = 64 * 0.7
    for exercise, forms in X.FORMS.items():
        good = X.POSES[exercise](body, 1.0, X.GOOD)
        for form in forms[1:]:
            bad = X.POSES[exercise](body, 1.0, form)
            shift = max(np.hypot(pa[0] - pb[0], pa[1] - pb[1]) for ga, ba in zip(good, bad)
                        for pa, pb in ((ga[0], ba[0]), (ga[1], ba[1])))  # fmt: skip
            assert shift * scale >= 2.0, (exercise, form, shift * scale)


def test_short_clips_in_the_qevd_fit_300k_layout(tiny_coach):
    records = json.loads((tiny_coach / "fine_grained_labels.json").read_text())
    assert {r["split"] for r in records} == {"train", "test"}
    assert all((tiny_coach / "short_clips" / Path(r["video_path"]).name).is_file() for r in records)
    train = load_annotations(specs(tiny_coach)["train"])
    test = load_annotations(specs(tiny_coach)["test"])
    labels = X.all_labels()
    assert len(train) == len(test) == len(labels)  # one clip per label in each split
    assert sorted(s.extra["labels"][0] for s in test) == sorted(labels)
    for s in test:  # the reply is the coach's sentence, one of its label's phrasings
        assert X.label_of(s.reference) == s.extra["labels"][0]
        assert s.reference.split(" - ")[0] == s.extra["labels"][0].split(" - ")[0]
    # the same clips answered with their labels (what the main job pretrains the visual path on)
    labelled = load_annotations(specs(tiny_coach)["train_labels"])
    assert [(s.id, s.reference) for s in labelled] == [(s.id, s.extra["labels"][0]) for s in train]


def test_sessions_in_the_qevd_fit_coach_layout(tiny_coach):
    [sample] = load_annotations(specs(tiny_coach)["sessions"])
    folder = tiny_coach / BENCHMARK / "long_range_videos"
    assert sample.media[0].path == str(folder / "0000.mp4") and (folder / "0000_timestamps.npy").is_file()
    events, segments = sample.extra["events"], sample.extra["segments"]
    transitions = [e for e in events if e["is_transition"]]
    assert transitions[0]["text"].startswith("First up are") and len(transitions) == TINY.exercises_per_session + 1
    assert len(segments) == TINY.exercises_per_session  # the closing words end the last exercise's segment
    for seg in segments:
        said = [events[i] for i in seg["events"]]
        assert len(said) == TINY.runs_per_exercise
        assert all(seg["start"] < e["t"] <= seg["end"] and X.label_of(e["text"]) for e in said)
        assert {e["text"].split(" - ")[0] for e in said} == {seg["exercise"]}


def test_a_session_speaks_one_repetition_into_each_run():
    rng = np.random.default_rng(0)
    frames, said = session(rng, TINY)
    assert frames.shape[1:] == (TINY.size, TINY.size, 3) and frames.dtype == np.uint8
    frames_at = [s["frame"] for s in said]
    assert frames_at == sorted(frames_at) and frames_at[-1] < len(frames)
    # consecutive feedback differs (a per-frame span is one thing said)
    assert all(a["text"] != b["text"] for a, b in zip(said, said[1:]))


def test_same_seed_same_bytes_in_two_processes(tmp_path):
    root = Path(__file__).resolve().parents[1]
    code = ("import sys; from gemma3.data.coach import CoachConfig, make_coach_dataset; "
            "make_coach_dataset(sys.argv[1], CoachConfig(seed=5, size=32, clips_per_label=2, sessions=1, "
            "exercises_per_session=1))")  # fmt: skip
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], cwd=root, check=True, capture_output=True)
    sums = [(tmp_path / name / "checksums.sha256").read_text() for name in ("a", "b")]
    assert sums[0] == sums[1] and len(sums[0].splitlines()) > 30


def test_a_complete_dataset_is_kept_and_a_damaged_one_rewritten(tiny_coach, tmp_path):
    info = json.loads((tiny_coach / "dataset_info.json").read_text())
    assert make_coach_dataset(tiny_coach, TINY) == info  # kept, nothing written
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(tiny_coach), str(copy)], check=True)
    clip = copy / "short_clips" / "00000000.mp4"
    clip.write_bytes(clip.read_bytes()[:100])
    make_coach_dataset(copy, TINY)
    name = "short_clips/00000000.mp4"
    assert (copy / name).read_bytes() == (tiny_coach / name).read_bytes()  # written again, the same bytes


def test_a_real_release_folder_is_never_written_into(tmp_path):
    root = tmp_path / "qevd"
    root.mkdir()
    labels = root / "fine_grained_labels.json"
    labels.write_text(json.dumps([{"video_path": "./1.mp4", "labels": ["squats - good form"], "split": "train"}]))
    with pytest.raises(ValueError, match="did not write"):
        make_coach_dataset(root, TINY)
    plan = prepare_data(root, 2, 8, seed=0)  # the pipeline pointed at a QEVD download reads it as it is
    assert plan.train.split(",")[0] == f"qevd_fit_300k:{root}:train" and plan.sessions is None
    assert sorted(p.name for p in root.iterdir()) == ["fine_grained_labels.json"]


def test_the_coach_speaks_when_the_form_changes_and_rests_silently():
    def window(i: int, reply: str) -> dict:
        return {"start": i * 0.5, "end": i * 0.5 + 2.0, "reply": reply, "action": reply.split(" - ")[0]}

    good = "squats - nice squats, knees tracking over the toes"
    caving = "squats - push your knees out, they are caving in"
    other_wording = "squats - keep your knees over your toes, not inward"
    rest = "rest - shake it out and get ready"
    replies = [rest, rest, good, good, good, caving, good, caving, caving, other_wording, rest, rest, caving, caving]
    events = feedback_events([window(i, r) for i, r in enumerate(replies)], "end", 2, form_label_key)
    # settled after two windows, timed at the second one's end; a one-window flicker and a new wording say nothing;
    # after a settled rest the same form is spoken again
    assert [(e.t, X.label_of(e.text)) for e in events] == [
        (3.5, "squats - good form"), (6.0, "squats - knees caving in"), (8.5, "squats - knees caving in")]  # fmt: skip
    # the default key (the action) speaks once per change of action, rest included
    assert len(feedback_events([window(i, r) for i, r in enumerate(replies)], "end", 2)) == 4


def test_form_accuracy_and_the_most_frequent_feedback_baseline():
    refs = {
        "a": {"reference": "squats - go deeper, get your hips down to your knees", "labels": ["squats - shallow depth"],
              "labels_descriptive": ["squats - go deeper, get your hips down to your knees"]},
        "b": {"reference": "squats - go deeper, get your hips down to your knees", "labels": ["squats - shallow depth"],
              "labels_descriptive": ["squats - go deeper, get your hips down to your knees"]},
        "c": {"reference": "plank - great plank, hold that straight line", "labels": ["plank - good form"],
              "labels_descriptive": ["plank - great plank, hold that straight line"]},
    }  # fmt: skip
    preds = [{"id": "a", "prediction": "squats - get your hips down, go deeper"},
             {"id": "b", "prediction": "squats - great plank, hold that straight line"},
             {"id": "c", "prediction": "plank - great plank, hold that straight line"}]  # fmt: skip
    res = get_benchmark("qevd_fit_300k").score(preds, refs)
    assert res["exercise_accuracy"] == pytest.approx(1.0)
    # b names the right exercise with another label's sentence: its nearest reference sentence is the plank's
    assert [r["form_correct"] for r in res["records"]] == [True, False, True]
    assert res["form_accuracy"] == pytest.approx(2 / 3)
    base = res["baseline"]
    assert base["reply"] == "squats - go deeper, get your hips down to your knees"
    assert base["form_accuracy"] == pytest.approx(2 / 3) and base["exercise_accuracy"] == pytest.approx(2 / 3)
    assert "baseline" not in get_benchmark("qevd").score([{**p, "reference": refs[p["id"]]["reference"]}
                                                          for p in preds])  # fmt: skip


@pytest.mark.slow
def test_sessions_streamed_and_scored_with_causal_timing(tiny_coach, tmp_path, gemma270m_dir):
    """Every window of each session answered once, and every feedback the coach spoke timed at the end of the
    window that settled it (the moment a live system could speak), scored as ``qevd_fit_coach``."""
    from tiny_checkpoints import make_custom_assets, save_custom_model

    from gemma3.evaluation.coach import StreamPlan, stream_sessions

    llm, clip, vm, _ = make_custom_assets(tmp_path, gemma270m_dir, n=2)
    model = save_custom_model(tmp_path / "model", llm, clip, vm)  # 4 frames: a 1 s window at the coach's 4 fps
    plan = StreamPlan(window=1.0, stride=0.5, min_windows=1, max_new_tokens=6)
    results = stream_sessions(model, specs(tiny_coach)["sessions"], tmp_path / "sessions", plan)
    assert results["mode"] == "single_exercise" and results["stream"]["feedback_time"] == "end"
    assert 0.0 <= results["temporal_f_score"] <= 1.0 and results["num_samples"] == 1
    rows = [json.loads(x) for x in (tmp_path / "sessions" / "streams" / "0000.jsonl").read_text().splitlines()]
    assert [r["window"] for r in rows] == list(range(len(rows))) and rows[-1]["end"] >= 25.0
    spoken = feedback_events(rows, "end", 1, form_label_key)
    assert spoken and {e.t for e in spoken} <= {r["end"] for r in rows}  # never before a window's end
    again = stream_sessions(model, specs(tiny_coach)["sessions"], tmp_path / "sessions", plan)  # resumed: all done
    assert again["temporal_f_score"] == results["temporal_f_score"]
