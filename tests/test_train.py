"""Training entry point on a tiny custom model, through the CLI flags the scripts use."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_checkpoints import train_argv
from transformers import set_seed

from gemma3.model.builder import TRAINABLES_FILE, load_model
from gemma3.model.families import CUSTOM
from gemma3.model.modeling import component_of
from gemma3.train import train as T
from gemma3.train.arguments import parse_args
from gemma3.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _initial_params(argv) -> dict[str, torch.Tensor]:
    """The model as training starts (same seed, same build), name -> tensor."""
    model_args, data_args, train_args = parse_args(argv)
    set_seed(train_args.seed)
    model = T.setup(CUSTOM, model_args, data_args, train_args)[0]
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _strip(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _changed(model, before) -> dict[str, set[str]]:
    """Components whose parameters changed / stayed, and whether LoRA weights changed."""
    out = {"changed": set(), "same": set(), "lora_changed": False}
    for name, p in model.named_parameters():
        if "lora_" in name:
            out["lora_changed"] |= "lora_B" in name and bool(p.detach().abs().sum() > 0)
            continue
        ref = before[_strip(name)]
        comp = component_of(name)
        out["changed" if not torch.equal(p.detach(), ref) else "same"].add(comp)
    return out


def test_finetune_lora_trains_adapters_and_projectors_only(assets, tmp_path):
    argv = train_argv(
        assets, tmp_path / "ft", stage="finetune", use_lora=True, projector_lr=1e-3, gradient_checkpointing=True
    )
    before = _initial_params(argv)
    res = T.main(argv)
    ch = _changed(res["model"], before)
    assert ch["lora_changed"], "LoRA weights did not change (gradient checkpointing with frozen encoders?)"
    assert ch["changed"] == {"projector"}
    assert {"language_model", "image_encoder", "video_encoder"} <= ch["same"]
    out = tmp_path / "ft"
    for f in (
        "adapter_config.json",
        "adapter_model.safetensors",
        TRAINABLES_FILE,
        "config.json",
        "hyperparameters.json",
        "loss.png",
        "tokenizer_config.json",
    ):
        assert (out / f).exists(), f
    assert len(res["losses"]) == 3 and all(map(torch.isfinite, torch.tensor(res["losses"])))
    # The output folder reloads to the trained model (adapter + projectors + random-init encoders).
    reloaded, _ = load_model(out)
    trained = dict(res["model"].named_parameters())
    for name, p in reloaded.named_parameters():
        torch.testing.assert_close(p, trained[name], msg=name)


def test_pretrain_stage_trains_projectors_only(assets, tmp_path):
    argv = train_argv(assets, tmp_path / "pt", stage="pretrain", learning_rate=1e-3)
    before = _initial_params(argv)
    res = T.main(argv)
    ch = _changed(res["model"], before)
    assert ch["changed"] == {"projector"} and "language_model" in ch["same"]
    assert not (tmp_path / "pt" / "adapter_config.json").exists()
    # A finetune run can start from the pretrained projectors.
    argv2 = train_argv(
        assets,
        tmp_path / "ft2",
        stage="finetune",
        use_lora=True,
        max_steps=1,
        pretrained_projector=str(tmp_path / "pt"),
    )
    start = _initial_params(argv2)
    trained = {n: p for n, p in res["model"].named_parameters()}
    for n, p in start.items():
        if component_of(n) == "projector":
            torch.testing.assert_close(p, trained[n])


def test_encoders_train_with_their_own_learning_rates(assets, tmp_path):
    argv = train_argv(
        assets,
        tmp_path / "enc",
        stage="pretrain",
        projector_lr=1e-3,
        image_encoder_lr=1e-3,
        video_encoder_lr=1e-3,
        max_steps=2,
    )
    before = _initial_params(argv)
    ch = _changed(T.main(argv)["model"], before)
    assert ch["changed"] == {"projector", "image_encoder", "video_encoder"}


def test_full_finetune_and_freeze_flags(assets, tmp_path):
    argv = train_argv(assets, tmp_path / "full", stage="finetune", freeze_projector=True, max_steps=2)
    before = _initial_params(argv)
    res = T.main(argv)
    ch = _changed(res["model"], before)
    assert ch["changed"] == {"language_model"}
    assert (tmp_path / "full" / "model.safetensors").exists()


def test_resume_gives_the_same_losses(assets, tmp_path):
    straight = T.main(train_argv(assets, tmp_path / "a", stage="finetune", use_lora=True, max_steps=6))["losses"]
    ckpt = dict(stage="finetune", use_lora=True, max_steps=6, save_strategy="steps", save_steps=3)
    # Rotation keeps the newest checkpoint; no staging folder is left behind.
    T.main(train_argv(assets, tmp_path / "b", save_total_limit=1, **ckpt))
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-6"]
    assert not (tmp_path / "b" / ".checkpoint-staging").exists()
    # A run killed after step 3: only checkpoint-3 exists. `auto` resumes it and repeats the same steps 4-6.
    argv = train_argv(assets, tmp_path / "c", save_total_limit=3, **ckpt)
    first = T.main(argv)
    torch.testing.assert_close(torch.tensor(first["losses"]), torch.tensor(straight), atol=1e-6, rtol=0)
    shutil.rmtree(tmp_path / "c" / "checkpoint-6")
    resumed = T.main(argv + ["--resume_from_checkpoint", "auto"])
    assert resumed["global_step"] == 6
    # The log history carries steps 1-3 over from the checkpoint; steps 4-6 are new and must match.
    assert len(resumed["losses"]) == 6
    torch.testing.assert_close(torch.tensor(resumed["losses"]), torch.tensor(straight), atol=1e-6, rtol=0)


def test_qlora_needs_cuda_and_yaml_config_with_overrides(assets, tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="needs a CUDA GPU"):
            T.main(train_argv(assets, tmp_path / "q", use_lora=True, bits=4))
    llm, clip, vm, data = assets
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model_id: {llm}\ndata_path: {data}\nlearning_rate: 0.5\nlora_r: 4\nstage: pretrain\n")
    m, d, t = parse_args(["--config", str(cfg), "--learning_rate", "0.01", "--output_dir", str(tmp_path)])
    assert (t.learning_rate, m.lora_r, t.stage, m.model_id) == (0.01, 4, "pretrain", str(llm))
    with pytest.raises(ValueError, match="--stage must be one of"):
        parse_args(["--data_path", str(data), "--stage", "sft", "--output_dir", str(tmp_path)])


def test_language_lora_targets_stay_in_the_language_model():
    from tiny_models import tiny_video_gemma_config

    from gemma3.model.modeling import VideoGemmaForCausalLM

    model = VideoGemmaForCausalLM(tiny_video_gemma_config("gemma3n"))
    names = CUSTOM.lora_targets(model, "all-linear")
    assert names and all(n.startswith("language_model.") for n in names)
    assert not any(s in n for n in names for s in ("altup", "laurel", "per_layer", "lm_head"))
    qv = CUSTOM.lora_targets(model, "q_proj,v_proj")
    assert {n.rsplit(".", 1)[1] for n in qv} == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="match no linear layer"):
        CUSTOM.lora_targets(model, "nope_proj")


def test_deepspeed_zero2_on_cpu(assets, tmp_path):
    out = tmp_path / "ds"
    argv = train_argv(
        assets,
        out,
        stage="finetune",
        use_lora=True,
        max_steps=2,
        optim="adamw_torch",
        save_strategy="steps",
        save_steps=2,
    )
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "torch_extensions"),
    }
    # The training entry point, then a check that the stage left nothing alive: the pipeline runs its stages in
    # one process, and a DeepSpeed engine that is not torn down keeps the whole model (GBs at real size).
    script = (
        "import gc, sys, weakref\n"
        "from gemma3.train import train as T\n"
        "summary = T.main(sys.argv[1:])\n"
        "model = weakref.ref(summary.pop('model'))\n"
        "del summary\n"
        "gc.collect()\n"
        "print('model freed' if model() is None else 'model still alive')\n"
    )
    cmd = [sys.executable, "-c", script, "--deepspeed", str(REPO / "scripts" / "zero2.json"), *argv]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model freed" in proc.stdout, proc.stdout[-2000:]
    # The checkpoint was written by the DeepSpeed engine: ZeRO optimizer-state shards per rank.
    shards = list((out / "checkpoint-2").glob("global_step2/*zero*optim_states.pt"))
    assert shards, sorted(p.name for p in (out / "checkpoint-2").rglob("*"))
    hp = json.loads((out / "hyperparameters.json").read_text())
    assert hp["training"]["deepspeed"].endswith("zero2.json")
    assert (out / "adapter_model.safetensors").exists() and (out / TRAINABLES_FILE).exists()


def test_dora_paged_adamw_8bit_and_merged_export(assets, tmp_path):
    pytest.importorskip("bitsandbytes")
    argv = train_argv(
        assets,
        tmp_path / "dora",
        stage="finetune",
        use_lora=True,
        use_dora=True,
        max_steps=2,
        optim="paged_adamw_8bit",
        merge_lora=True,
    )
    res = T.main(argv)
    names = [n for n, _ in res["model"].named_parameters()]
    assert any("lora_magnitude_vector" in n for n in names)  # DoRA's magnitude vectors
    assert all(math.isfinite(v) for v in res["losses"])
    merged, _ = load_model(tmp_path / "dora" / "merged")
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    trained = res["model"].eval()  # the adapter model (dropout off): merged and unmerged give the same logits
    ids = torch.tensor([[2, 105, 2364, 107]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_gradient_accumulation_gives_the_full_batch_loss_and_gradients(assets, tmp_path):
    """(batch 4) and (batch 2 x accumulation 2) log the same loss and take the same step (plain SGD, which would
    show a scaled gradient): the model divides the summed token loss by the Trainer's num_items_in_batch."""
    common = dict(stage="finetune", use_lora=True, projector_lr=0.1, learning_rate=0.1, optim="sgd", max_steps=1,
                  lr_scheduler_type="constant", warmup_ratio=0.0, max_grad_norm=0.0, lora_dropout=0.0)  # fmt: skip
    full = T.main(train_argv(assets, tmp_path / "b4", per_device_train_batch_size=4, **common))
    accum = T.main(train_argv(assets, tmp_path / "b2x2", per_device_train_batch_size=2, gradient_accumulation_steps=2,
                         **common))  # fmt: skip
    assert full["losses"][0] == pytest.approx(accum["losses"][0], rel=1e-5)
    a = {n: p for n, p in full["model"].named_parameters() if p.requires_grad}
    b = {n: p for n, p in accum["model"].named_parameters() if p.requires_grad}
    assert a.keys() == b.keys() and a
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-6, msg=n)
