"""`python -m gemma3.export --to hf`: native adapters merged into the stock class (and checked against Megatron
Bridge's Gemma 3 VL mapping), custom outputs as a standalone causal LM + encoders that reload to the same model."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_checkpoints import custom_train_args, make_custom_assets
from tiny_native import make_native

from gemma3.export import MEGATRON_GEOMETRY, export, main, megatron_bridge_problems


@pytest.fixture(scope="module")
def native_adapter(tmp_path_factory, gemma270m_dir):
    """A LoRA adapter output of the tiny Gemma 3 VLM (non-zero B, so merging changes the weights)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    root = tmp_path_factory.mktemp("export_native")
    base = make_native(root, gemma270m_dir, "gemma3")
    model = AutoModelForImageTextToText.from_pretrained(base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"], init_lora_weights=False)
    peft = get_peft_model(model, lora)
    out = root / "adapter"
    peft.save_pretrained(out)  # as a training output: adapter, config and processor
    model.config.save_pretrained(out)
    AutoProcessor.from_pretrained(base).save_pretrained(out)
    return out, peft.eval()


def test_native_adapter_merges_into_the_stock_class_in_bf16(native_adapter, tmp_path):
    from transformers import AutoModelForImageTextToText

    out, adapter_model = native_adapter
    info = export(out, "hf", tmp_path / "hf")
    assert info["class"] == "Gemma3ForConditionalGeneration"
    merged, loading = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([[2, 105, 2364, 107, 9259, 236764, 1010, 106]])
    with torch.no_grad():
        want = adapter_model(input_ids=ids).logits
        got = merged.float()(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)  # bf16 weights
    assert (tmp_path / "hf" / "tokenizer.json").exists() and (tmp_path / "hf" / "chat_template.jinja").exists()


def test_megatron_bridge_names_and_geometry(native_adapter, tmp_path):
    out, _ = native_adapter
    export(out, "hf", tmp_path / "hf")
    from gemma3.export import _weight_names

    names = _weight_names(tmp_path / "hf")  # the checkpoint layout, as Google's Gemma 3 releases name it
    assert any(n.startswith("language_model.model.layers.0.") for n in names)
    # transformers writes the flat vision_tower.* names; the bridge maps "vision_tower.**" (or, when present,
    # "vision_tower.vision_model.**") one to one.
    assert any(n.startswith("vision_tower.encoder.layers.0.") for n in names) and "lm_head.weight" not in names
    problems = megatron_bridge_problems(tmp_path / "hf")
    # The weight names and config keys are what the bridge reads; only the tiny model's geometry is not.
    assert len(problems) == len(MEGATRON_GEOMETRY) and all("assumes" in p for p in problems), problems
    with pytest.raises(ValueError, match="896"):
        export(out, "hf", tmp_path / "mb", for_megatron=True)
    # A folder in the transformers >= 4.52 naming (model.language_model.*) is reported, not silently accepted.
    from safetensors.torch import load_file, save_file

    f = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(f))
    save_file({k.replace("language_model.model.", "model.language_model.", 1): v for k, v in state.items()}, str(f))
    assert any("language_model.model.layers.*.self_attn.q_proj.weight" in p for p in megatron_bridge_problems(f.parent))
    from gemma3.export import to_megatron_names

    assert to_megatron_names(f.parent) > 0  # renamed back to the checkpoint layout
    assert len(megatron_bridge_problems(f.parent)) == len(MEGATRON_GEOMETRY)


def test_custom_output_exports_to_a_causal_lm_and_encoders_that_reload(tmp_path, gemma270m_dir):
    from transformers import AutoModelForCausalLM

    from gemma3.model.builder import load_model
    from gemma3.train import train as T

    llm, clip, vm, data = make_custom_assets(tmp_path, gemma270m_dir)
    out = tmp_path / "out"
    T.main(custom_train_args(llm, clip, vm, data, out, stage="finetune", use_lora=True, max_steps=2))
    assert main(["--model_path", str(out), "--to", "hf", "--output", str(tmp_path / "hf"), "--dtype", "float32"]) == 0
    manifest = json.loads((tmp_path / "hf" / "export_manifest.json").read_text())
    assert manifest["language_model"] == "language_model" and manifest["family"] == "video_gemma"
    trained, _ = load_model(out)
    exported, _ = load_model(tmp_path / "hf")
    assert not any("lora_" in n for n, _ in exported.named_parameters())
    ids = torch.tensor([[2, 105, 2364, 107, 9259, 106]])
    video = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(exported.get_video_features(video), trained.get_video_features(video))
        standalone = AutoModelForCausalLM.from_pretrained(tmp_path / "hf" / "language_model")
        torch.testing.assert_close(standalone(input_ids=ids).logits, exported.language_model(input_ids=ids).logits)
    # A non-empty output folder and a target not built yet are refused with a message, nothing overwritten.
    assert main(["--model_path", str(out), "--to", "hf", "--output", str(tmp_path / "hf")]) == 1
    assert main(["--model_path", str(out), "--to", "onnx", "--output", str(tmp_path / "onnx")]) == 1
