"""Benchmarks named like their release formats: classification by generation and by log-likelihood ranking, and the
multiple-choice benchmarks with their reference evaluations' answer extraction (checked against the installed
lmms-eval's own functions where it has them)."""

from __future__ import annotations

import ast
import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from media_utils import make_frames, write_json, write_video

from gemma3.evaluation.benchmarks import get_benchmark
from gemma3.evaluation.benchmarks.mcq import first_letter_ad, mmmu_choice, mvbench_correct
from gemma3.utils.errors import run_main


def _lmms_function(task_file: str, name: str, **namespace):
    """One function of an installed lmms-eval task module, compiled from its source (importing the module itself
    would download NLTK data and read dataset configs)."""
    import lmms_eval

    path = Path(lmms_eval.__file__).parent / "tasks" / task_file
    tree = ast.parse(path.read_text())
    [node] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    scope = dict(namespace)
    exec(compile(ast.Module([node], []), str(path), "exec"), scope)
    return scope[name]


def test_ranking_top1_top5_from_the_predictions_ranking():
    bench = get_benchmark("kinetics400", classes=[f"c{i}" for i in range(7)])
    preds = [
        {"id": "a", "prediction": "c1", "reference": "c1", "ranking": ["c1", "c0", "c2", "c3", "c4"]},
        {"id": "b", "prediction": "c0", "reference": "c5", "ranking": ["c0", "c5", "c1", "c2", "c3"]},
        {"id": "c", "prediction": "zzz", "reference": "c6", "ranking": ["c0", "c1", "c2", "c3", "c4"]},
    ]
    res = bench.score(preds)
    assert res["num_samples"] == 3 and res["num_ranked"] == 3
    assert res["top1_accuracy"] == pytest.approx(1 / 3)  # by generation: only "a"
    assert res["rank_top1_accuracy"] == pytest.approx(1 / 3) and res["rank_top5_accuracy"] == pytest.approx(2 / 3)
    unranked = get_benchmark("ucf101", classes=["c1"]).score([dict(preds[0], ranking=None)])
    assert "rank_top1_accuracy" not in unranked and unranked["top1_accuracy"] == 1.0


def test_nextqa_parse_matches_lmms_evals_own_function():
    official = _lmms_function("nextqa/utils.py", "parse_multi_choice_response", random=random, np=np)
    options = ["roll the handle", "tap their feet", "strum the string", "hit with sticks", "pat with hand"]
    index2ans = dict(zip("ABCDE", options))
    replies = ["C", "(B)", "C. strum the string", "The answer is (D).", "A B", "I think B, or maybe (E)", "E.",
               "they strum the string with their fingers", "they tap their feet and then hit with sticks", "b",
               "Answer: D", "(A) or (C)"]  # fmt: skip
    checked = 0
    for reply in replies:
        ours = mmmu_choice(reply, options)
        if ours is None:  # where nothing parses, lmms-eval draws a random letter: not comparable
            continue
        assert ours == official(reply, list("ABCDE"), index2ans), reply
        checked += 1
    assert checked >= 10
    assert mmmu_choice("no idea", options) is None


def test_perceptiontest_letter_matches_lmms_evals_own_function():
    import re

    official = _lmms_function("perceptiontest/val/utils.py", "perceptiontest_val_process_results_mc", re=re)
    for reply in ["B", " C. the cup", "Answer: A", "none", "the answer is D", "b", "A or B"]:
        doc = {"video_name": "v", "question": "q", "answer_id": 1}
        want = official(doc, [reply])["accuracy"]["pred_id"]
        ours = first_letter_ad(reply)
        assert ("ABCD".index(ours) if ours else -1) == want, reply


def test_mvbench_check_ans_after_the_best_option_prefix():
    gold = "(C) Put down the cup/glass/bottle."
    assert mvbench_correct("C) Put down the cup/glass/bottle.", gold)  # what follows "Best option:("
    assert mvbench_correct("(C) Put down", gold) and mvbench_correct("C", gold) and mvbench_correct("c.", gold)
    assert not mvbench_correct("A) Ate the medicine.", gold)
    assert not mvbench_correct("", gold) and not mvbench_correct(") nothing", gold)


