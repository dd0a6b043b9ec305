"""Native Gemma 3 / 3n / 4 VLMs: processor-based data plugin, recipes (2 CPU training steps each), LoRA targets,
adapter reload, and batched generation through gemma3.serve.inference, on tiny models of each family."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from media_utils import write_json, write_video
from tiny_native import NATIVE_FAMILIES, make_native
from transformers import AutoModelForImageTextToText, AutoProcessor

import gemma3.serve.inference as inf
from gemma3.constants import IGNORE_INDEX
from gemma3.data.formats import Media, Sample, load_annotations
from gemma3.data.plugins import NativeVLMPlugin
from gemma3.model import families
from gemma3.train import train as T
from gemma3.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "scripts" / "recipes"
CLASSES = ["moving left", "moving right"]


@pytest.fixture(scope="module")
def root(tmp_path_factory, gemma270m_dir):
    """Tiny checkpoints of the three families, a 2-frame video dataset and a single-image dataset."""
    base = tmp_path_factory.mktemp("native")
    for fam in NATIVE_FAMILIES:
        make_native(base, gemma270m_dir, fam)
    rng = np.random.default_rng(0)
    recs = []
    for i in range(4):
        write_video(base / "videos" / f"v{i}.mp4", rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8))
        recs.append(
            {
                "id": f"v{i}",
                "video": f"videos/v{i}.mp4",
                "conversations": [
                    {"from": "human", "value": "<video>\nWhat is happening?"},
                    {"from": "gpt", "value": CLASSES[i % 2]},
                ],
            }
        )
    write_json(base / "videos.json", recs)
    from PIL import Image

    pets = []
    for i, breed in enumerate(["Abyssinian", "Beagle", "Abyssinian", "Beagle"]):
        (base / "images").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(base / "images" / f"p{i}.png")
        pets.append(
            {
                "id": f"p{i}",
                "image": f"images/p{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhich pet breed is this?"},
                    {"from": "gpt", "value": breed},
                ],
            }
        )
    write_json(base / "pets.json", pets)
    return base


def _plugin(root, family, **kw):
    proc = AutoProcessor.from_pretrained(root / f"tiny-native-{family}")
    return proc, NativeVLMPlugin(proc, families.get_family(family).template(), family, **kw)


# ---------------------------------------------------------------- data plugin


@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_plugin_ids_match_processor_and_labels_cover_only_replies(root, family):
    proc, plugin = _plugin(root, family, num_frames=2)
    sample = Sample(
        "s",
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "<video>\nWhat is happening?"},
            {"role": "assistant", "content": "moving left"},
            {"role": "user", "content": "And then?"},
            {"role": "assistant", "content": "it stops"},
        ],
        (Media("video", str(root / "videos" / "v0.mp4")),),
    )
    enc = plugin.encode(sample)
    ids, labels = enc["input_ids"].tolist(), enc["labels"].tolist()

    # The same ids as the processor's own chat path, with the two frames given as images before the text.
    frames = plugin.load_media(sample.media[0])
    messages = NativeVLMPlugin.hf_messages(sample.messages, 2)
    ref = proc.apply_chat_template(messages, tokenize=False)
    ref_enc = proc(text=[ref], images=[frames], return_tensors="pt", add_special_tokens=False)
    assert ids == ref_enc["input_ids"][0].tolist()
    assert messages[1]["content"][0] == {"type": "image"} and messages[1]["content"][1]["type"] == "image"
    torch.testing.assert_close(enc["pixel_values"], ref_enc["pixel_values"])

    # Image soft tokens: all of them, before the question text, none supervised.
    image_id = plugin.image_token_id
    n_soft = ids.count(image_id)
    assert n_soft >= 2 * 4 and n_soft % 2 == 0  # two frames, the same number of soft tokens each
    q = proc.tokenizer("What", add_special_tokens=False)["input_ids"][0]
    assert max(i for i, t in enumerate(ids) if t == image_id) < ids.index(q)
    supervised = [t for t in labels if t != IGNORE_INDEX]
    end = "<turn|>" if family == "gemma4" else "<end_of_turn>"
    assert proc.tokenizer.decode(supervised) == f"moving left{end}it stops{end}"
    # Per-token type ids mark exactly the image tokens (the models need them for their image attention).
    key = "mm_token_type_ids" if family == "gemma4" else "token_type_ids"
    assert enc[key].tolist() == [1 if t == image_id else 0 for t in ids]

    prompt = plugin.encode(Sample("p", sample.messages[:2], sample.media), add_generation_prompt=True)
    assert (prompt["labels"] == IGNORE_INDEX).all()
    assert prompt["input_ids"][-len(plugin.header_ids) :].tolist() == plugin.header_ids


def test_collate_pads_left_for_generation_and_keeps_images(root):
    _, plugin = _plugin(root, "gemma3", num_frames=2)
    a = plugin.encode(
        Sample(
            "a", [{"role": "user", "content": "<video>\nWhat?"}], (Media("video", str(root / "videos" / "v0.mp4")),)
        ),
        add_generation_prompt=True,
    )
    b = plugin.encode(
        Sample("b", [{"role": "user", "content": "Say something longer here please."}]), add_generation_prompt=True
    )
    batch = plugin.collate([a, b], padding_side="left")
    L = max(len(a["input_ids"]), len(b["input_ids"]))
    assert batch["input_ids"].shape == batch["token_type_ids"].shape == (2, L)
    assert batch["pixel_values"].shape[0] == 2  # the two frames of the one video
    short = 1 if len(b["input_ids"]) < L else 0
    assert batch["attention_mask"][short, 0] == 0 and batch["attention_mask"][short, -1] == 1


def test_frame_budget_is_refused_with_the_length_needed(root):
    proc, plugin = _plugin(root, "gemma3n", num_frames=2)
    assert plugin.per_frame >= 256 + 2  # 256 soft tokens + begin / end of image
    with pytest.raises(ValueError, match=rf"--max_length >= {8 * plugin.per_frame + 32}"):
        NativeVLMPlugin(proc, families.get_family("gemma3n").template(), "gemma3n", num_frames=8, max_length=1024)
    tight = NativeVLMPlugin(
        proc, families.get_family("gemma3n").template(), "gemma3n", num_frames=2, max_length=2 * plugin.per_frame + 32
    )
    long_text = "word " * 200
    sample = Sample(
        "x",
        [{"role": "user", "content": "<video>\n" + long_text}, {"role": "assistant", "content": "ok"}],
        (Media("video", str(root / "videos" / "v0.mp4")),),
        "f.json:3",
    )
    with pytest.raises(ValueError, match=r"f.json:3 \(id x\).*exceed max_length"):
        tight.encode(sample)


def test_family_and_components(root):
    cfg = AutoModelForImageTextToText.from_pretrained(root / "tiny-native-gemma3n").config
    fam = families.family_for_config(cfg)
    assert fam.name == "gemma3n" and fam.kind == "native"
    comp = fam.component_fn()
    assert comp("model.vision_tower.timm_model.conv_stem.weight") == "image_encoder"
    assert comp("base_model.model.model.embed_vision.embedding_projection.weight") == "projector"
    assert comp("model.audio_tower.conformer.0.ffw_layer_start.ffw_layer_1.weight") == "audio"
    assert comp("model.language_model.layers.0.self_attn.q_proj.weight") == "language_model"
    with pytest.raises(ValueError, match="'llama' is not supported"):
        families.family_for_config(type("C", (), {"model_type": "llama"})())


# ---------------------------------------------------------------- recipes


def _recipe_argv(root: Path, recipe: str, family: str, data: str, out: Path, **over) -> list[str]:
    """The recipe's YAML with CPU-test overrides: tiny model, tiny data, 2 steps, fp32."""
    media = "image_folder" if data == "pets.json" else "video_folder"
    flags = {
        "model_id": root / f"tiny-native-{family}",
        "data_path": root / data,
        media: root,
        "output_dir": out,
        "max_steps": 2,
        "bf16": False,
        "use_cpu": True,
        "report_to": "none",
        "logging_steps": 1,
        "dataloader_num_workers": 0,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "seed": 0,
        "deepspeed": "none",  # in-process runs; recipe 1's test runs DeepSpeed in a subprocess
        **over,
    }
    argv = ["--config", str(RECIPES / f"{recipe}.yaml")]
    for k, v in flags.items():
        argv += [f"--{k}", str(v)]
    return argv


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k.removeprefix("base_model.model."): v.detach().clone() for k, v in model.state_dict().items()}


