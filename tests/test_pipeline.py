"""The whole pipeline at tiny size: data -> pretrain -> finetune -> batched inference -> evaluation -> results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_checkpoints import make_llm

from gemma3 import pipeline, presets
from gemma3.data.synthetic import SyntheticConfig, make_synthetic_dataset

# Two actions that differ in every frame's brightness trend, at the cpu preset's frame size: learnable by the tiny
# encoders and LM in a few dozen steps, so accuracy above chance means the whole path works.
LEARNABLE = ("growing", "shrinking")


@pytest.mark.slow
def test_whole_pipeline_tiny_learns_above_chance_and_reruns_identically(tmp_path, gemma270m_dir):
    llm = make_llm(tmp_path, gemma270m_dir)
    out, data = tmp_path / "out", tmp_path / "data"
    make_synthetic_dataset(data, SyntheticConfig(clips_per_class=10, num_frames=8, classes=LEARNABLE, seed=1))

    def argv_for(output_dir) -> list[str]:
        return [
            "--preset", "cpu", "--model_id", str(llm), "--data_dir", str(data), "--output_dir", str(output_dir),
            "--report_to", "none", "--pretrain_steps", "12", "--finetune_steps", "30", "--batch", "4",
            "--encoder_warmup_steps", "40",
            "--eval_batch", "8", "--lr", "3e-3",
        ]  # fmt: skip

    # Both trainings run as a user runs the script, each in a new process (a process that ran other tests before
    # need not compute bit-for-bit as a fresh one does: its thread pools and kernel caches are warm).
    root = Path(__file__).resolve().parents[1]
    argv = argv_for(out)
    subprocess.run([sys.executable, "-m", "gemma3.pipeline", *argv], cwd=root, check=True)
    summary = json.loads((out / "results.json").read_text())
    assert summary["preset"] == "cpu"
    test = json.loads((data / "annotations" / "test.json").read_text())
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in preds) == sorted(r["id"] for r in test)
    assert summary["num_test"] == len(test) and summary["chance"] == 0.5
    assert summary["test_accuracy"] > summary["chance"], preds
    named = {r["matched"] for r in json.loads((out / "eval" / "metrics.json").read_text())["records"]}
    assert summary["never_predicted"] == [c for c in LEARNABLE if c not in named]
    assert (
        f"| classes never predicted | {', '.join(summary['never_predicted']) or 'none'} |"
        in (out / "results.md").read_text()
    )
    for f in (
        "results.md",
        "results.json",
        "eval/metrics.json",
        "eval/action_recognition.png",
        "finetune/adapter_model.safetensors",
        "finetune/frame_processor_config.json",
        "pretrain/non_lora_trainables.safetensors",
        "finetune_loss.png",
        "pretrain.log",
        "finetune.log",
        "warmup.log",
        "warmup/warmup.json",
        "warmup/image_encoder/config.json",
        "warmup/videomamba_warmup.pth",
    ):
        assert (out / f).exists(), f
    assert "Trainable parameters" in (out / "finetune.log").read_text()
    # A second run finds every step done and only re-scores.
    again = pipeline.main(argv)
    assert again["test_accuracy"] == summary["test_accuracy"] and again["inference"]["done"] == 0
    # A same-seed rerun in a new process (as a user reruns the script) into a new output folder, from the same
    # warmed-up encoders and pretrained projectors (the same training code), finetunes to the same losses
    # and writes the same predictions.
    rerun_out = tmp_path / "rerun"
    shutil.copytree(out / "pretrain", rerun_out / "pretrain")
    shutil.copytree(out / "warmup", rerun_out / "warmup")
    subprocess.run([sys.executable, "-m", "gemma3.pipeline", *argv_for(rerun_out)], cwd=root, check=True)
    rerun = json.loads((rerun_out / "results.json").read_text())
    losses = [json.loads((o / "finetune" / "log_history.json").read_text()) for o in (out, rerun_out)]
    assert [e.get("loss") for e in losses[0]] == [e.get("loss") for e in losses[1]]
    again_preds = [json.loads(x) for x in (rerun_out / "predictions.jsonl").read_text().splitlines()]
    assert {p["id"]: p["prediction"] for p in again_preds} == {p["id"]: p["prediction"] for p in preds}
    assert rerun["test_accuracy"] == summary["test_accuracy"]


def test_stage_arguments_are_the_training_entry_points_own(tmp_path):
    """The pipeline's typed stage arguments parse with the training parser (no stray or misspelt keys)."""
    from gemma3.train.arguments import argument_parser, check_arguments

    cfg = pipeline.PipelineConfig("cpu", presets.PRESETS["cpu"], tmp_path / "d", tmp_path / "o", report_to="none")
    src = pipeline.ModelSources(llm="x", image_encoder=None, image_encoder_config="c.json", encoders_from_scratch=True)
    args = pipeline._stage_arguments(cfg, src, "finetune", tmp_path / "o" / "ft", 5, use_lora=True)
    m, _, t = check_arguments(*argument_parser().parse_dict(args))
    assert (m.image_encoder, m.use_lora, m.num_frames, t.max_steps, t.stage) == (None, True, 8, 5, "finetune")
    assert (m.projector_norm, t.bf16) == ("input", presets.cpu_computes_bf16())  # the cpu preset's (see PRESETS)
    gpu = pipeline.PipelineConfig("gpu", presets.PRESETS["gpu"], tmp_path / "d", tmp_path / "o")
    args = pipeline._stage_arguments(gpu, src, "pretrain", tmp_path / "o" / "pre", 0)
    assert args["deepspeed"].endswith("scripts/zero2.json") and args["num_train_epochs"] == 1.0


