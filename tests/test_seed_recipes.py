"""The seeds' recipes and usage code: each recipe in scripts/recipes/ states every value its seed gives (read from
the seed documents themselves, copied into tests/data/seeds/), the seed's own command line runs on its recipe,
and the seeds' loading code runs unchanged on the project's outputs (tiny models)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from gemma3.data.formats import MediaRoots, load_annotations
from gemma3.train.arguments import parse_args

REPO = Path(__file__).resolve().parents[1]
SEEDS = Path(__file__).parent / "data" / "seeds"
RECIPES = REPO / "scripts" / "recipes"


def _recipe(name: str) -> dict:
    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text())


def _table(text: str) -> dict[str, str]:
    """Rows ``| key | value |`` of a model card's tables."""
    return {m[1].strip(): m[2].strip() for m in re.finditer(r"^\|([^|]+)\|([^|]+)\|$", text, re.M)}


def _seed001() -> str:
    return (SEEDS / "001_gemma4_e4b_kinetic3k_lora.txt").read_text()


def seed001_command_flags() -> dict[str, str]:
    """``--flag value`` pairs of seed 001's training command (after ``stage1/train.py``)."""
    command = _seed001().split("stage1/train.py", 1)[1].split("```", 1)[0]
    return dict(re.findall(r"--(\w+) (\S+)", command))


def _same(recipe_value, seed_value: str) -> bool:
    if isinstance(recipe_value, bool):
        return recipe_value == (seed_value.lower() == "true")
    if isinstance(recipe_value, (int, float)):
        return math.isclose(float(recipe_value), float(seed_value))
    return str(recipe_value) == seed_value


def test_recipe1_states_seed000s_table():
    t = _table((SEEDS / "000_gemma3_4b_kinetic3k.txt").read_text())
    r = _recipe("gemma3_4b_vision_alignment")
    assert r["model_id"] == t["Base model"] == "google/gemma-3-4b-it"
    assert r["num_train_epochs"] == int(t["Epochs"])
    assert r["per_device_train_batch_size"] == int(t["Per-device batch size"])
    assert r["gradient_accumulation_steps"] == int(t["Gradient accumulation"].split()[0])
    samples = int(t["Samples"].split()[0].replace(",", ""))
    steps = r["num_train_epochs"] * math.ceil(
        samples / (r["per_device_train_batch_size"] * r["gradient_accumulation_steps"])
    )
    assert steps == int(t["Total steps"])  # 3,115 samples / 8 -> 390 optimizer steps
    assert r["learning_rate"] == float(t["LLM learning rate"])
    assert r["projector_lr"] == float(t["Projector learning rate"])
    assert t["Vision encoder learning rate"].startswith("0.0") and r["image_encoder_lr"] == 0.0
    assert r["freeze_vision_tower"] is True and r["freeze_language_model"] is True  # the table's reading (see YAML)
    assert "Vision tower" in t["Trainable components"]  # the contradiction the recipe's comment resolves
    assert "says" in (RECIPES / "gemma3_4b_vision_alignment.yaml").read_text().split("model_family")[0]
    assert r["lr_scheduler_type"] == t["LR scheduler"].lower() and r["warmup_ratio"] == float(t["Warmup ratio"])
    assert r["optim"] == t["Optimizer"] and t["Precision"] == "bfloat16" and r["bf16"] is True
    assert r["max_length"] == int(t["Max sequence length"]) and t["Gradient checkpointing"] == "Yes"
    assert r["gradient_checkpointing"] is True
    assert t["Parallelism"] == "DeepSpeed ZeRO Stage 2"
    assert json.loads((REPO / r["deepspeed"]).read_text())["zero_optimization"]["stage"] == 2