def test_recipe_files_hold_the_documented_settings():
    r1 = yaml.safe_load((RECIPES / "gemma3_4b_vision_alignment.yaml").read_text())
    assert r1["model_id"] == "google/gemma-3-4b-it" and r1["freeze_language_model"] is True
    assert r1["deepspeed"] == "scripts/zero2.json" and r1["optim"] == "paged_adamw_8bit"
    assert (r1["lr_scheduler_type"], r1["bf16"], r1["gradient_checkpointing"], r1["max_length"]) == (
        "cosine",
        True,
        True,
        4096,
    )
    assert r1["image_encoder_lr"] == 0 and r1["projector_lr"] == 2e-5 and r1["freeze_vision_tower"] is True
    r2 = yaml.safe_load((RECIPES / "gemma4_e4b_lora.yaml").read_text())
    assert r2["model_id"] == "google/gemma-4-e4b-it" and r2["num_frames"] == 4 and r2["num_train_epochs"] == 3
    assert (r2["lora_r"], r2["lora_alpha"], r2["lora_dropout"]) == (16, 32, 0.05)
    assert r2["lora_target_modules"].split(",") == [f"{m}_proj" for m in "q k v o gate up down".split()]
    assert (r2["save_steps"], r2["save_total_limit"], r2["image_encoder_lr"], r2["projector_lr"]) == (200, 2, 0, 0)
    r3 = yaml.safe_load((RECIPES / "gemma4_qlora_pets.yaml").read_text())
    assert (r3["bits"], r3["lora_r"], r3["lora_alpha"], r3["learning_rate"]) == (4, 64, 64, 5e-5)
    assert r3["lora_target_modules"] == "all-linear" and r3["lora_include_vision"] is True
    assert (r3["per_device_train_batch_size"], r3["gradient_accumulation_steps"]) == (2, 4)


