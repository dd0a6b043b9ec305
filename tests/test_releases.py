"""Dataset release layouts read directly (``FORMAT:ROOT[:SPLIT]``): each test builds a tiny copy of a release as
its publisher ships it (file names, headers, quirks as the official loaders read them) and reads it back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from media_utils import make_frames, write_json, write_video

from gemma3.cli import main as cli_main
from gemma3.data.formats import load_annotations
from gemma3.data.releases import RELEASES, ReleaseError, get_release, load_release, parse_spec
from gemma3.data.releases.qevd import CLOCK_OFFSET_S, feedback_spans


def _touch(path: Path, real: bool = False) -> Path:
    """A clip file: a real 4-frame video, or a placeholder when only the layout is under test."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if real:
        return write_video(path, make_frames(4), fps=4)
    path.write_bytes(b"\x00")
    return path


def _csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_specs_parse_only_registered_formats():
    spec = parse_spec("kinetics400:/data/k400:val")
    assert (spec.format, str(spec.root), spec.split) == ("kinetics400", "/data/k400", "val")
    assert parse_spec("ucf101:/data/ucf").split is None
    assert parse_spec("data/train.json") is None and parse_spec("my_dataset") is None
    assert parse_spec("unknown:/x:val") is None
    assert {
        "kinetics400",
        "kinetics600",
        "kinetics700",
        "ssv2",
        "ucf101",
        "hmdb51",
        "qevd_fit_300k",
        "qevd_fit_coach",
        "mvbench",
        "nextqa",
        "perceptiontest",
        "oxford_pets",
        "llava_video",
    } <= set(RELEASES)


def _kinetics_cvdf(root: Path, n: int = 10, missing: int = 0) -> Path:
    rows = [["air drumming" if i % 2 else "abseiling", f"-{i:010d}", 10 * i, 10 * i + 10, "val", 0] for i in range(n)]
    _csv(root / "annotations" / "val.csv", ["label", "youtube_id", "time_start", "time_end", "split", "is_cc"], rows)
    for _, ytid, s, e, *_ in rows[missing:]:
        _touch(root / "val" / f"{ytid}_{s:06d}_{e:06d}.mp4")
    return root


def test_kinetics_cvdf_layout_labels_from_the_csv(tmp_path):
    root = _kinetics_cvdf(tmp_path / "k400")
    samples = load_annotations(f"kinetics400:{root}:val")
    assert len(samples) == 10
    first = samples[1]
    assert first.id == "-0000000001_000010_000020" and first.reference == "air drumming"
    assert first.media[0].path == str(root / "val" / "-0000000001_000010_000020.mp4")
    assert first.messages[0]["content"].startswith("<video>\n")
    assert get_release(parse_spec(f"kinetics400:{root}:val")).classes() == ["abseiling", "air drumming"]


def test_kinetics_missing_clips_are_counted_and_refused_above_the_limit(tmp_path, caplog):
    root = _kinetics_cvdf(tmp_path / "k400", n=20, missing=1)  # 5% missing: reported, kept
    assert len(load_annotations(f"kinetics400:{root}:val")) == 19
    assert "1 of 20 clips missing (5.0%; first: -0000000000_000000_000010)" in caplog.text
    worse = _kinetics_cvdf(tmp_path / "k400b", n=10, missing=3)
    with pytest.raises(ReleaseError, match=r"3 of 10 clips missing .* over --max_missing_fraction 0.1"):
        load_release(f"kinetics400:{worse}:val")
    assert len(load_release(f"kinetics400:{worse}:val", max_missing_fraction=0.5)) == 7


def test_kinetics_torchvision_class_folders(tmp_path):
    root = tmp_path / "k700"
    for label in ("petting_animal_not_cat", "abseiling"):
        for i in range(2):
            _touch(root / "train" / label / f"{label[:3]}{i:08d}_000000_000010.mp4")
    samples = load_release(f"kinetics700:{root}:train")
    assert sorted({s.reference for s in samples}) == ["abseiling", "petting animal not cat"]
    with pytest.raises(ReleaseError, match="split 'validate' is not one of"):
        load_release(f"kinetics700:{root}:validate")


