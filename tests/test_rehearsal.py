"""`REHEARSE=1 PRESET=gpu bash scripts/finetune_qevd.sh`: the gpu preset's own steps and training arguments on CPU,
against real-width, cut-depth stand-ins of the models it downloads (a UMT-layout VideoMamba file among them)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from gemma3 import pipeline
from gemma3.train.rehearsal import OVERRIDES, differences, rehearsal_preset

REPO = Path(__file__).resolve().parents[1]
# Training arguments allowed to differ from the real gpu run's: the stand-in paths and the listed overrides.
EXPECTED_ARG_DIFFERENCES = {
    "model_id", "image_encoder", "video_encoder", "video_encoder_config", "use_cpu", "bf16",
    "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "num_train_epochs", "logging_steps",
    "report_to",  # the test turns tensorboard off
}  # fmt: skip


def _config(tmp_path: Path, rehearse: bool) -> pipeline.PipelineConfig:
    argv = ["--preset", "gpu", "--data_dir", str(tmp_path / "d"), "--output_dir", str(tmp_path / "o")]
    return pipeline.config_from_args(pipeline.build_parser().parse_args(argv + (["--rehearse"] if rehearse else [])))


def test_rehearsal_changes_only_what_it_lists(tmp_path):
    real, rehearsed = _config(tmp_path, False), _config(tmp_path, True)
    assert rehearsed.rehearse and rehearsed.use_cpu and not real.use_cpu
    changed = {f.name for f in dataclasses.fields(real.preset) if getattr(real.preset, f.name) !=
               getattr(rehearsed.preset, f.name)}  # fmt: skip
    assert changed == set(OVERRIDES)
    listed = differences(real.preset, rehearsed.preset, "google/gemma-3n-E2B-it", "openai/clip-vit-base-patch16")
    assert all(any(d.startswith(f"{name}:") for d in listed) for name in changed)
    with pytest.raises(SystemExit, match="gpu preset"):
        pipeline.config_from_args(pipeline.build_parser().parse_args(["--preset", "cpu", "--rehearse"]))


@pytest.mark.slow
def test_gpu_preset_rehearsed_on_cpu(tmp_path, gemma270m_dir):
    out, data = tmp_path / "out", tmp_path / "data"
    env = {**os.environ, "REHEARSE": "1", "PRESET": "gpu", "DATA_DIR": str(data), "OUTPUT_DIR": str(out),
           "REPORT_TO": "none", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    proc = subprocess.run(["bash", "scripts/finetune_qevd.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    # The differences are printed and written, in one list.
    assert "only differences from the real run" in log
    listed = (out / "rehearsal.md").read_text()
    for name in OVERRIDES:
        assert f"- {name}:" in listed

    # The build step loaded the UMT-layout file through the release loader and printed its report.
    assert "umt layout): loaded 23 encoder tensors" in log and "text tower (BERT)" in log and "missing nothing" in log
    assert "Taking the gemma3n text decoder out of multimodal checkpoint" in log

    # Every stage ran the gpu preset's own training arguments; only the listed ones differ.
    real = _config(tmp_path, False)
    src = pipeline.ModelSources(llm="google/gemma-3n-E2B-it", image_encoder="openai/clip-vit-base-patch16",
                                video_encoder="videomamba_m16_25M_f8_res224.pth")  # fmt: skip
    for stage, expected in (
        ("pretrain", pipeline.pretrain_arguments(real, src)),
        ("finetune", pipeline.finetune_arguments(real, src, real.output_dir / "pretrain")),
    ):
        hp = json.loads((out / stage / "hyperparameters.json").read_text())
        ran = {**hp["model"], **hp["data"], **hp["training"]}
        differ = {k for k, v in expected.items() if k not in EXPECTED_ARG_DIFFERENCES and ran.get(k) != v
                  and not (k.endswith(("_dir", "_path", "_folder", "pretrained_projector")))}  # fmt: skip
        assert not differ, {k: (expected[k], ran.get(k)) for k in differ}
        assert ran["deepspeed"].endswith("scripts/zero2.json") and ran["gradient_checkpointing"] is True
        assert ran["bf16"] is False and ran["use_cpu"] is True
        state = json.loads((out / stage / "trainer_state.json").read_text())
        assert state["global_step"] == rehearsal_preset(real.preset).__getattribute__(f"{stage}_steps")

    adapter = json.loads((out / "finetune" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (64, 128)
    assert json.loads((out / "finetune" / "frame_processor_config.json").read_text())["num_frames"] == 16
    results = json.loads((out / "results.json").read_text())
    test = [r for r in json.loads((data / "fine_grained_labels.json").read_text()) if r["split"] == "test"]
    assert results["num_test"] == len(test) == len((out / "predictions.jsonl").read_text().splitlines())
    assert "exercise_accuracy" in results and "temporal_f_score" not in results  # the coach's clips, no sessions