def test_recipe1_vision_alignment_zero2_trains_the_projector_only(root, tmp_path):
    out = tmp_path / "align"
    argv = _recipe_argv(root, "gemma3_4b_vision_alignment", "gemma3", "videos.json", out, save_strategy="no",
                        deepspeed="scripts/zero2.json")  # fmt: skip
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "gemma3.train.train", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "zero_optimization" in log or "ZeRO" in log, log[-3000:]
    assert "projector/" in log and "lr=2.00e-05" in log  # seed 000's projector learning rate
    assert "language_model/" not in log and "image_encoder/" not in log  # no optimizer group for frozen parts
    hp = json.loads((out / "hyperparameters.json").read_text())
    assert hp["training"]["deepspeed"] == "scripts/zero2.json"
    assert hp["training"]["optim"] == "paged_adamw_8bit" and hp["training"]["gradient_checkpointing"] is True
    assert hp["components"]["language_model"] is False and hp["components"]["image_encoder"] is False
    before = _weights(AutoModelForImageTextToText.from_pretrained(root / "tiny-native-gemma3"))
    after = _weights(AutoModelForImageTextToText.from_pretrained(out))
    fam = families.get_family("gemma3")
    changed = {fam.component(k) for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"projector"}

    # seed 000's usage code on the output folder, then a 4-frame question in the seed's message format
    from transformers import Gemma3ForConditionalGeneration

    model = Gemma3ForConditionalGeneration.from_pretrained(str(out), torch_dtype=torch.bfloat16, device_map="auto")
    processor = AutoProcessor.from_pretrained(str(out))
    frames = [str(p) for p in _frames(tmp_path / "frames", 4)]
    content = [{"type": "image", "image": f} for f in frames] + [
        {"type": "text", "text": "What is the main action in this video?"}
    ]
    inputs = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                           tokenize=True, return_dict=True, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        reply = model.generate(**inputs.to(torch.bfloat16), max_new_tokens=3, do_sample=False)
    assert reply.shape[1] > inputs["input_ids"].shape[1] and model.dtype == torch.bfloat16


