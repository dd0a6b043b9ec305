"""The lmms-eval plugin against the installed lmms-eval 0.7.3: its real `Instance`s, its real CLI as a subprocess
on a tiny saved checkpoint and the repo's own task YAMLs, scores compared with the project's evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from lmms_eval.api.instance import Instance, unwrap_generation_output
from PIL import Image
from tiny_checkpoints import custom_train_args, make_encoder_configs, make_llm

from gemma3.data.formats import Media, Sample, load_annotations
from gemma3.data.synthetic import SyntheticConfig, make_synthetic_dataset
from gemma3.evaluation.lmms_eval_plugin import VideoGemmaLMMS, run_cli
from gemma3.evaluation.lmms_tasks.prepare import prepare_lmms_docs
from gemma3.serve.inference import GenerationConfig, load_predictor, predict
from gemma3.train import train as T

REPO = Path(__file__).resolve().parents[1]
TASKS = "video_gemma_action_mc,video_gemma_action_gen,video_gemma_feedback"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, gemma270m_dir):
    """A tiny LoRA-finetuned custom model, a synthetic dataset with feedback answers, and the lmms docs."""
    root = tmp_path_factory.mktemp("lmms")
    llm = make_llm(root, gemma270m_dir)
    clip, vm = make_encoder_configs(root)
    data = root / "data" / "synth"
    cfg = SyntheticConfig(
        clips_per_class=5, num_frames=4, size=32, classes=("growing", "shrinking"), with_feedback=True
    )
    make_synthetic_dataset(data, cfg)
    train = data / "annotations" / "train.json"
    T.main(custom_train_args(llm, clip, vm, train, root / "model", stage="finetune", use_lora=True, max_steps=2,
                             video_folder=str(data)))  # fmt: skip
    prepare_lmms_docs(data, root / "data" / "lmms")
    return root, data


def _meta(doc_id: int) -> dict:
    return {"task": "t", "doc_id": doc_id, "repeats": 1, "split": "test"}


def _plugin(setup, docs: list[dict], **kw) -> VideoGemmaLMMS:
    root, _ = setup
    plugin = VideoGemmaLMMS(pretrained=str(root / "model"), **kw)
    plugin.task_dict = {"t": {"test": docs}}
    return plugin


def _docs(setup) -> list[dict]:
    root, _ = setup
    return json.loads((root / "data" / "lmms" / "action.json").read_text())


def test_registered_through_the_entry_point():
    from lmms_eval.models import MODEL_REGISTRY_V2, get_model

    assert MODEL_REGISTRY_V2.resolve("video_gemma").model_type == "simple"
    assert get_model("video_gemma") is VideoGemmaLMMS


def test_generation_kwargs_apply_to_their_request_only(setup):
    docs = _docs(setup)
    plugin = _plugin(setup, docs, batch_size=4, max_new_tokens=6)
    vis = lambda d: [d["video"]]  # noqa: E731
    q = docs[0]["question"]
    reqs = [
        Instance("generate_until", (q, {"max_new_tokens": 1, "until": []}, vis, 0, "t", "test"), 0, _meta(0)),
        Instance("generate_until", (q, {"until": []}, vis, 0, "t", "test"), 1, _meta(0)),
        Instance("generate_until", (q, {"max_new_tokens": 1, "until": []}, vis, 1, "t", "test"), 2, _meta(1)),
    ]
    out = plugin.generate_until(reqs)
    p = plugin.predictor

    def alone(doc: dict, n: int) -> str:
        return p.generate(
            [plugin._encode("x", q, [doc["video"]], generation=True)], GenerationConfig(max_new_tokens=n)
        )[0][0]

    assert out == [alone(docs[0], 1), alone(docs[0], 6), alone(docs[1], 1)]
    assert out[1] != out[0]  # six tokens, not the previous request's one
    assert plugin.default_generation.max_new_tokens == 6 and p.generation.max_new_tokens == 64
    # `until` cuts the reply, for that request only.
    cut = plugin.generate_until(
        [Instance("generate_until", (q, {"until": [out[1][:1]]}, vis, 0, "t", "test"), 0, _meta(0))]
    )
    assert cut == [""]


def test_loglikelihood_sign_greedy_and_unconditional_requests(setup):
    docs = _docs(setup)
    plugin = _plugin(setup, docs, batch_size=2)
    vis = lambda d: [d["video"]]  # noqa: E731
    doc = docs[0]
    reqs = [
        Instance("loglikelihood", (doc["question"], f" {c}", vis, 0, "t", "test"), k, _meta(0))
        for k, c in enumerate(doc["choices"])
    ]
    reqs.append(Instance("loglikelihood", ("", doc["choices"][0]), 9, _meta(0)))  # acc_mutual_info's shape
    reqs.append(Instance("loglikelihood", (doc["question"], lambda d: d["answer_text"], vis, 0, "t", "test"), 10,
                         _meta(0)))  # fmt: skip
    raw = plugin.loglikelihood(reqs)
    # lmms-eval's own unwrapping keeps (nll, greedy) pairs (the workaround for unwrap_generation_output).
    pairs = [unwrap_generation_output(r)[0] for r in raw]
    assert all(isinstance(p, tuple) and isinstance(p[1], bool) and p[0] > 0 for p in pairs)
    sample = Sample("x", [{"role": "user", "content": "<video>\n" + doc["question"]}],
                       (Media("video", doc["video"]),))  # fmt: skip
    ours = plugin.predictor.rank_candidates(sample, doc["choices"])
    assert [-p[0] for p in pairs[:2]] == pytest.approx(ours, rel=1e-5)  # NLL: lower is better (argmin)
    assert int(np.argmin([p[0] for p in pairs[:2]])) == int(np.argmax(ours))
    assert pairs[3][0] == pytest.approx(pairs[doc["answer"]][0], rel=1e-5)  # doc_to_target continuation


def test_without_the_workaround_lmms_eval_mangles_scores():
    """What the plugin works around: lmms-eval turns a plain (float, bool) into a string."""
    text, _ = unwrap_generation_output((-1.5, False))
    assert text == "(-1.5, False)"
    assert unwrap_generation_output(VideoGemmaLMMS._wrap((1.5, True)))[0] == (1.5, True)


def test_images_frame_lists_and_multi_round_with_temp_files_removed(setup):
    docs = _docs(setup)
    plugin = _plugin(setup, docs, batch_size=2, max_new_tokens=3)
    from gemma3.data.media import read_video

    frames = read_video(docs[0]["video"], 4).frames
    pil = [Image.fromarray(f) for f in frames]
    before = set(Path(tempfile.gettempdir()).glob("video_gemma_lmms_*"))
    vis_frames = lambda d: [pil]  # noqa: E731  (one video as a list of PIL frames)
    vis_image = lambda d: [pil[0]]  # noqa: E731
    q = docs[0]["question"]
    out = plugin.generate_until(
        [
            Instance("generate_until", (q, {}, vis_frames, 0, "t", "test"), 0, _meta(0)),
            Instance("generate_until", (q, {}, vis_image, 0, "t", "test"), 1, _meta(0)),
        ]
    )
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    # Frames given as PIL images decode to the same model input as the video file they came from.
    same = plugin.generate_until([Instance("generate_until", (q, {}, lambda d: [d["video"]], 0, "t", "test"), 0,
                                           _meta(0))])  # fmt: skip
    assert out[0] == same[0]

    def rounds(doc, previous_output, round_idx, previous_round_info):
        done = round_idx >= 2
        return [doc["video"]], f"Round {round_idx}: {doc['question']}", done, previous_output, None

    multi = plugin.generate_until_multi_round(
        [
            Instance(
                "generate_until_multi_round",
                (q, {"max_new_tokens": 2}, lambda d: [d["video"]], rounds, 0, "t", "test"),
                0,
                _meta(0),
            )
        ]  # fmt: skip
    )
    assert len(multi) == 1 and len(multi[0]) == 2 and all(isinstance(t, str) for t in multi[0])
    assert unwrap_generation_output(multi[0])[0] == multi[0]  # lmms-eval keeps the list of rounds
    assert set(Path(tempfile.gettempdir()).glob("video_gemma_lmms_*")) == before


def _cli(setup, *args: str, launcher: bool = False) -> subprocess.CompletedProcess:
    root, _ = setup
    env = {**os.environ, "HF_DATASETS_CACHE": str(root / "hf_datasets"), "TOKENIZERS_PARALLELISM": "false"}
    entry = ["-m", "gemma3.evaluation.lmms_eval_plugin"] if launcher else ["-m", "lmms_eval"]
    tasks = REPO / "gemma3" / "evaluation" / "lmms_tasks"
    cmd = [sys.executable, *entry, "--model", "video_gemma", "--include_path", str(tasks),
           "--output_path", str(root / "lmms_out"), *args]  # fmt: skip
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_real_cli_scores_equal_the_projects_evaluation(setup):
    root, data = setup
    proc = _cli(setup, "--model_args", f"pretrained={root / 'model'}", "--tasks", TASKS, "--batch_size", "2",
                "--log_samples")  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Error during evaluation" not in log, log[-4000:]
    results_files = sorted((root / "lmms_out").rglob("*_results.json"))
    assert results_files, log[-4000:]
    res = json.loads(results_files[-1].read_text())["results"]

    def samples(task: str) -> list[dict]:
        path = next(p for p in sorted((root / "lmms_out").rglob(f"*_samples_{task}.jsonl")))
        return [json.loads(x) for x in path.read_text().splitlines()]

    docs = _docs(setup)  # lmms-eval's doc_id indexes this list (action.json; feedback.json has the same order)
    feedback_docs = json.loads((root / "data" / "lmms" / "feedback.json").read_text())
    predictor = load_predictor(root / "model", generation=GenerationConfig(max_new_tokens=8))
    test = {t.id: t for t in load_annotations(data / "annotations" / "test.json", media_root=data)}

    # Multiple choice: the option lmms-eval picks is the project's own top-ranked candidate.
    mc = samples("video_gemma_action_mc")
    assert sorted(s["doc_id"] for s in mc) == list(range(len(docs)))
    picked, ours, gold = [], [], []
    for s in mc:
        doc = docs[s["doc_id"]]
        picked.append(int(np.argmin([float(r[0]) for r in s["filtered_resps"]])))
        ours.append(int(np.argmax(predictor.rank_candidates(test[doc["id"]], doc["choices"]))))
        gold.append(doc["answer"])
    assert picked == ours
    assert res["video_gemma_action_mc"]["acc,none"] == pytest.approx(np.mean(np.array(picked) == np.array(gold)))

    # Generation: the same replies as batched inference (cut at the task's "\n"), the same score as evaluate.py.
    from gemma3.evaluation.evaluate import evaluate

    preds_file = root / "preds.jsonl"
    predict(predictor, list(test.values()), preds_file, batch_size=2, progress=False)
    mine = {r["id"]: r["prediction"].split("\n")[0] for r in map(json.loads, preds_file.read_text().splitlines())}

    def reply(s: dict) -> str:  # the logged reply: a string (or a one-item list)
        r = s["filtered_resps"]
        return r if isinstance(r, str) else r[0]

    gen = {docs[s["doc_id"]]["id"]: reply(s) for s in samples("video_gemma_action_gen")}
    assert gen == mine
    classes = (data / "classes.txt").read_text().split("\n")
    labels = {d["id"]: d["answer_text"] for d in docs}
    ref = evaluate("action_recognition", [{"id": i, "prediction": p, "reference": labels[i]} for i, p in mine.items()],
                   classes=[c for c in classes if c], plot=False)  # fmt: skip
    assert res["video_gemma_action_gen"]["top1_accuracy,none"] == pytest.approx(ref["top1_accuracy"])

    fb = samples("video_gemma_feedback")
    fb_preds = [{"id": feedback_docs[s["doc_id"]]["id"], "prediction": reply(s),
                 "reference": feedback_docs[s["doc_id"]]["answer"]} for s in fb]  # fmt: skip
    ref = evaluate("qevd", fb_preds, plot=False)
    for key in ("exercise_accuracy", "meteor", "rouge_l"):
        assert res["video_gemma_feedback"][f"{key},none"] == pytest.approx(ref[key]), key


@pytest.mark.slow
def test_launcher_turns_lmms_eval_failures_into_a_nonzero_exit(setup, tmp_path):
    root, _ = setup
    # lmms-eval itself exits 0 on a missing checkpoint; the launcher does not.
    plain = _cli(setup, "--model_args", f"pretrained={tmp_path / 'nope'}", "--tasks", "video_gemma_action_mc")
    assert plain.returncode == 0 and "does not exist" in plain.stdout + plain.stderr
    missing = _cli(setup, "--model_args", f"pretrained={tmp_path / 'nope'}", "--tasks", "video_gemma_action_mc",
                   launcher=True)  # fmt: skip
    assert missing.returncode == 1 and "does not exist" in missing.stdout + missing.stderr
    no_task = _cli(setup, "--model_args", f"pretrained={root / 'model'}", "--tasks", "no_such_task", launcher=True)
    assert no_task.returncode == 1 and "no_such_task" in no_task.stdout + no_task.stderr


def test_unreadable_media_is_an_error_naming_the_file(setup, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    docs = [{**_docs(setup)[0], "video": str(bad)}]
    plugin = _plugin(setup, docs)
    req = Instance("generate_until", ("q", {}, lambda d: [d["video"]], 0, "t", "test"), 0, _meta(0))
    with pytest.raises(RuntimeError, match=r"t/test/0: .*broken\.mp4"):
        plugin.generate_until([req])


def test_run_cli_exit_codes():
    from loguru import logger

    assert run_cli([], cli=lambda: None) == 0
    assert run_cli([], cli=lambda: logger.error("Error during evaluation: boom")) == 1


def test_prepare_names_the_missing_file_and_bad_label(setup, tmp_path):
    _, data = setup
    with pytest.raises(FileNotFoundError, match=r"nowhere/annotations/test.json: no test annotations"):
        prepare_lmms_docs(tmp_path / "nowhere", tmp_path / "out")
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    (copy / "classes.txt").write_text("growing\n")
    with pytest.raises(ValueError, match=r"test.json: sample shrinking_\d+: answer 'shrinking' is not in"):
        prepare_lmms_docs(copy, tmp_path / "out")