def test_recipe2_states_seed001s_command_and_setup():
    flags = seed001_command_flags()
    r = _recipe("gemma4_e4b_lora")
    paths = {"deepspeed", "data_path", "image_folder", "output_dir", "run_name"}  # the user's own files
    compared = {k: v for k, v in flags.items() if k not in paths}
    assert len(compared) >= 20
    differ = {k: (r.get(k), v) for k, v in compared.items() if k not in r or not _same(r[k], v)}
    assert differ == {}
    text = _seed001()
    assert r["lora_dropout"] == float(re.search(r"`lora_dropout=([\d.]+)`", text)[1])
    targets = re.search(r"Target modules: ((?:`\w+`(?:, )?)+)", text)[1]
    assert r["lora_target_modules"].split(",") == re.findall(r"`(\w+)`", targets)
    assert re.search(r"Total training steps: `(\d+)`", text)[1] == "1170"
    # the seed's DeepSpeed config, as the recipe's file holds it
    seed_ds = json.loads(re.search(r"DeepSpeed config: ```json (\{.*?\}) ```", text, re.S)[1])
    ours = json.loads((REPO / r["deepspeed"]).read_text())
    for key in ("stage", "overlap_comm", "contiguous_gradients", "reduce_bucket_size"):
        assert ours["zero_optimization"][key] == seed_ds["zero_optimization"][key], key
    assert seed_ds["gradient_clipping"] == 1.0 and ours["gradient_clipping"] == "auto"  # = max_grad_norm, 1.0


def test_recipe3_states_seed002s_values():
    text = (SEEDS / "002_gemma4_qlora_pets.txt").read_text()
    r = _recipe("gemma4_qlora_pets")
    rank, alpha = map(int, re.search(r"Rank (\d+) / Alpha (\d+)", text).groups())
    assert (r["lora_r"], r["lora_alpha"]) == (rank, alpha)
    assert r["learning_rate"] == float(re.search(r"with a ([\de.-]+) learning rate", text)[1])
    assert r["lora_target_modules"] == re.search(r'target_modules="([\w-]+)"', text)[1]
    assert r["per_device_train_batch_size"] == int(re.search(r"per_device_train_batch_size=(\d+)", text)[1])
    assert r["gradient_accumulation_steps"] == int(re.search(r"gradient_accumulation_steps=(\d+)", text)[1])
    assert "4-bit QLoRA" in text and r["bits"] == 4 and r["gradient_checkpointing"] is True
    assert r["lora_include_vision"] is True  # "Ensure LoRA targets span both language and vision towers"
    # what the seed leaves open is stated, never left to a default the reader has to look up
    for key in ("optim", "num_train_epochs", "lr_scheduler_type", "warmup_ratio", "bf16", "save_steps",
                "dataloader_num_workers", "lora_dropout", "max_length"):  # fmt: skip
        assert key in r, key
    assert "deepspeed" not in r and "no DeepSpeed" in (RECIPES / "gemma4_qlora_pets.yaml").read_text()


def _frame_records(folder: Path, n: int = 4) -> Path:
    """Seed 001's records: 4 frames per clip as images in the user turn, ``frames//frame_k.jpg`` under the clip."""
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        clip = folder / f"clip{i}" / "frames"
        clip.mkdir(parents=True)
        for k in range(1, 5):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(clip / f"frame_{k}.jpg")
        content = [{"type": "image", "image": f"clip{i}/frames//frame_{k}.jpg"} for k in range(1, 5)]
        content.append({"type": "text", "text": "Please analyze the sequence of frames from this video. What "
                                                "specific action or event is happening?"})  # fmt: skip
        reply = {"role": "assistant", "content": [{"type": "text", "text": "abseiling"}]}
        recs.append({"messages": [{"role": "user", "content": content}, reply]})
    path = folder / "kinetic_3K.json"
    path.write_text(json.dumps(recs))
    return path