def test_ssv2_class_is_the_template_without_brackets(tmp_path):
    root = tmp_path / "ssv2"
    write_json(root / "labels" / "labels.json", {"Putting something on something": "1", "Holding something": "0"})
    recs = [{"id": "78687", "label": "putting a cup on a table", "template": "Putting [something] on [something]",
             "placeholders": ["a cup", "a table"]}, {"id": "5", "label": "holding x", "template": "Holding [something]",
             "placeholders": ["x"]}]  # fmt: skip
    write_json(root / "labels" / "validation.json", recs)
    for r in recs:
        _touch(root / "20bn-something-something-v2" / f"{r['id']}.webm")
    samples = load_release(f"ssv2:{root}")  # default split: validation
    assert [(s.id, s.reference) for s in samples] == [("78687", "Putting something on something"),
                                                      ("5", "Holding something")]  # fmt: skip
    assert get_release(parse_spec(f"ssv2:{root}")).classes() == ["Holding something", "Putting something on something"]
    write_json(root / "labels" / "validation.json", [{**recs[0], "template": "Tearing [something]"}])
    with pytest.raises(ReleaseError, match="template 'Tearing something' is not in labels.json"):
        load_release(f"ssv2:{root}")


def _ucf(root: Path) -> Path:
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n")
    train = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1", "HandstandPushups/v_HandStandPushups_g08_c01.avi 2"]
    test = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "HandstandPushups/v_HandStandPushups_g01_c01.avi"]
    (lists / "trainlist01.txt").write_bytes("\r\n".join(train).encode() + b"\r\n")
    (lists / "testlist01.txt").write_bytes("\r\n".join(test).encode() + b"\r\n")
    (lists / "testlist02.txt").write_bytes(test[0].encode() + b"\r\n")
    for line in train + test:
        _touch(root / "UCF-101" / line.split()[0], real=True)
    return root


def test_ucf101_folds_and_the_handstand_file_name_quirk(tmp_path):
    root = _ucf(tmp_path / "ucf")
    test = load_release(f"ucf101:{root}")  # fold 1 test by default; test lists carry no label
    assert [(s.id, s.reference) for s in test] == [("v_ApplyEyeMakeup_g01_c01", "apply eye makeup"),
                                                   ("v_HandStandPushups_g01_c01", "handstand pushups")]  # fmt: skip
    assert test[1].media[0].path.endswith("UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi")
    assert len(load_release(f"ucf101:{root}:train")) == 2 and len(load_release(f"ucf101:{root}:test2")) == 1
    assert get_release(parse_spec(f"ucf101:{root}")).classes() == ["apply eye makeup", "handstand pushups"]
    with pytest.raises(ReleaseError, match="fold-3 test list not found"):
        load_release(f"ucf101:{root}:test3")


def test_hmdb51_split_files_with_tags(tmp_path):
    root = tmp_path / "hmdb"
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    (splits / "brush_hair_test_split1.txt").write_text("a_brush_0.avi 1 \nb_brush_1.avi 2 \nc_brush_2.avi 0 \n")
    (splits / "cartwheel_test_split1.txt").write_text("(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi 2 \n")
    for cls, name in (("brush_hair", "a_brush_0.avi"), ("brush_hair", "b_brush_1.avi"), ("brush_hair", "c_brush_2.avi"),
                      ("cartwheel", "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi")):  # fmt: skip
        _touch(root / "hmdb51_org" / cls / name)
    test = load_release(f"hmdb51:{root}:test")
    assert sorted((s.id, s.reference) for s in test) == [
        ("(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0", "cartwheel"),
        ("b_brush_1", "brush hair"),
    ]
    assert [s.id for s in load_release(f"hmdb51:{root}:train")] == ["a_brush_0"]  # tag 0 (unused) never read


