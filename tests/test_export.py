"""`python -m gemma3.export`: native adapters merged into the stock class (and checked against Megatron Bridge's
Gemma 3 VL mapping); custom outputs as a standalone causal LM + encoders that reload to the same model, as GGUF
(the merged language model, re-imported) and as ONNX vision graphs (checked with onnxruntime)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_checkpoints import custom_train_args, make_dataset, make_encoder_configs, make_llm
from tiny_native import make_native

from gemma3.export.gguf import llama_cpp_layer_types
from gemma3.export.hf import MEGATRON_GEOMETRY, export, main, megatron_bridge_problems


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


def test_an_adapter_without_its_base_is_refused_before_anything_is_written(native_adapter, tmp_path, caplog):
    import shutil

    out, _ = native_adapter
    moved = tmp_path / "adapter"
    shutil.copytree(out, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "deleted-base")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    for to in ("hf", "gguf"):
        assert main(["--model_path", str(moved), "--to", to, "--output", str(tmp_path / f"x-{to}")]) == 1
        assert not (tmp_path / f"x-{to}").exists()
    assert "deleted-base is not there" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_megatron_bridge_names_and_geometry(native_adapter, tmp_path):
    out, _ = native_adapter
    export(out, "hf", tmp_path / "hf")
    from gemma3.export.hf import _weight_names

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
    from gemma3.export.hf import to_megatron_names

    assert to_megatron_names(f.parent) > 0  # renamed back to the checkpoint layout
    assert len(megatron_bridge_problems(f.parent)) == len(MEGATRON_GEOMETRY)


@pytest.fixture(scope="module")
def custom_output(tmp_path_factory, gemma270m_dir):
    """A LoRA finetune output of the tiny custom model whose language model llama.cpp can run as trained (every
    layer sliding, as its fixed 1-in-6 pattern makes a 2-layer model; queries scaled by 1/sqrt(head_dim))."""
    from gemma3.train import train as T

    root = tmp_path_factory.mktemp("export_custom")
    llm = make_llm(root, gemma270m_dir, name="tiny-gemma3-llamacpp", layer_types=llama_cpp_layer_types(2),
                   query_pre_attn_scalar=16)  # fmt: skip
    clip, vm = make_encoder_configs(root)
    data = make_dataset(root, n=4)
    out = root / "out"
    T.main(custom_train_args(llm, clip, vm, data, out, stage="finetune", use_lora=True, max_steps=2))
    return out


def test_custom_output_exports_to_a_causal_lm_and_encoders_that_reload(tmp_path, custom_output):
    from transformers import AutoModelForCausalLM

    from gemma3.model.builder import load_model

    out = custom_output
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
    # A non-empty output folder is refused with a message, nothing overwritten.
    assert main(["--model_path", str(out), "--to", "hf", "--output", str(tmp_path / "hf")]) == 1
    assert json.loads((tmp_path / "hf" / "export_manifest.json").read_text()) == manifest


def test_custom_language_model_to_gguf_q8_0_reimports_with_the_merged_logits(tmp_path, custom_output):
    import gguf

    from gemma3.export.gguf import read_gguf
    from gemma3.model.builder import load_model

    target = tmp_path / "gguf"
    assert (
        main(["--model_path", str(custom_output), "--to", "gguf", "--gguf_type", "q8_0", "--output", str(target)]) == 0
    )
    manifest = json.loads((target / "export_manifest.json").read_text())
    assert manifest["file"] == "model-q8_0.gguf" and manifest["tensors"]["Q8_0"] > 0 and manifest["tied_output"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gguf"]  # the staging folder was renamed, none left
    merged, tokenizer = load_model(custom_output, merge_lora=True)
    reread, _ = read_gguf(target / "model-q8_0.gguf", with_tokenizer=False)
    # What the file should hold: every matrix whose rows are whole 32-value blocks rounded to 8 bits with one scale
    # per block (gguf-py's Q8_0), everything else as it was. The tied output head reads the rounded embedding.
    quantized = merged.language_model
    with torch.no_grad():
        for param in quantized.parameters():
            if param.ndim == 2 and param.shape[-1] % 32 == 0:
                blocks = gguf.quants.quantize(param.numpy(), gguf.GGMLQuantizationType.Q8_0)
                param.copy_(torch.from_numpy(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)))
    ids = tokenizer("The knees cave inward at the bottom of the squat", return_tensors="pt").input_ids
    with torch.no_grad():
        want = quantized(input_ids=ids).logits
        got = reread(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    assert manifest["tensors"]["Q8_0"] == sum(
        p.ndim == 2 and p.shape[-1] % 32 == 0 for n, p in quantized.named_parameters() if n != "lm_head.weight"
    )


def test_gguf_refuses_what_llama_cpp_would_run_differently(tmp_path, gemma270m_dir):
    """The stock tiny model (a full-attention layer where llama.cpp's pattern has a sliding one, queries scaled by
    1/sqrt(256) with 16-wide heads) is refused before anything is written; the stock tiny Gemma 3n too (its
    layout is tested in test_export_gguf_gemma3n.py)."""
    from tiny_models import tiny_text_config

    from gemma3.export.gguf import export_problems, write_gguf

    problems = export_problems(tiny_text_config("gemma3"))
    assert any("layer_types" in p for p in problems) and any("query_pre_attn_scalar" in p for p in problems)
    assert any("laurel_rank" in p for p in export_problems(tiny_text_config("gemma3n")))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = make_llm(tmp_path, gemma270m_dir)
    with pytest.raises(ValueError, match="query_pre_attn_scalar"):
        write_gguf(AutoModelForCausalLM.from_pretrained(llm), AutoTokenizer.from_pretrained(llm), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    target = tmp_path / "refused"
    assert main(["--model_path", str(llm), "--to", "gguf", "--output", str(target)]) == 1
    assert not target.exists() and not any(p.name.startswith(".refused") for p in tmp_path.iterdir())


def test_vision_path_to_onnx_matches_pytorch_on_real_clips(tmp_path, custom_output):
    """Every graph with a batch it was not exported with, on frames decoded from the test videos."""
    import onnx

    from gemma3.data.media import preprocess_frames, read_video
    from gemma3.export.onnx import OnnxVision
    from gemma3.model.builder import load_model
    from gemma3.model.encoders import clip_to_imagenet

    target = tmp_path / "onnx"
    assert main(["--model_path", str(custom_output), "--to", "onnx", "--output", str(target)]) == 0
    manifest = json.loads((target / "export_manifest.json").read_text())
    assert set(manifest["graphs"]) == {"clip_encoder", "image_projector", "video_encoder", "video_projector",
                                       "video_features"}  # fmt: skip
    model, _ = load_model(custom_output)
    model.eval()
    videos = sorted((custom_output.parent / "videos").glob("*.mp4"))[:3]
    frames = torch.stack([preprocess_frames(read_video(v, 4).frames, 32) for v in videos])  # [3, 4, 3, 32, 32]
    ort = OnnxVision(target)
    key_frames = frames[:, :2]  # [3, K=2, 3, 32, 32]
    with torch.no_grad():
        want_video = model.get_video_features(frames)
        want_image = model.get_image_features(frames[:, 0])
        want_mamba = model.video_encoder(clip_to_imagenet(key_frames))
    got_video = ort.video_features(frames.numpy())
    assert got_video.shape == tuple(want_video.shape)
    np.testing.assert_allclose(got_video, want_video.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort.image_features(frames[:, 0].numpy()), want_image.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort.run("video_encoder", key_frames.numpy()), want_mamba.numpy(), atol=1e-4, rtol=0)
    # The bidirectional scan is a loop in the graph (one Scan per direction group per layer), not unrolled steps.
    graph = onnx.load(str(target / "video_encoder.onnx"))
    ops = [n.op_type for n in graph.graph.node] + [n.op_type for f in graph.functions for n in f.node]
    assert ops.count("Scan") == model.config.video_config.depth, ops.count("Scan")
    with pytest.raises(KeyError, match="no nope.onnx"):
        ort.run("nope", frames.numpy())