def test_mcq_benchmarks_score_per_group_from_release_references():
    refs = {
        "t1/0": {"reference": "(A) x", "answer_letter": "A", "task": "t1"},
        "t1/1": {"reference": "(B) y", "answer_letter": "B", "task": "t1"},
        "t2/0": {"reference": "(C) z", "answer_letter": "C", "task": "t2"},
    }
    preds = [{"id": "t1/0", "prediction": "A) x"}, {"id": "t1/1", "prediction": "A) x"},
             {"id": "t2/0", "prediction": "C) z"}]  # fmt: skip
    res = get_benchmark("mvbench").score(preds, refs)
    assert res["per_task"] == {"t1": 0.5, "t2": 1.0} and res["accuracy"] == pytest.approx(2 / 3)
    assert res["mean_task_accuracy"] == pytest.approx(0.75)
    nq = {"v_1": {"options": ["a", "b", "c", "d", "e"], "answer_letter": "B", "type": "CW"}}
    out = get_benchmark("nextqa").score([{"id": "v_1", "prediction": "nothing parsable"}], nq)
    assert out["accuracy"] == 0.0 and out["num_unparsed"] == 1 and out["per_task"] == {"CW": 0.0}
    with pytest.raises(ValueError, match="no answer"):
        get_benchmark("perceptiontest").score([{"id": "zz", "prediction": "A"}], {})


