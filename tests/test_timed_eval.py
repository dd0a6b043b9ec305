"""Timed feedback metrics (QEVD-FIT-COACH style) on hand-made cases with known answers."""

from __future__ import annotations

import pytest

from gemma3.evaluation.timed import (
    Event,
    align,
    events_from,
    label_at,
    temporal_scores,
    text_scores,
    timeline_png,
    window_accuracy,
)

REF = [Event(2.0, "keep your back straight", "squat"), Event(10.0, "knees out", "squat"), Event(20.0, "good", "lunge")]


def test_exact_hits_score_one():
    result = temporal_scores([(REF, [Event(e.t, e.text) for e in REF])])
    assert (result.precision, result.recall, result.f_score) == (1.0, 1.0, 1.0)
    assert result.pairs == [(e.text, e.text) for e in REF]
    # METEOR's fragmentation penalty: 1 - 0.5 / m^3 for identical texts of m tokens (m = 4, 2, 1)
    expected = (1 - 0.5 / 64 + 1 - 0.5 / 8 + 1 - 0.5) / 3
    assert text_scores(result.pairs)["meteor"] == pytest.approx(0.9999 * expected, rel=1e-3)
    assert text_scores(result.pairs)["rouge_l"] == 1.0


def test_the_window_is_tolerance_wide_and_strict():
    """Default 3 s window: 1.49 s away matches, 1.5 s does not (FitCoach's strict < tolerance/2)."""
    near = temporal_scores([(REF[:1], [Event(3.49, "back straight")])])
    assert near.recall == 1.0 and near.precision == 1.0
    miss = temporal_scores([(REF[:1], [Event(3.5, "back straight")])])
    assert miss.recall == 0.0 and miss.precision == 0.0 and miss.f_score == 0.0
    assert temporal_scores([(REF[:1], [Event(3.5, "x")])], tolerance=4.0).recall == 1.0


def test_duplicates_are_matched_once_and_cost_precision():
    predicted = [Event(2.1, "back straight"), Event(2.3, "straighten your back"), Event(10.2, "knees out")]
    result = temporal_scores([(REF, predicted)])
    assert result.matched_references == 2 and result.recall == pytest.approx(2 / 3)
    assert result.matched_predictions == 2 and result.precision == pytest.approx(2 / 3)
    assert result.f_score == pytest.approx(2 / 3)


def test_empty_predictions_and_empty_texts_match_nothing():
    assert temporal_scores([(REF, [])]).f_score == 0.0
    silent = temporal_scores([(REF, [Event(2.0, ""), Event(10.0, "  ")])])
    assert silent.matched_references == 0 and silent.pairs == []
    empty = text_scores([])
    assert (empty["meteor"], empty["rouge_l"], empty["num_pairs"]) == (0.0, 0.0, 0)
    assert temporal_scores([([], [])]).f_score == 0.0


def test_counts_are_pooled_over_videos_not_averaged():
    one = (REF, [Event(2.0, "a"), Event(10.0, "b"), Event(20.0, "c")])  # 3/3
    two = ([Event(5.0, "x")], [Event(30.0, "y")])  # 0/1
    result = temporal_scores([one, two])
    assert result.recall == pytest.approx(3 / 4) and result.precision == pytest.approx(3 / 4)
    assert [v["matched_references"] for v in result.per_video] == [3, 0]


def test_matches_keep_their_order():
    """A prediction nearest to two references is taken by the first only; the walk never matches backwards."""
    ref = [Event(5.0, "a"), Event(5.5, "b")]
    assert align(ref, [Event(5.2, "p")]) == [(0, 0)]
    # the second reference's nearest (index 0) lies before the last match (index 1): not taken
    assert align(ref, [Event(5.4, "p"), Event(5.1, "q")]) == [(0, 1)]


def test_window_action_accuracy_uses_the_label_in_force():
    assert label_at(REF, 1.0) is None and label_at(REF, 15.0) == "squat" and label_at(REF, 25.0) == "lunge"
    windows = [{"start": 0, "end": 1, "action": "squat"}, {"start": 4, "end": 8, "action": "squat"},
               {"start": 18, "end": 24, "action": "Squat"}, {"start": 24, "end": 30, "action": "lunge."}]  # fmt: skip
    assert window_accuracy(windows, REF) == (pytest.approx(2 / 3), 3)


def test_bad_records_name_the_field():
    with pytest.raises(ValueError, match=r"events\[1\]: no 't'"):
        events_from([{"t": 1, "text": "a"}, {"text": "b"}])
    with pytest.raises(ValueError, match=r"events\[0\].t: not a number"):
        events_from([{"t": "soon"}])
    assert [e.t for e in events_from([{"t": 3}, {"t": "1.5", "text": "x"}])] == [1.5, 3.0]


