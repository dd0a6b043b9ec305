"""QEVD-FIT-COACH scored as its official evaluation scores it: the release's exercise segments, FitCoach's
matching in both directions, pooled counts, text metrics on the recall pairs; from stream outputs through the CLI."""

from __future__ import annotations

import json

import pytest
from fit_coach_layout import make_fit_coach, stream_records

from gemma3.data.formats import load_annotations
from gemma3.evaluation import metrics as M
from gemma3.evaluation.benchmarks import get_benchmark
from gemma3.evaluation.benchmarks.base import references_from_annotations
from gemma3.evaluation.evaluate import main as eval_main
from gemma3.utils.errors import run_main

EMITTED = [(4.0, "Push the knees out."), (6.5, "Keep the arm straight."), (12.0, "Well done.")]


def test_segments_as_fitcoach_splits_a_workout(tmp_path):
    [sample] = load_annotations(make_fit_coach(tmp_path))
    events, segments = sample.extra["events"], sample.extra["segments"]
    assert [e["t"] for e in events] == [1.0, 3.5, 6.0, 8.0, 9.0]
    assert events[2]["text"] == "Moving on to deltoid stretch!"  # FitCoach's rename of "armcrosschest"
    # a segment starts at its transition's first frame and ends halfway through the next transition
    assert segments == [
        {"exercise": "squats", "start": 1.0, "end": 6.25, "events": [1]},  # frame 24 + (27 - 24) // 2 = 25
        {"exercise": "deltoid stretch", "start": 6.0, "end": 9.0, "events": [3]},  # frame 36 + (37 - 36) // 2
    ]


def test_single_exercise_and_full_workout_scores_by_hand(tmp_path):
    refs = references_from_annotations(make_fit_coach(tmp_path))
    preds = [{"id": "0000", "events": [{"t": t, "text": x} for t, x in EMITTED]}]
    single = get_benchmark("qevd_fit_coach").score(preds, refs)
    # squats: 3.5 <-> 4.0 matches; deltoid stretch: 8.0 vs 6.5 is 1.5 s apart, not < 1.5; 12.0 is in no segment
    assert (single["num_units"], single["references"], single["predictions"]) == (2, 2, 2)
    assert (single["temporal_precision"], single["temporal_recall"]) == (0.5, 0.5)
    assert single["temporal_f_score"] == pytest.approx(0.5)
    assert [(p["reference"], p["prediction"]) for p in single["pairs"]] == [
        ("Push your knees out.", "Push the knees out.")
    ]
    assert single["meteor"] == pytest.approx(M.meteor("Push the knees out.", "Push your knees out."))
    assert single["rouge_l"] == pytest.approx(M.rouge_l("Push the knees out.", "Push your knees out."))
    full = get_benchmark("qevd_fit_coach", mode="full_workout").score(preds, refs)
    # recall walk: 3.5 -> 4.0, 6.0 -> 6.5 (2 of 5); precision walk: 4.0 -> 3.5, 6.5 -> 6.0 (2 of 3)
    assert (full["matched_references"], full["references"]) == (2, 5)
    assert (full["matched_predictions"], full["predictions"]) == (2, 3)
    assert full["temporal_f_score"] == pytest.approx(2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5))
    assert len(full["pairs"]) == 2


def test_counts_pool_over_videos_before_dividing(tmp_path):
    refs = references_from_annotations(make_fit_coach(tmp_path, ("0000", "0001")))
    hit = [{"t": 3.6, "text": "Push your knees out."}, {"t": 8.1, "text": "Keep your arm straight."}]
    noisy = hit + [{"t": 2.0, "text": "x"}, {"t": 5.0, "text": "y"}, {"t": 7.0, "text": "z"}, {"t": 8.9, "text": "w"}]
    res = get_benchmark("qevd_fit_coach").score([{"id": "0000", "events": hit}, {"id": "0001", "events": noisy}],
                                                refs)  # fmt: skip
    assert res["temporal_recall"] == 1.0
    assert res["temporal_precision"] == pytest.approx(4 / 8)  # pooled: 4 of 8, not the mean of 1 and 1/3
    assert res["meteor"] == pytest.approx(sum(p["meteor"] for p in res["pairs"]) / 4)


def test_cli_scores_stream_outputs_and_checks_coverage(tmp_path, capsys):
    spec = make_fit_coach(tmp_path / "coach", ("0000", "0001"))
    streams = tmp_path / "streams"
    streams.mkdir()
    (streams / "0000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stream_records(EMITTED)) + "{torn")
    out = tmp_path / "eval"
    code = run_main(eval_main, ["--benchmark", "qevd_fit_coach", "--annotations", spec, "--streams", str(streams),
                                "--output_dir", str(out)])  # fmt: skip
    assert code == 2 and "cover 50.0%" in capsys.readouterr().err  # 0001 has no stream: half the videos
    (streams / "0001.jsonl").write_text("")  # a stream that said nothing
    res = eval_main(["--benchmark", "qevd_fit_coach", "--annotations", spec, "--streams", str(streams),
                     "--output_dir", str(out)])  # fmt: skip
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["num_samples"] == 2 and saved["input"]["coverage"] == 1.0
    assert saved["temporal_f_score"] == res["temporal_f_score"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert "bertscore_note" in saved and saved["bertscore"] is None  # roberta-large is not on this machine
    assert (out / "qevd_fit_coach.png").is_file()