def _frames(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = [folder / f"frame_{k}.jpg" for k in range(1, n + 1)]
    for p in paths:
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
    return paths


def test_recipe2_gemma4_lora_adapter_only_with_rotation_and_peft_reload(root, tmp_path):
    from peft import PeftModel

    out = tmp_path / "lora"
    argv = _recipe_argv(root, "gemma4_e4b_lora", "gemma4", "videos.json", out, max_steps=3, save_steps=1)
    base_dir = root / "tiny-native-gemma4"
    before = _weights(AutoModelForImageTextToText.from_pretrained(base_dir))
    res = T.main(argv)
    model = res["model"]
    lora = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    fam = families.get_family("gemma4")
    assert lora and all(fam.component(n) == "language_model" for n in lora)
    leaves = {n.split(".")[-2] for n in lora}
    assert leaves == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(lora) == 7 * 2  # every text layer (2 in the tiny model)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    # Adapter-only output; the last two checkpoints kept.
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert not (out / "model.safetensors").exists() and not (out / "non_lora_trainables.safetensors").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    # Frozen parts did not move; the adapter reloads with PeftModel.from_pretrained and gives the same logits.
    after = _weights(model.get_base_model())
    for k in before:
        if fam.component(k) != "language_model":
            assert torch.equal(before[k], after[k].to(before[k].dtype)), k
    reloaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base_dir), out).eval()
    proc, plugin = _plugin(root, "gemma4", num_frames=4)
    sample = load_annotations(root / "videos.json")[0]
    batch = plugin.collate([plugin.encode(sample)])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model.eval()(**batch).logits, rtol=1e-4, atol=1e-4)


