"""The whole pipeline at tiny size: data -> pretrain -> finetune -> batched inference -> evaluation -> results."""

from __future__ import annotations

import json

from tiny_checkpoints import make_llm

from gemma3 import pipeline


def test_whole_pipeline_tiny(tmp_path, gemma270m_dir):
    llm = make_llm(tmp_path, gemma270m_dir)
    out, data = tmp_path / "out", tmp_path / "data"
    argv = [
        "--preset",
        "cpu",
        "--model_id",
        str(llm),
        "--data_dir",
        str(data),
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--clips_per_class",
        "2",
        "--pretrain_steps",
        "2",
        "--finetune_steps",
        "2",
        "--batch",
        "4",
        "--eval_batch",
        "8",
    ]
    summary = pipeline.main(argv)
    assert summary["preset"] == "cpu"
    test = json.loads((data / "annotations" / "test.json").read_text())
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in preds) == sorted(r["id"] for r in test)
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["num_test"] == len(test)
    assert summary["chance"] == 1 / 8
    for f in (
        "results.md",
        "results.json",
        "eval/metrics.json",
        "eval/action_recognition.png",
        "finetune/adapter_model.safetensors",
        "pretrain/non_lora_trainables.safetensors",
        "finetune_loss.png",
    ):
        assert (out / f).exists(), f
    # A second run finds every step done and only re-scores.
    again = pipeline.main(argv)
    assert again["test_accuracy"] == summary["test_accuracy"] and again["inference"]["done"] == 0