def test_flags_win_over_the_recipe_and_frames_resolve_against_image_folder(tmp_path):
    data = _frame_records(tmp_path / "kinetics_3k")
    argv = ["--config", str(RECIPES / "gemma4_e4b_lora.yaml"), "--data_path", str(data), "--image_folder",
            str(data.parent), "--gradient_accumulation_steps", "2", "--output_dir", str(tmp_path / "o"), "--bf16",
            "False"]  # fmt: skip
    model_args, data_args, train_args = parse_args(argv)
    assert data_args.video_folder == "data/qevd"  # the recipe's, kept for videos
    assert (data_args.image_folder, data_args.data_path) == (str(data.parent), str(data))
    assert train_args.gradient_accumulation_steps == 2 and train_args.per_device_train_batch_size == 1
    assert model_args.lora_r == 16 and train_args.optim == "paged_adamw_8bit"
    roots = MediaRoots(image=data_args.image_folder, video=data_args.video_folder)
    [first, *_] = load_annotations(data, roots)
    assert first.media[0].kind == "video" and len(first.media[0].path) == 4
    assert all(Path(p).exists() for p in first.media[0].path)  # under --image_folder, not data/qevd
    video = tmp_path / "v.json"
    video.write_text(json.dumps([{"video": "a.mp4", "conversations": [{"from": "human", "value": "<video>\nx"},
                                                                      {"from": "gpt", "value": "y"}]}]))  # fmt: skip
    assert load_annotations(video, roots)[0].media[0].path == str(Path("data/qevd") / "a.mp4")
    assert load_annotations(video, MediaRoots(image=str(tmp_path)))[0].media[0].path == str(tmp_path / "a.mp4")


@pytest.mark.slow
def test_seed001_command_line_trains_on_recipe2_and_its_usage_code_loads_the_adapter(tmp_path, gemma270m_dir):
    """The seed's training command (paths and model swapped for tiny local ones; CPU: no bf16, one step, no
    loader workers) with ``--config`` recipe 2, DeepSpeed ZeRO-2 included; then the seed's usage code."""
    import torch
    from peft import PeftModel
    from tiny_native import make_native
    from transformers import AutoProcessor, Gemma4ForConditionalGeneration

    base = make_native(tmp_path, gemma270m_dir, "gemma4")
    data = _frame_records(tmp_path / "kinetics_3k")
    out = tmp_path / "gemma4_e4b_lora_only"
    flags = {**seed001_command_flags(), "model_id": str(base), "data_path": str(data),
             "image_folder": str(data.parent), "output_dir": str(out), "deepspeed": "scripts/zero2.json",
             "bf16": "False", "dataloader_num_workers": "0"}  # fmt: skip
    argv = ["--config", str(RECIPES / "gemma4_e4b_lora.yaml")]
    for k, v in flags.items():
        argv += [f"--{k}", v]
    argv += ["--use_cpu", "True", "--max_steps", "1", "--gradient_accumulation_steps", "2"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "gemma3.train.train", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "0 of 4 samples skipped as bad" in log, log[-4000:]
    hp = json.loads((out / "hyperparameters.json").read_text())
    assert hp["training"]["optim"] == "paged_adamw_8bit" and hp["training"]["deepspeed"] == "scripts/zero2.json"
    assert hp["training"]["per_device_train_batch_size"] == 1 and hp["model"]["lora_r"] == 16

    # seed 001's usage code, unchanged but for the ids
    base_model = Gemma4ForConditionalGeneration.from_pretrained(str(base), torch_dtype="auto", device_map="auto")
    model = PeftModel.from_pretrained(base_model, str(out))
    processor = AutoProcessor.from_pretrained(str(base))
    record = json.loads(data.read_text())[0]
    user = record["messages"][0]
    content = [dict(c, image=str(data.parent / c["image"])) if c["type"] == "image" else c for c in user["content"]]
    inputs = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                           tokenize=True, return_dict=True, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        new = model.generate(**inputs, max_new_tokens=3, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert 1 <= len(new) <= 3
    assert int((inputs["input_ids"] == processor.tokenizer.image_token_id).sum()) > 0  # the 4 frames went in
