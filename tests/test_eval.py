"""Benchmarks scored on hand-made prediction files; every metric checked against values computed by hand."""

from __future__ import annotations

import json

import pytest

from gemma3.evaluation import metrics as M
from gemma3.evaluation.benchmarks import BENCHMARKS, get_benchmark
from gemma3.evaluation.evaluate import evaluate, format_table
from gemma3.evaluation.evaluate import main as eval_main


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_registry_has_one_class_per_benchmark():
    assert {"action_recognition", "qevd", "mcq", "image_classification"} <= set(BENCHMARKS)
    with pytest.raises(KeyError, match="Unknown benchmark"):
        get_benchmark("nope")


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("B", 1),
        ("(B)", 1),
        ("B.", 1),
        ("B)", 1),
        ("Answer: B", 1),
        ("The answer is C", 2),
        ("b", 1),
        ("(A) a person jumping", 0),
        ("a person running", 1),
        ("", None),
        ("I am not sure", None),
        ("E", None),
    ],
)
def test_choice_extraction(answer, expected):
    assert M.extract_choice(answer, ["a person jumping", "a person running", "nobody", "a dog"]) == expected


def test_action_recognition_metrics_by_hand(tmp_path):
    classes = ["moving left", "moving right", "growing"]
    preds = [
        {"id": "1", "prediction": "Moving left.", "reference": "moving left"},  # exact after normalisation
        {"id": "2", "prediction": "the shape is moving right", "reference": "moving right"},  # contained
        {"id": "3", "prediction": "expanding", "reference": "growing"},  # synonym
        {"id": "4", "prediction": "moving left", "reference": "moving right"},  # wrong
        {"id": "5", "prediction": "", "reference": "growing"},  # empty: wrong, kept
        {"id": "6", "prediction": "spinning wildly", "reference": "moving left"},  # unmatched
    ]
    syn = tmp_path / "syn.json"
    syn.write_text(json.dumps({"growing": ["expanding", "getting bigger"]}))
    res = evaluate(
        "action_recognition",
        _jsonl(tmp_path / "p.jsonl", preds),
        classes=classes,
        synonyms=syn,
        output_dir=tmp_path / "out",
    )
    assert res["num_samples"] == 6
    assert res["top1_accuracy"] == pytest.approx(3 / 6)
    # per-class recall: left 1/2, right 1/2, growing 1/2 -> mean 0.5
    assert res["mean_class_accuracy"] == pytest.approx(0.5)
    assert res["match_kinds"] == {"exact": 2, "contained": 1, "synonym": 1, "empty": 1, "unmatched": 1}
    assert res["confusion"][1] == [1, 1, 0, 0]  # reference "moving right": 1 -> left, 1 -> right
    assert (tmp_path / "out" / "metrics.json").exists() and (tmp_path / "out" / "action_recognition.png").exists()
    assert "top1_accuracy" in format_table(res)


def test_meteor_and_rouge_by_hand():
    # official: NLTK tokens, hyp [the, cat, sat] vs ref [the, cat, sat, on, the, mat]: m=3, P=1, R=0.5,
    # Fmean = 0.5 / (0.9*1 + 0.1*0.5) = 0.5263; NLTK's exact stage aligns the hyp's "the" with the ref's second "the"
    # (it walks the reference from its end), so 2 chunks -> penalty 0.5*(2/3)^3
    assert M.meteor("the cat sat", "the cat sat on the mat") == pytest.approx(0.5263158 * (1 - 4 / 27), rel=1e-5)
    # the earlier variant: normalised hyp [cat, sat], ref [cat, sat, on, mat] -> penalty 0.5*(1/2)^3 = 0.0625
    assert M.meteor_stem("the cat sat", "the cat sat on the mat") == pytest.approx(0.5263158 * (1 - 0.0625), rel=1e-5)
    assert M.meteor("knees bending", "knee bends") > 0 and M.meteor_stem("knees bending", "knee bends") > 0
    assert M.meteor("", "anything") == 0.0 == M.meteor_stem("", "anything")
    # LCS("a b c d", "a c d e") = 3 -> P = R = F = 3/4; no stemming in the official one
    assert M.rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert M.rouge_l("knees bending", "knee bends") == 0.0 < M.rouge_l_stem("knees bending", "knee bends")


