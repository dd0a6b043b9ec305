"""Two CPU ranks (gloo) through the real launchers: torchrun + DDP, and the DeepSpeed launcher with ZeRO-2 and
ZeRO-3. The same global batch gives the same losses and gradient norms as one process, the saved model reloads
with the same outputs, and ZeRO checkpoints resume across world sizes (2 -> 1 and 1 -> 2). Five training runs in
all (each launch costs ~25 s of imports on 2 cores), shared by the tests through a module fixture."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_checkpoints import custom_train_args, make_custom_assets

from gemma3.train.train import reshard, zero_checkpoint_world_size
from gemma3.utils.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
ZERO2, ZERO3 = str(REPO / "scripts" / "zero2.json"), str(REPO / "scripts" / "zero3.json")
ENV = {"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "torch_extensions")}  # fmt: skip


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run(assets, out: Path, ranks: int, launcher: str = "torchrun", **extra) -> dict:
    """Train the tiny custom model (LoRA finetune, 3 steps of a global batch of 4); returns the log history."""
    llm, clip, vm, data = assets
    argv = custom_train_args(llm, clip, vm, data, out, stage="finetune", use_lora=True, optim="adamw_torch",
                             lora_dropout=0.0, max_grad_norm=1.0, per_device_train_batch_size=4 // ranks,
                             resume_from_checkpoint="auto", **extra)  # fmt: skip
    if ranks == 1:
        cmd = [sys.executable, "-m", "gemma3.train.train", *argv]
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _port(),
               "-m", "gemma3.train.train", *argv]  # fmt: skip
    else:
        cmd = ["deepspeed", "--num_gpus", "2", "--master_port", _port(), "--module", "gemma3.train.train", *argv]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {"log": proc.stdout + proc.stderr, "steps": [h for h in history if "loss" in h]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, gemma270m_dir):
    root = tmp_path_factory.mktemp("ranks")
    assets = make_custom_assets(root, gemma270m_dir)
    return SimpleNamespace(root=root, assets=assets, cache={})


def _get(runs, name: str, ranks: int, **kw) -> dict:
    if name not in runs.cache:
        runs.cache[name] = _run(runs.assets, runs.root / name, ranks, **kw)
    return runs.cache[name]


def _reference(runs) -> dict:
    """One process, batch 4, ZeRO-2, checkpoint at step 2 (also the 1 -> 2 resume source)."""
    return _get(runs, "one", 1, deepspeed=ZERO2, save_strategy="steps", save_steps=2)


def _same_curve(a: dict, b: dict) -> None:
    assert [s["step"] for s in a["steps"]] == [s["step"] for s in b["steps"]] == [1, 2, 3]
    for x, y in zip(a["steps"], b["steps"], strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4), (x, y)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-3), (x, y)


def _with_history(source: dict, resumed: dict) -> dict:
    """The resumed run's steps, with the source's first two when its state did not carry them."""
    steps = resumed["steps"]
    return {"steps": steps if steps[0]["step"] == 1 else source["steps"][:2] + steps}


def _same_model(a: Path, b: Path) -> None:
    from gemma3.model.builder import load_model

    ids = torch.tensor([[2, 105, 2364, 107, 3, 4, 5]])
    (ma, _), (mb, _) = load_model(a), load_model(b)
    with torch.no_grad():
        torch.testing.assert_close(ma(input_ids=ids).logits, mb(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "zero3"])
def test_two_ranks_match_one_process(runs, mode):
    ref = _reference(runs)
    if mode == "ddp":
        two = _get(runs, mode, 2, launcher="torchrun")
    else:
        two = _get(runs, mode, 2, launcher="deepspeed", deepspeed=ZERO3, save_strategy="steps", save_steps=2)
        assert "dist_world_size=2" in two["log"]
    _same_curve(ref, two)
    _same_model(runs.root / "one", runs.root / mode)  # ZeRO-3: gathered before saving, written by rank 0 only


@pytest.mark.slow
def test_zero2_on_two_ranks_resumes_a_one_rank_checkpoint(runs):
    """ZeRO-2 on 2 ranks (DeepSpeed launcher) continuing the 1-process run from its step-2 checkpoint: converted to
    the universal format, and step 3 and the saved model equal the uninterrupted 1-process run's."""
    _reference(runs)
    dst = runs.root / "one_to_two"
    shutil.copytree(runs.root / "one" / "checkpoint-2", dst / "checkpoint-2")
    resumed = _run(runs.assets, dst, 2, launcher="deepspeed", deepspeed=ZERO2)
    assert "dist_world_size=2" in resumed["log"] and "converting it to a universal checkpoint" in resumed["log"]
    _same_curve(_reference(runs), _with_history(runs.cache["one"], resumed))
    _same_model(runs.root / "one", dst)


@pytest.mark.slow
def test_zero3_checkpoint_of_two_ranks_resumes_on_one(runs):
    _get(runs, "zero3", 2, launcher="deepspeed", deepspeed=ZERO3, save_strategy="steps", save_steps=2)
    src = runs.root / "zero3"
    assert zero_checkpoint_world_size(src / "checkpoint-2") == 2
    dst = runs.root / "zero3_to_one"
    shutil.copytree(src / "checkpoint-2", dst / "checkpoint-2")
    resumed = _run(runs.assets, dst, 1, deepspeed=ZERO3)
    assert "converting it to a universal checkpoint" in resumed["log"]
    _same_curve(_reference(runs), _with_history(runs.cache["zero3"], resumed))


def test_a_zero_checkpoint_from_another_world_size_gets_one_clear_error(tmp_path):
    ckpt = tmp_path / "checkpoint-2"
    (ckpt / "global_step2").mkdir(parents=True)
    (ckpt / "latest").write_text("global_step2")
    for r in range(2):
        (ckpt / "global_step2" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"not a checkpoint")
    assert zero_checkpoint_world_size(ckpt) == 2
    args = SimpleNamespace(world_size=1, deepspeed=None, should_save=True)
    with pytest.raises(ValueError, match="written by DeepSpeed ZeRO on 2 ranks"):
        reshard(ckpt, args)
    args.deepspeed = ZERO2
    with pytest.raises(CheckpointError, match="(?s)written by 2 ranks, this run has 1.*Resume with 2 ranks"):
        reshard(ckpt, args)
    args.world_size = 2  # the same world size: nothing to do
    reshard(ckpt, args)