def test_oxford_pets_breed_from_the_file_name(tmp_path):
    root = tmp_path / "pets"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "test.txt").write_text("Abyssinian_100 1 1 1\namerican_pit_bull_terrier_10 3 2 2\n")
    for name in ("Abyssinian_100", "american_pit_bull_terrier_10"):
        _touch(root / "images" / f"{name}.jpg")
    samples = load_release(f"oxford_pets:{root}")
    assert [(s.reference, s.media[0].kind) for s in samples] == [("Abyssinian", "image"),
                                                                 ("American Pit Bull Terrier", "image")]  # fmt: skip
    assert samples[0].messages[0]["content"] == "<image>\nWhich pet breed is this?"


def test_qevd_fit_300k_clips_in_short_clips(tmp_path):
    root = tmp_path / "qevd"
    recs = [{"video_path": f"./{i:08d}.mp4", "labels": [f"squats - {e}"], "labels_descriptive": [f"squats - {e}!"],
             "split": s} for i, (e, s) in enumerate([("knees caving", "test"), ("good form", "train"),
                                                     ("shallow depth", "test")])]  # fmt: skip
    write_json(root / "fine_grained_labels.json", recs)
    for r in recs:
        _touch(root / "short_clips" / Path(r["video_path"]).name)
    test = load_release(f"qevd_fit_300k:{root}:test")
    assert [(s.id, s.reference) for s in test] == [("00000000", "squats - knees caving!"),
                                                   ("00000002", "squats - shallow depth!")]  # fmt: skip
    assert test[0].extra["labels"] == ["squats - knees caving"]  # what form accuracy compares
    del recs[0]["labels_descriptive"]
    write_json(root / "fine_grained_labels.json", recs)
    assert load_release(f"qevd_fit_300k:{root}:test")[0].reference == "squats - knees caving"  # no sentence: the label


def test_qevd_fit_300k_splits_are_the_files_own_values(tmp_path):
    root = tmp_path / "qevd"
    recs = [{"video_path": f"./{i:08d}.mp4", "labels": ["squats - good form"], "split": s}
            for i, s in enumerate(["train", "val", "val", "test"])]  # fmt: skip
    write_json(root / "fine_grained_labels.json", recs)
    for r in recs:
        _touch(root / Path(r["video_path"]).name)
    assert [s.id for s in load_release(f"qevd_fit_300k:{root}:val")] == ["00000001", "00000002"]
    with pytest.raises(ReleaseError, match=r"'validation' is not one of the release's \['test', 'train', 'val'\]"):
        load_release(f"qevd_fit_300k:{root}:validation")


def test_feedback_spans_as_fitcoach_builds_them():
    frames = ["", "First up!", "First up!", "", "Knees out", "Knees out", "Deeper", "", ""]
    assert feedback_spans(frames) == [("First up!", 1, 2), ("Knees out", 4, 5), ("Deeper", 6, 6)]