def _kinetics_val(root: Path) -> Path:
    rows = [["abseiling", "-abc000000", 0, 10, "val"], ["air drumming", "-abc000001", 10, 20, "val"],
            ["zumba", "-abc000002", 20, 30, "val"]]  # fmt: skip
    (root / "annotations").mkdir(parents=True)
    with (root / "annotations" / "val.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["label", "youtube_id", "time_start", "time_end", "split"], *rows])
    for i, (_, ytid, s, e, _) in enumerate(rows):
        write_video(root / "val" / f"{ytid}_{s:06d}_{e:06d}.mp4", (make_frames(8) + 40 * i).astype(np.uint8), fps=4)
    return root


@pytest.mark.slow
def test_kinetics400_and_mvbench_from_their_releases_end_to_end(tmp_path, gemma270m_dir):
    """``--benchmark kinetics400 --annotations kinetics400:ROOT:val`` ranks every class by log-likelihood and states
    the frames; ``--benchmark mvbench`` opens each reply with ``Best option:(``."""
    from tiny_checkpoints import make_custom_assets, save_custom_model

    from gemma3.data.formats import load_annotations
    from gemma3.evaluation.evaluate import main as eval_main
    from gemma3.serve.inference import GenerationConfig, load_predictor, split_reference

    llm, clip, vm, _ = make_custom_assets(tmp_path, gemma270m_dir, n=2)
    model = save_custom_model(tmp_path / "model", llm, clip, vm)
    root = _kinetics_val(tmp_path / "k400")
    out = tmp_path / "eval_k400"
    res = eval_main(["--benchmark", "kinetics400", "--model_path", str(model), "--annotations",
                     f"kinetics400:{root}:val", "--output_dir", str(out), "--batch_size", "2"])  # fmt: skip
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["num_samples"] == 3 and saved["num_ranked"] == 3 and saved["classes"] == res["classes"]
    assert set(saved["classes"]) == {"abseiling", "air drumming", "zumba"}
    assert saved["rank_top5_accuracy"] == 1.0  # three classes: always within the top five
    predictor = load_predictor(str(model), generation=GenerationConfig(max_new_tokens=3))
    assert saved["protocol"]["num_frames"] == predictor.processing.num_frames == 4  # the tiny model's frames
    assert saved["protocol"]["frame_sampling"] == "uniform" and "3 class names" in saved["protocol"]["ranking"]

    # the ranking written is the order of each class's log-likelihood, read once per clip, scored in chunks
    samples = {s.id: s for s in load_annotations(f"kinetics400:{root}:val")}
    classes = saved["classes"]
    for line in (out / "predictions.jsonl").read_text().splitlines():
        rec = json.loads(line)
        sample = samples[rec["id"]]
        calls: list[int] = []
        hook = predictor.model.video_encoder.register_forward_hook(lambda m, i, o, seen=calls: seen.append(len(i[0])))
        chunked = predictor.rank_candidates(sample, classes, batch_size=2)
        hook.remove()
        assert calls == [1] and predictor.model.feature_cache is None  # the clip encoded once for 3 candidates
        prompt, _ = split_reference(sample)
        each = [predictor.loglikelihood([_with_reply(prompt, c)])[0][0] for c in classes]
        assert chunked == pytest.approx(each, abs=1e-4)
        assert rec["ranking"] == [classes[i] for i in np.argsort(-np.array(each), kind="stable")]

    mv = tmp_path / "mvbench"
    recs = [{"video": f"c{i}.mp4", "question": f"What moves {i}?", "candidates": ["left", "right"],
             "answer": ["left", "right"][i % 2]} for i in range(2)]  # fmt: skip
    write_json(mv / "json" / "moving_direction.json", recs)
    for i in range(2):
        write_video(mv / "video" / "clevrer" / "video_validation" / f"c{i}.mp4", make_frames(8), fps=4)
    [first, _] = load_annotations(f"mvbench:{mv}:moving_direction")
    prompt, _ = split_reference(first)
    ids = predictor.encode(prompt)["input_ids"].tolist()
    opening = predictor.text_tokenizer("Best option:(", add_special_tokens=False)["input_ids"]
    assert ids[-len(opening) :] == opening
    res = eval_main(["--benchmark", "mvbench", "--model_path", str(model), "--annotations",
                     f"mvbench:{mv}:moving_direction", "--output_dir", str(tmp_path / "eval_mv")])  # fmt: skip
    assert res["num_samples"] == 2 and set(res["per_task"]) == {"moving_direction"}
    assert 0.0 <= res["accuracy"] <= 1.0 and res["protocol"]["ranking"] is None


def _with_reply(prompt, reply: str):
    import dataclasses

    return dataclasses.replace(prompt, messages=[*prompt.messages, {"role": "assistant", "content": reply}])


def test_lmms_docs_from_a_release(tmp_path, capsys):
    from gemma3.evaluation.lmms_tasks.prepare import main as prepare_main
    from gemma3.evaluation.lmms_tasks.utils import doc_to_choice, doc_to_visual

    root = _kinetics_val(tmp_path / "k400")
    paths = prepare_main(["--annotations", f"kinetics400:{root}:val", "--out", str(tmp_path / "lmms")])
    docs = json.loads(paths["action"].read_text())
    assert [d["answer_text"] for d in docs] == ["abseiling", "air drumming", "zumba"]
    assert doc_to_choice(docs[2]) == ["abseiling", "air drumming", "zumba"] and docs[2]["answer"] == 2
    assert doc_to_visual(docs[0]) == [str((root / "val" / "-abc000000_000000_000010.mp4").resolve())]
    assert json.loads(paths["feedback"].read_text())[1]["answer"] == "air drumming"
    assert doc_to_visual({"image": "/x/p.jpg"}) == ["/x/p.jpg"]
    assert run_main(prepare_main, ["--annotations", str(tmp_path / "none.json"), "--out", str(tmp_path / "lmms")]) == 2
    assert "no such annotation file" in capsys.readouterr().err


def test_max_missing_fraction_in_evaluation_and_lmms_docs(tmp_path, capsys):
    """A copy missing a third of its clips is refused at the default limit and scored (or turned into lmms-eval
    documents) on what is there when ``--max_missing_fraction`` allows it."""
    from gemma3.evaluation.evaluate import main as eval_main
    from gemma3.evaluation.lmms_tasks.prepare import main as prepare_main

    root = _kinetics_val(tmp_path / "k400")
    (root / "val" / "-abc000001_000010_000020.mp4").unlink()
    preds = tmp_path / "preds.jsonl"
    preds.write_text(
        "".join(
            json.dumps({"id": i, "prediction": p}) + "\n"
            for i, p in [("-abc000000_000000_000010", "abseiling"), ("-abc000002_000020_000030", "air drumming")]
        )
    )
    args = ["--benchmark", "kinetics400", "--predictions", str(preds), "--annotations", f"kinetics400:{root}:val",
            "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    assert run_main(eval_main, args) == 2 and "1 of 3 clips missing" in capsys.readouterr().err
    results = eval_main([*args, "--max_missing_fraction", "0.5"])
    assert results["num_samples"] == 2 and results["top1_accuracy"] == 0.5
    lmms = ["--annotations", f"kinetics400:{root}:val", "--out", str(tmp_path / "lmms")]
    assert run_main(prepare_main, lmms) == 2 and "over --max_missing_fraction 0.1" in capsys.readouterr().err
    docs = json.loads(prepare_main([*lmms, "--max_missing_fraction", "0.5"])["action"].read_text())
    assert [d["answer_text"] for d in docs] == ["abseiling", "zumba"]


def test_initialize_dataset_script_reports_each_release(tmp_path):
    import subprocess

    root = _kinetics_val(tmp_path / "k400")
    script = Path(__file__).resolve().parents[1] / "scripts" / "initialize_dataset.sh"
    out = tmp_path / "reports"
    run = subprocess.run(["bash", str(script), f"kinetics400:{root}:val", "--out", str(out)], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((out / "kinetics400_val.json").read_text())
    assert report["total"] == 3 and report["num_bad_samples"] == 0
    assert report["per_class"] == {"abseiling": 1, "air drumming": 1, "zumba": 1}
    bad = subprocess.run(["bash", str(script), f"kinetics400:{root}:val", f"ucf101:{tmp_path / 'none'}", "--out",
                          str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 1 and "ROOT is not a folder" in bad.stdout
    assert (out / "ucf101_default.json").exists()