def test_recipe3_qlora_needs_cuda_and_adapts_clipped_vision_linears(root, tmp_path):
    argv = _recipe_argv(root, "gemma4_qlora_pets", "gemma4", "pets.json", tmp_path / "q")
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        T.main(argv)
    # The same recipe without 4-bit kernels (CPU): all-linear on text + vision, 2 steps.
    res = T.main([*argv, "--bits", "16"])
    model = res["model"]
    from transformers.models.gemma4.modeling_gemma4 import Gemma4ClippableLinear

    fam = families.get_family("gemma4")
    lora = [n.removesuffix(".lora_A") for n, _ in model.named_modules() if n.endswith("lora_A")]
    comps = {fam.component(n) for n in lora}
    assert comps == {"language_model", "image_encoder", "projector"}
    # Every clipped vision linear is adapted inside its wrapper, which stays in place with its clipping bounds.
    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, Gemma4ClippableLinear)}
    assert wrappers and all(hasattr(m, "input_min") for m in wrappers.values())
    assert all(f"{n}.linear" in lora for n in wrappers) and not set(wrappers) & set(lora)
    assert not any("lm_head" in n or "audio" in n for n in lora)
    assert len(res["losses"]) == 2 and all(math.isfinite(v) for v in res["losses"])
    hp = json.loads((tmp_path / "q" / "hyperparameters.json").read_text())
    assert hp["model"]["lora_r"] == 64 and hp["training"]["learning_rate"] == 5e-5

    # seed 002's loading code (AutoModelForMultimodalLM) with the adapter, then its 1-image prompt, image first
    from peft import PeftModel
    from transformers import AutoModelForMultimodalLM

    base = AutoModelForMultimodalLM.from_pretrained(str(root / "tiny-native-gemma4"))
    tuned = PeftModel.from_pretrained(base, str(tmp_path / "q")).eval()
    processor = AutoProcessor.from_pretrained(str(root / "tiny-native-gemma4"))
    [image] = _frames(tmp_path / "pet", 1)
    text = "Which pet breed is this?\n\nIdentify the breed of the animal in this image."
    messages = [{"role": "user", "content": [{"type": "image", "image": str(image)}, {"type": "text", "text": text}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        reply = tuned.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert reply.shape[1] > inputs["input_ids"].shape[1]


def test_gemma3n_lora_finetune_two_steps(root, tmp_path):
    out = tmp_path / "g3n"
    res = T.main(
        _recipe_argv(
            root,
            "gemma4_e4b_lora",
            "gemma3n",
            "videos.json",
            out,
            num_frames=2,
            save_strategy="no",
            gradient_checkpointing=False,
        )
    )
    lora = [n for n, _ in res["model"].named_modules() if n.endswith("lora_A")]
    assert lora and not any(s in n for n in lora for s in ("altup", "laurel", "per_layer", "vision", "audio"))
    assert len(res["losses"]) == 2 and (out / "adapter_model.safetensors").exists()


# ---------------------------------------------------------------- inference


@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_batched_generation_matches_one_by_one(root, tmp_path, family):
    model_dir = root / f"tiny-native-{family}"
    common = [
        "--model_path",
        str(model_dir),
        "--annotations",
        str(root / "videos.json"),
        "--num_frames",
        "2",
        "--max_new_tokens",
        "4",
        "--device",
        "cpu",
    ]
    inf.main([*common, "--output", str(tmp_path / "b4.jsonl"), "--batch_size", "4"])
    inf.main([*common, "--output", str(tmp_path / "b1.jsonl"), "--batch_size", "1"])
    b4 = [json.loads(x) for x in (tmp_path / "b4.jsonl").read_text().splitlines()]
    b1 = [json.loads(x) for x in (tmp_path / "b1.jsonl").read_text().splitlines()]
    assert [r["id"] for r in b4] == ["v0", "v1", "v2", "v3"] and all("error" not in r for r in b4)
    assert [r["prediction"] for r in b4] == [r["prediction"] for r in b1]
    assert [r["reference"] for r in b4] == [CLASSES[i % 2] for i in range(4)]
    assert all(r["new_tokens"] > 0 for r in b4)


def test_inference_from_a_trained_adapter_and_loglikelihood(root, tmp_path):
    out = tmp_path / "adapter"
    T.main(_recipe_argv(root, "gemma4_e4b_lora", "gemma3", "videos.json", out, num_frames=2, save_strategy="no"))
    predictor = inf.load_predictor(str(out), generation=inf.GenerationConfig(max_new_tokens=3), weights="fp32")
    assert hasattr(predictor.model, "peft_config")  # the adapter as trained (--weights fp32 keeps it unmerged)
    # The frame count it was trained with travels with the output (the native default would be 8).
    assert predictor.plugin.num_frames == 2 and predictor.processing.family == "gemma3"
    samples = load_annotations(root / "videos.json")
    stats = inf.predict(predictor, samples[:2], tmp_path / "p.jsonl", batch_size=2, progress=False)
    assert stats["done"] == 2 and stats["errors"] == 0
    scores = predictor.rank_candidates(samples[0], CLASSES)
    assert len(scores) == 2 and all(s < 0 for s in scores)
    # The score of a reply is the sum of its tokens' log-probabilities under the model.
    [(ll, _)] = predictor.loglikelihood([samples[0]])
    assert ll == pytest.approx(scores[0], rel=1e-4)
    # The CPU default merges the adapter into the weights (for the fp16 decoding copies): the same model.
    merged = inf.load_predictor(str(out), generation=inf.GenerationConfig(max_new_tokens=3))
    assert not hasattr(merged.model, "peft_config") and merged.decoder.linears
    assert merged.loglikelihood([samples[0]])[0][0] == pytest.approx(ll, rel=1e-4)


def test_processing_saved_with_the_model_is_read_back_and_overridable(root, tmp_path, caplog):
    import shutil

    from gemma3.data.processing import PROCESSING_FILE, ProcessingConfig

    out = tmp_path / "full"
    T.main(
        _recipe_argv(
            root, "gemma4_e4b_lora", "gemma3", "videos.json", out, use_lora=False, freeze_language_model=True,
            projector_lr=1e-4, num_frames=3, frame_sampling="fps", fps=2.0, save_strategy="no", max_steps=1,
        )
    )  # fmt: skip
    saved = ProcessingConfig.from_pretrained(out)
    assert (saved.num_frames, saved.frame_sampling, saved.fps, saved.chat_template) == (3, "fps", 2.0, "gemma")
    assert saved.image_size == 32 and saved.image_mean is not None
    p = inf.load_predictor(out)
    assert (p.plugin.num_frames, p.plugin.sampling, p.plugin.fps) == (3, "fps", 2.0)
    with caplog.at_level("INFO", logger="gemma3.data.processing"):
        p = inf.load_predictor(out, num_frames=2)
    assert p.plugin.num_frames == 2 and "num_frames=2 overrides the model's 3" in caplog.text
    # A folder saved before processing was recorded: the family default, with a warning.
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / PROCESSING_FILE).unlink()
    caplog.clear()
    with caplog.at_level("WARNING", logger="gemma3.data.processing"):
        p = inf.load_predictor(old)
    assert p.plugin.num_frames == 8 and f"has no {PROCESSING_FILE}" in caplog.text
    (old / PROCESSING_FILE).write_text('{"family": "gemma3", "num_frames": 0}')
    with pytest.raises(ValueError, match=f"{PROCESSING_FILE}: num_frames must be >= 1"):
        inf.load_predictor(old)


def test_evaluate_script_runs_a_native_model_on_image_classification(root, tmp_path):
    from gemma3.evaluation import evaluate as E

    classes = tmp_path / "classes.txt"
    classes.write_text("Abyssinian\nBeagle\n")
    res = E.main(
        [
            "--benchmark", "image_classification",
            "--model_path", str(root / "tiny-native-gemma4"),
            "--annotations", str(root / "pets.json"),
            "--classes", str(classes),
            "--output_dir", str(tmp_path / "ev"),
            "--batch_size", "2",
            "--num_frames", "1",
        ]
    )  # fmt: skip
    preds = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert [p["reference"] for p in preds] == ["Abyssinian", "Beagle", "Abyssinian", "Beagle"]
    hits = sum(p["prediction"].strip().lower() == p["reference"].lower() for p in preds)
    assert res["top1_accuracy"] == pytest.approx(hits / 4) and res["num_samples"] == 4
    assert (tmp_path / "ev" / "metrics.json").exists()


def test_lmms_eval_plugin_on_a_native_model(root):
    from lmms_eval.api.instance import Instance, unwrap_generation_output

    from gemma3.evaluation.lmms_eval_plugin import VideoGemmaLMMS

    docs = {"t": {"test": [{"video": str(root / "videos" / f"v{i}.mp4")} for i in range(2)]}}
    plugin = VideoGemmaLMMS(pretrained=str(root / "tiny-native-gemma4"), batch_size="2", num_frames="2")
    plugin.task_dict = docs
    assert plugin.predictor.plugin.num_frames == 2
    to_visual = lambda doc: [doc["video"]]  # noqa: E731
    meta = {"task": "t", "doc_id": 0, "repeats": 1, "split": "test"}
    gen = [
        Instance("generate_until", ("What is happening?", {"until": ["\n\n"], "max_new_tokens": 3}, to_visual, i,
                 "t", "test"), i, {**meta, "doc_id": i})
        for i in range(2)
    ]  # fmt: skip
    texts = plugin.generate_until(gen)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    reqs = [
        Instance("loglikelihood", ("What is happening?", f" {c}", to_visual, 0, "t", "test"), k, meta)
        for k, c in enumerate(CLASSES)
    ]
    nll = [unwrap_generation_output(r)[0][0] for r in plugin.loglikelihood(reqs)]
    sample = Sample(
        "x",
        [{"role": "user", "content": "<video>\nWhat is happening?"}],
        (Media("video", docs["t"]["test"][0]["video"]),),
    )
    assert [-v for v in nll] == pytest.approx(plugin.predictor.rank_candidates(sample, CLASSES), rel=1e-5)