def test_cpu_bf16_only_where_the_cpu_computes_in_bf16(tmp_path):
    info = tmp_path / "cpuinfo"
    cases = (("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("amx_bf16 amx_tile", True))
    for flags, expected in cases:
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert presets.cpu_computes_bf16(info) is expected
    assert presets.cpu_computes_bf16(tmp_path / "missing") is False


def test_gpu_preset_learning_rates_reach_the_optimizer(tmp_path, gemma270m_dir):
    """Every learning rate the gpu preset sets (LoRA, projector, encoders) becomes an optimizer group's lr."""
    import dataclasses

    from tiny_checkpoints import CLIP_CFG, VIDEOMAMBA_CFG, make_dataset

    from gemma3.train import train as T
    from gemma3.train.arguments import argument_parser, check_arguments

    llm = make_llm(tmp_path, gemma270m_dir)
    data = make_dataset(tmp_path, n=2)
    (tmp_path / "clip.json").write_text(json.dumps(CLIP_CFG))
    (tmp_path / "vm.json").write_text(json.dumps(VIDEOMAMBA_CFG))
    gpu = presets.PRESETS["gpu"]
    visual = dataclasses.replace(gpu.visual, num_frames=4, keyframe_chunk_size=2, keyframes_per_chunk=1,
                                 image_output_grid=2, video_output_grid=2, video_size="tiny")  # fmt: skip
    preset = dataclasses.replace(gpu, visual=visual, encoder_lr=3e-5, finetune_steps=1, batch=2, grad_accum=1,
                                 max_length=256, bf16=False)  # fmt: skip
    cfg = pipeline.PipelineConfig("gpu", preset, tmp_path, tmp_path / "o", report_to="none")
    src = pipeline.ModelSources(llm=str(llm), image_encoder=None, image_encoder_config=str(tmp_path / "clip.json"),
                                video_encoder_config=str(tmp_path / "vm.json"))  # fmt: skip
    args = pipeline.finetune_arguments(cfg, src, tmp_path / "no_pretrain")
    assert args["deepspeed"].endswith("scripts/zero2.json") and args["learning_rate"] == preset.lr
    # On this CPU: no DeepSpeed / gradient checkpointing, the annotation file of this test, no pretrained projector.
    args.update(deepspeed=None, gradient_checkpointing=False, use_cpu=True, data_path=str(data),
                video_folder=str(tmp_path), dataloader_num_workers=0, save_strategy="no")  # fmt: skip
    del args["pretrained_projector"]
    res = T.train(*check_arguments(*argument_parser().parse_dict({k: v for k, v in args.items() if v is not None})))
    lrs = {g["name"].split("/")[0]: g["lr"] for g in res["optimizer_groups"]}
    assert lrs == {"language_model": preset.lr, "projector": preset.projector_lr, "image_encoder": 3e-5,
                   "video_encoder": 3e-5}  # fmt: skip