def test_qevd_fit_coach_events_in_seconds_from_the_video_start(tmp_path):
    root = tmp_path / "coach"
    bench = root / "QEVD-FIT-COACH-Benchmark" / "long_range_videos"
    bench.mkdir(parents=True)
    fps, start_ns = 4, 1_700_000_000 * 10**9
    np.save(bench / "0000_timestamps.npy", np.array([start_ns + i * 10**9 // fps for i in range(40)], np.int64))
    _touch(bench / "0000.mp4")
    feedbacks = [""] * 40
    for i in range(4, 8):
        feedbacks[i] = "First up are squats!"
    for i in range(12, 20):
        feedbacks[i] = "Push your knees out."
    clock0 = start_ns / 1e9 + CLOCK_OFFSET_S
    rec = {"long_range_video_file": "./long_range_videos/0000.mp4",
           "video_timestamps": "./long_range_videos/0000_timestamps.npy", "feedbacks": feedbacks,
           "feedback_timestamps": [clock0 + 1.0, clock0 + 3.0], "is_transition": [True, False]}  # fmt: skip
    write_json(root / "QEVD-FIT-COACH-Benchmark" / "feedbacks_long_range.json", [rec])
    [sample] = load_release(f"qevd_fit_coach:{root}:benchmark")
    assert sample.extra["events"] == [{"t": 1.0, "text": "First up are squats!", "is_transition": True},
                                      {"t": 3.0, "text": "Push your knees out.", "is_transition": False}]  # fmt: skip
    assert sample.reference == "Push your knees out."
    (bench / "0000_timestamps.npy").unlink()  # the per-frame timestamps are part of the sample: missing = missing
    with pytest.raises(ReleaseError, match="1 of 1 clips missing"):
        load_release(f"qevd_fit_coach:{root}:benchmark")


def test_mvbench_task_table_prompt_and_bounds(tmp_path):
    root = tmp_path / "mvbench"
    rec = {"video": "ZS9XR.mp4", "question": "What happened after the person took the food?",
           "candidates": ["Ate the medicine.", "Tidied up the blanket.", "Put down the cup/glass/bottle."],
           "answer": "Put down the cup/glass/bottle.", "start": 1.5, "end": 9.0}  # fmt: skip
    write_json(root / "json" / "action_sequence.json", [rec])
    _touch(root / "video" / "star" / "Charades_v1_480" / "ZS9XR.mp4")
    [s] = load_release(f"mvbench:{root}:action_sequence")
    assert s.messages[0]["role"] == "system" and s.messages[0]["content"].startswith("Carefully watch the video")
    assert s.messages[1]["content"] == (
        "<video>\nQuestion: What happened after the person took the food?\nOptions:\n(A) Ate the medicine.\n"
        "(B) Tidied up the blanket.\n(C) Put down the cup/glass/bottle.\nOnly give the best option."
    )
    assert s.reference == "(C) Put down the cup/glass/bottle."
    assert (s.extra["answer_letter"], s.extra["start"], s.extra["end"]) == ("C", 1.5, 9.0)
    with pytest.raises(ReleaseError, match="json/action_prediction.json not found"):
        load_release(f"mvbench:{root}:all")


def test_nextqa_csv_and_video_map(tmp_path):
    root = tmp_path / "nextqa"
    header = ["video", "frame_count", "width", "height", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3",
              "a4"]  # fmt: skip
    _csv(root / "nextqa" / "val.csv", header, [[4010069381, 369, 640, 480, "how do the two man play the instrument",
                                               2, 6, "CH", "roll the handle", "tap their feet", "strum the string",
                                               "hit with sticks", "pat with hand"]])  # fmt: skip
    write_json(root / "nextqa" / "map_vid_vidorID.json", {"4010069381": "0101/4010069381"})
    _touch(root / "NExTVideo" / "0101" / "4010069381.mp4")
    [s] = load_release(f"nextqa:{root}:val")
    assert s.id == "4010069381_6" and s.reference == "C. strum the string" and s.extra["type"] == "CH"
    assert s.messages[0]["content"].endswith("\nA. roll the handle\nB. tap their feet\nC. strum the string\n"
                                             "D. hit with sticks\nE. pat with hand")  # fmt: skip


def test_perceptiontest_mc_questions(tmp_path):
    root = tmp_path / "pt"
    q = {"id": 0, "question": "What is the person doing?", "options": ["a", "b", "c"], "answer_id": 1,
         "area": "physics", "reasoning": "descriptive", "tag": ["motion"]}  # fmt: skip
    write_json(root / "mc_question_valid.json", {"video_10001": {"metadata": {"video_id": "video_10001"},
                                                                 "mc_question": [q]}})  # fmt: skip
    _touch(root / "videos" / "video_10001.mp4")
    [s] = load_release(f"perceptiontest:{root}")
    assert (s.id, s.reference, s.extra["area"]) == ("video_10001/0", "B", "physics")
    assert s.messages[0]["content"].endswith("C. c\nAnswer with the option's letter from the given choices directly.")


def test_llava_video_image_tag_becomes_the_video(tmp_path):
    root = tmp_path / "llava"
    rec = {"id": "101-x", "data_source": "0_30_s_academic_v0_1", "video": "academic_source/a.mp4",
           "conversations": [{"from": "human", "value": "<image>\nWhat is visible?\nA. A tattoo\nB. A watch"},
                             {"from": "gpt", "value": "A."}, {"from": "human", "value": "Colour?"},
                             {"from": "gpt", "value": "Black."}]}  # fmt: skip
    write_json(root / "0_30_s_academic_v0_1" / "0_30_s_academic_mc_v0_1_qa_processed.json", [rec])
    _touch(root / "0_30_s_academic_v0_1" / "academic_source" / "a.mp4")
    [s] = load_release(f"llava_video:{root}:0_30_s_academic_v0_1")
    assert s.messages[0]["content"].startswith("<video>\nWhat is visible?") and len(s.messages) == 4
    assert s.media[0].kind == "video" and s.media[0].path.endswith("0_30_s_academic_v0_1/academic_source/a.mp4")


def test_validate_reads_a_release_and_says_what_was_downloaded(tmp_path):
    root = _ucf(tmp_path / "ucf")
    missing = root / "UCF-101" / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi"
    missing.unlink()
    report = tmp_path / "report.json"
    assert cli_main(["validate", f"ucf101:{root}:test", "--json", str(report)]) == 1
    r = json.loads(report.read_text())
    assert (r["total"], r["num_bad_samples"]) == (2, 1)
    assert r["problems"][0]["path"] == str(missing) and "not found" in r["problems"][0]["problem"]
    assert r["per_class"] == {"apply eye makeup": 1}
    assert r["frame_rates"] == {"4.0": 1} and r["resolutions"] == {"32x32": 1}
    assert r["durations_s"]["max"] == pytest.approx(1.0)
    assert cli_main(["validate", f"ucf101:{root}:train"]) == 0


@pytest.mark.slow
def test_one_spec_in_training_inference_and_evaluation(tmp_path, gemma270m_dir):
    """``ucf101:ROOT:train`` trains, ``ucf101:ROOT:test`` is predicted and scored against the release's classes."""
    from tiny_checkpoints import custom_train_args, make_custom_assets, save_custom_model

    from gemma3.evaluation.evaluate import evaluate
    from gemma3.serve.inference import main as infer_main
    from gemma3.train import train as T

    root = _ucf(tmp_path / "ucf")
    llm, clip, vm, _ = make_custom_assets(tmp_path, gemma270m_dir, n=2)
    argv = custom_train_args(llm, clip, vm, tmp_path / "unused.json", tmp_path / "out", stage="finetune",
                             max_steps=1, save_strategy="no")  # fmt: skip
    argv[argv.index("--data_path") + 1] = f"ucf101:{root}:train"
    summary = T.main(argv)
    assert summary["global_step"] == 1 and summary["data_stats"] == "0 of 2 samples skipped as bad"
    model = save_custom_model(tmp_path / "model", llm, clip, vm)
    preds = tmp_path / "preds.jsonl"
    stats = infer_main(["--model_path", str(model), "--annotations", f"ucf101:{root}", "--output", str(preds),
                        "--max_new_tokens", "3"])  # fmt: skip
    assert stats["done"] == 2 and stats["errors"] == 0
    metrics = evaluate("action_recognition", preds, annotations=f"ucf101:{root}", output_dir=tmp_path / "eval")
    assert metrics["num_samples"] == 2 and metrics["input"]["coverage"] == 1.0
    assert {r["reference"] for r in metrics["records"]} == {"apply eye makeup", "handstand pushups"}
