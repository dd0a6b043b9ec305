"""`python -m gemma3.train.preflight`: exact counts (against the built model and a real batch), the memory formula's
model-state lines (against a real optimizer step), full size on meta, and the does-not-fit exit."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from tiny_checkpoints import custom_train_args, make_custom_assets
from tiny_native import make_native

from gemma3.model.families import family_for_checkpoint
from gemma3.train import preflight
from gemma3.train.arguments import parse_args
from gemma3.train.train import apply_trainable, build_datasets, component_flags, setup


@pytest.fixture(scope="module")
def assets(tmp_path_factory, gemma270m_dir):
    return make_custom_assets(tmp_path_factory.mktemp("preflight"), gemma270m_dir)


def _built(argv):
    """The model as training builds it (real weights), after freezing / LoRA, and a real collated batch."""
    model_args, data_args, train_args = parse_args(argv)
    family = family_for_checkpoint(model_args.model_id, model_args.model_family)
    model, processor, _, plugin, template = setup(family, model_args, data_args, train_args)
    total = sum(p.numel() for p in model.parameters())
    model = apply_trainable(model, component_flags(model_args, train_args), family, model_args)
    ds, _ = build_datasets(data_args, plugin, processor, template)
    batch = plugin.collate([ds[i] for i in range(len(ds))], padding_side="right")
    return model, total, batch


@pytest.mark.parametrize(
    "extra",
    [
        {"stage": "pretrain"},
        {"stage": "finetune", "use_lora": True, "lora_r": 4},
        {"stage": "finetune", "use_lora": True, "use_dora": True, "lora_r": 2, "video_encoder_lr": 1e-4},
    ],
    ids=["pretrain", "lora", "dora+encoder"],
)
def test_custom_counts_equal_the_built_model_and_a_real_batch(assets, tmp_path, extra):
    llm, clip, vm, data = assets
    argv = custom_train_args(llm, clip, vm, data, tmp_path / "out", **extra)
    plan = preflight.plan(*parse_args(argv), samples=8)
    model, total, batch = _built(argv)
    assert plan.parameters["total"] == total
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert plan.trainable[extra["stage"]]["total"] == trainable
    # The real batch: every sample's visual tokens are what the model takes (its forward checks the count).
    config = model.config
    per_sample = (batch["input_ids"] == config.video_token_id).sum(1)
    assert plan.visual_tokens == {"min": int(per_sample.min()), "max": int(per_sample.max())}
    assert int(per_sample.max()) == config.num_video_tokens
    assert plan.sequence_length["max"] == int(batch["attention_mask"].sum(1).max())
    assert plan.supervised_tokens == int((batch["labels"] != -100).sum(1).max())
    with torch.no_grad():
        model(**{k: v for k, v in batch.items() if k != "labels"})
    assert not (tmp_path / "out").exists()  # nothing written


def test_native_counts_equal_the_built_model_and_a_real_batch(assets, tmp_path, gemma270m_dir):
    _, _, _, data = assets
    native = make_native(tmp_path, gemma270m_dir, "gemma3")
    argv = ["--model_id", str(native), "--data_path", str(data), "--video_folder", str(data.parent),
            "--output_dir", str(tmp_path / "o"), "--use_lora", "True", "--lora_r", "4", "--num_frames", "2",
            "--use_cpu", "True", "--per_device_train_batch_size", "2", "--max_length", "512"]  # fmt: skip
    plan = preflight.plan(*parse_args(argv), samples=8)
    model, total, batch = _built(argv)
    assert plan.family == "gemma3" and plan.parameters["total"] == total
    assert plan.trainable["finetune"]["total"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_sample = (batch["input_ids"] == model.config.image_token_id).sum(1)
    assert plan.visual_tokens["max"] == int(per_sample.max()) == 2 * model.config.mm_tokens_per_image


def test_model_state_memory_equals_a_real_optimizer_step(assets, tmp_path):
    """Weights, gradients and AdamW state bytes (fp32, no DeepSpeed) measured after one real step."""
    llm, clip, vm, data = assets
    argv = custom_train_args(llm, clip, vm, data, tmp_path / "out", use_lora=True, lora_r=4)
    plan = preflight.plan(*parse_args(argv), samples=8)
    model, _, batch = _built(argv)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    model(**batch).loss.backward()
    opt.step()
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    measured = {
        "weights": nbytes(model.parameters()),
        "gradients": nbytes(p.grad for p in params),
        "optimizer": nbytes(v for st in opt.state.values() for k, v in st.items() if k != "step"),
    }
    assert {k: plan.memory[k] for k in measured} == measured


def test_full_size_gpu_preset_plan_and_the_does_not_fit_exit(assets, tmp_path, gemma270m_dir, capsys):
    """Gemma-3n-E2B + CLIP ViT-B/16 at their published sizes (configs only, on meta) with the gpu preset's
    training settings: the plan's counts are the published ones; 8 GiB does not fit (exit 2), 141 GiB does."""
    from gemma3.model.reference_configs import reference_path

    _, _, _, data = assets
    llm = tmp_path / "e2b"  # the published config with a Gemma tokenizer: no weights needed
    shutil.copytree(reference_path("google/gemma-3n-E2B-it"), llm)
    for f in gemma270m_dir.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy(f, llm / f.name)
    argv = ["--model_family", "custom", "--model_id", str(llm), "--image_encoder",
            str(reference_path("openai/clip-vit-base-patch16")), "--data_path", str(data), "--video_folder",
            str(data.parent), "--output_dir", str(tmp_path / "o"), "--use_lora", "True", "--lora_r", "64",
            "--lora_alpha", "128", "--bf16", "True", "--use_cpu", "True", "--per_device_train_batch_size", "4",
            "--gradient_checkpointing", "True", "--num_frames", "16",
            "--json", str(tmp_path / "plan.json")]  # fmt: skip
    assert preflight.main(argv + ["--gpu_memory", "8"]) == 2
    out = capsys.readouterr()
    assert "DOES NOT FIT" in out.err and "language_model" in out.out
    assert preflight.main(argv + ["--gpu_memory", "141"]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["parameters"]["language_model"] == pytest.approx(4_435_000_000, rel=0.01)
    assert plan["parameters"]["image_encoder"] == pytest.approx(85_799_424, rel=0.01)
    assert plan["visual_tokens"]["max"] == 8 * (49 + 49)  # 8 key frames x (VideoMamba 7x7 + CLIP 7x7)
    # LoRA r=64, r * (in + out) per projection (hidden 2048, q/o 2048, k/v 512, MLP 8192): q, k, v, o, gate, up,
    # down in the 20 layers with their own KV; no k / v in the 10 KV-shared ones.
    own, shared = 4096 + 2560 + 2560 + 4096 + 3 * 10240, 4096 + 4096 + 3 * 10240
    assert plan["trainable"]["finetune"]["lora"] == 64 * (20 * own + 10 * shared) == 81_264_640
    assert plan["memory"]["weights"] == 2 * (plan["parameters"]["total"] + 81_264_640)  # bf16


def test_zero3_shards_weights_and_batch_checks():
    kw = dict(parameters=10**9, trainable=10**7, largest=10**7, weight_bytes=2, micro_batch=1, seq_len=1000,
              supervised=10, dims=(1024, 4096, 1000, 10), gradient_checkpointing=True)  # fmt: skip
    z2 = preflight.estimate_memory(world_size=8, zero_stage=2, **kw)
    z3 = preflight.estimate_memory(world_size=8, zero_stage=3, **kw)
    ddp = preflight.estimate_memory(world_size=8, zero_stage=-1, **kw)
    assert z3["weights"] == 10**9 * 2 // 8 + 2 * 10**7 * 2 < z2["weights"] == 2 * 10**9
    assert z2["optimizer"] == 12 * 10**7 // 8 and ddp["optimizer"] == 2 * 10**7 * 2
    args = SimpleNamespace(deepspeed={"train_batch_size": 16}, per_device_train_batch_size=2,
                           gradient_accumulation_steps=2)  # fmt: skip
    preflight.check_world_size(args, 4)
    with pytest.raises(ValueError, match="train_batch_size=16 .* 3 ranks = 12"):
        preflight.check_world_size(args, 3)


def test_training_refuses_a_run_that_does_not_fit_before_loading(assets, tmp_path):
    """What `train` runs first on CUDA, given the device's memory: one clear error, nothing written."""
    llm, clip, vm, data = assets
    args = parse_args(custom_train_args(llm, clip, vm, data, tmp_path / "out", use_lora=True))
    with pytest.raises(MemoryError, match="needs about .* GiB per GPU .* but the GPU has 0.0 GiB"):
        preflight.check_fits(*args, gpu_bytes=1024**2)
    assert preflight.check_fits(*args, gpu_bytes=80 * 1024**3).fits
    assert not (tmp_path / "out").exists()