def test_qevd_feedback_by_hand(tmp_path):
    class FakeEmbedder:  # orthogonal unless texts are equal
        def __call__(self, texts):
            return [[1.0, 0.0] if "squat" in t else [0.0, 1.0] for t in texts]

    preds = [
        {"id": "1", "prediction": "squat - keep knees out", "reference": "squat - keep knees out"},
        {"id": "2", "prediction": "lunge - fine", "reference": "push-up - lower your hips"},
    ]
    res = get_benchmark("qevd", embedder=FakeEmbedder()).score(preds)
    assert res["exercise_accuracy"] == pytest.approx(0.5)
    assert res["rouge_l"] == pytest.approx((1.0 + 0.0) / 2)
    second = M.meteor("lunge - fine", "push-up - lower your hips")  # NLTK tokens: the "-" matches
    assert res["meteor"] == pytest.approx((M.meteor(*["squat - keep knees out"] * 2) + second) / 2)
    assert res["embedding_similarity"] == pytest.approx((1.0 + 1.0) / 2)  # pair 2: both non-squat -> same vector


def test_minilm_embedder_is_real_and_offline():
    emb = M.MiniLMEmbedder()
    a, b, c = emb(["a person doing squats", "someone performing a squat", "a red car parked outside"])
    assert len(a) == 384
    assert M.cosine(a, b) > M.cosine(a, c) + 0.2


def test_mcq_per_task_and_unparsed_count(tmp_path):
    ann = tmp_path / "mv.json"
    ann.write_text(
        json.dumps(
            [
                {
                    "id": "q1",
                    "question": "What?",
                    "candidates": ["jump", "run", "sit"],
                    "answer": "run",
                    "task": "action",
                },
                {"id": "q2", "question": "Who?", "candidates": ["man", "woman"], "answer": "woman", "task": "action"},
                {"id": "q3", "question": "Where?", "candidates": ["park", "gym"], "answer": "gym", "task": "scene"},
                {"id": "q4", "question": "When?", "candidates": ["day", "night"], "answer": "day", "task": "scene"},
            ]
        )
    )
    preds = _jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "q1", "prediction": "(B) run"},
            {"id": "q2", "prediction": "Answer: A"},
            {"id": "q3", "prediction": "gym"},
            {"id": "q4", "prediction": ""},
        ],
    )
    res = eval_main(
        [
            "--benchmark",
            "mcq",
            "--predictions",
            str(preds),
            "--annotations",
            str(ann),
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    assert res["num_samples"] == 4 and res["num_unparsed"] == 1
    assert res["accuracy"] == pytest.approx(0.5)
    assert res["per_task"] == {"action": 0.5, "scene": 0.5}
    assert (tmp_path / "o" / "mcq.png").exists()
    prompt = get_benchmark("mcq").build_prompt({"question": "What?", "candidates": ["jump", "run"]})
    assert "(A) jump" in prompt and prompt.startswith("<video>")


def test_references_from_annotations_and_missing_reference(tmp_path):
    ann = tmp_path / "a.json"
    ann.write_text(
        json.dumps(
            [
                {
                    "id": "x",
                    "video": "v.mp4",
                    "conversations": [{"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": "growing"}],
                }
            ]
        )
    )
    preds = [{"id": "x", "prediction": "growing"}]
    res = evaluate("action_recognition", preds, annotations=ann, classes=["growing", "shrinking"])
    assert res["top1_accuracy"] == 1.0
    with pytest.raises(ValueError, match="has no reference"):
        evaluate("action_recognition", [{"id": "y", "prediction": "growing"}], classes=["growing"])