def test_embedding_similarity_and_timeline(tmp_path):
    from gemma3.evaluation.metrics import MiniLMEmbedder

    pairs = [("keep your back straight", "straighten your back"), ("knees out", "the weather is nice")]
    scores = text_scores(pairs, embed=MiniLMEmbedder())
    assert 0.2 < scores["embedding_similarity"] < 0.9
    png = timeline_png(REF, [Event(2.4, "back"), Event(14.0, "late")], tmp_path / "timeline.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_long_videos_have_their_boundaries_where_the_ground_truth_says(tmp_path):
    import json

    import numpy as np

    from gemma3.data.long_videos import GROUND_TRUTH, LongVideoConfig, make_long_videos
    from gemma3.data.media import read_video
    from gemma3.evaluation.timed import events_from

    cfg = LongVideoConfig(videos=2, segments=3, min_seconds=2.0, max_seconds=5.0, size=32, seed=1)
    records = make_long_videos(tmp_path, cfg)
    assert json.loads((tmp_path / GROUND_TRUTH).read_text()) == records
    for rec in records:
        segments = rec["segments"]
        assert segments[0]["start"] == 0 and segments[-1]["end"] == rec["duration"]
        assert all(a["end"] == b["start"] and a["label"] != b["label"] for a, b in zip(segments, segments[1:]))
        events = events_from(rec["events"])
        assert [e.t for e in events] == [s["start"] for s in segments] and events[0].label == segments[0]["label"]
        video = read_video(tmp_path / rec["video"], int(rec["duration"] * cfg.fps))
        assert video.source_frames == int(round(rec["duration"] * cfg.fps))
        frames = video.frames.astype(int)
        for s in segments[1:]:  # a new shape / background starts exactly at the boundary
            b = int(round(s["start"] * cfg.fps))
            jump = np.abs(frames[b] - frames[b - 1]).mean()
            steady = np.abs(frames[b - 1] - frames[b - 2]).mean()
            assert jump > 2 * steady, (s, jump, steady)
        rep = cfg.rep_frames
        for s in segments:  # whole repetitions of a training-length clip
            a, b = int(round(s["start"] * cfg.fps)), int(round(s["end"] * cfg.fps))
            assert (b - a) % rep == 0
            for r in range(a + rep, b, rep):  # each repetition decodes like the first (h264 rounding aside)
                assert np.abs(frames[r : r + rep] - frames[a : a + rep]).mean() < 3
        assert any(s["end"] - s["start"] > rep / cfg.fps for rec in records for s in rec["segments"])


def test_stream_outputs_become_feedback_events_and_are_scored(tmp_path):
    import json

    from gemma3.evaluation.timed import evaluate_streams, feedback_events, main

    def window(k, action):
        return {"window": k, "start": k * 1.0, "end": k * 1.0 + 2.0, "reply": f"{action} - note", "action": action}

    stream = [window(0, "squat"), window(1, "squat"), window(2, "lunge"), window(3, "lunge"), window(4, "")]
    events = feedback_events(stream)
    assert [(e.t, e.label) for e in events] == [(2.0, "squat"), (4.0, "lunge")]  # on change, at the window's end
    assert [e.t for e in feedback_events(stream, when="middle")] == [1.0, 3.0]
    # settling: a one-window flicker says nothing; a new action is spoken at its second window
    flicker = stream[:2] + [window(2, "plank")] + [window(k, "lunge") for k in (3, 4, 5)]
    assert [(e.t, e.label) for e in feedback_events(flicker)] == [(2.0, "squat"), (4.0, "plank"), (5.0, "lunge")]
    assert [(e.t, e.label) for e in feedback_events(flicker, min_windows=2)] == [(3.0, "squat"), (6.0, "lunge")]
    with pytest.raises(ValueError, match="at least 1"):
        feedback_events(stream, min_windows=0)
    truth = [
        {"video": "videos/a.mp4", "events": [{"t": 0.0, "text": "squat - note", "label": "squat"},
                                             {"t": 3.0, "text": "lunge - note", "label": "lunge"}]},
        {"video": "videos/b.mp4", "events": [{"t": 1.0, "text": "plank", "label": "plank"}]},
    ]  # fmt: skip
    (tmp_path / "timed.json").write_text(json.dumps(truth))
    (tmp_path / "streams").mkdir()
    (tmp_path / "streams" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stream))
    result = evaluate_streams(tmp_path / "timed.json", tmp_path / "streams", tmp_path / "report")
    # a: 0.0 vs 2.0 (2 s off: missed), 3.0 vs 4.0 (matched); b: silent. P = 1/2, R = 1/3.
    assert result["precision"] == pytest.approx(0.5) and result["recall"] == pytest.approx(1 / 3)
    assert result["f_score"] == pytest.approx(0.4) and result["missing_streams"] == 1
    # windows (middles 1..5 s): squat, squat, lunge, lunge right; the last, with no action, wrong
    assert result["windows"] == 5 and result["window_accuracy"] == pytest.approx(4 / 5)
    assert (tmp_path / "report" / "a_timeline.png").exists()
    # +-2.5 s: 0.0 now takes 2.0; 3.0 is as near 2.0 as 4.0 and the walk's argmin takes the first, already matched:
    # FitCoach's walk does not fall back to the next-nearest.
    wide = main(["--ground_truth", str(tmp_path / "timed.json"), "--streams", str(tmp_path / "streams"),
                 "--tolerance", "5"])  # fmt: skip
    assert wide["recall"] == pytest.approx(1 / 3) and wide["precision"] == pytest.approx(1 / 2)
