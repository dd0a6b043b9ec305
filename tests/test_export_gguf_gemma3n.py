"""GGUF export of a Gemma 3n text backbone in llama.cpp's ``gemma3n`` layout: a tiny random model shaped the way
llama.cpp fixes Gemma 3n (22 layers, 20 holding KV, every 5th full, 4 AltUp inputs, LAuReL 64, 256-wide per-layer
inputs, sparsity on the first 10) with a small SentencePiece-style vocabulary, exported through the command line,
checked against gguf-py's Gemma 3n tensor table, re-imported, and run by llama.cpp where llama-cpp-python is
installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf_checks import assert_llama_cpp_agrees, export_kinds

from gemma3.export.gguf_gemma3n import KV_LAYERS, gemma3n_problems, layer_types, read_gguf_gemma3n, sparsity_pattern
from gemma3.export.hf import main

VOCAB, LAYERS = 512, 22


def tiny_tokenizer():
    """Special pieces, the 256 byte pieces and word pieces: what llama.cpp's SentencePiece vocabulary needs."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    pieces = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{i:02X}>" for i in range(256)]
    pieces += [f"\u2581w{i}" for i in range(VOCAB - len(pieces))]
    unigram = models.Unigram([(p, -float(i)) for i, p in enumerate(pieces)], unk_id=3, byte_fallback=True)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(unigram), bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")  # fmt: skip


def tiny_gemma3n(**overrides):
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    torch.manual_seed(0)
    config = Gemma3nTextConfig(**{
        "vocab_size": VOCAB, "vocab_size_per_layer_input": VOCAB - 12, "hidden_size": 64,
        "intermediate_size": 1024, "num_hidden_layers": LAYERS, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 32, "hidden_size_per_layer_input": 256, "laurel_rank": 64, "num_kv_shared_layers": LAYERS - 20,
        "layer_types": layer_types(LAYERS), "activation_sparsity_pattern": sparsity_pattern(LAYERS),
        "sliding_window": 16, "max_position_embeddings": 256, "pad_token_id": 0, "eos_token_id": 1,
        "bos_token_id": 2, **overrides})  # fmt: skip
    model = Gemma3nForCausalLM(config).eval()
    with torch.no_grad():  # norms and scales away from their initial ones, so a misplaced one shows
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("g3n")
    model = tiny_gemma3n()
    return model, export_kinds(model, tiny_tokenizer(), root, ("f32", "f16", "q8_0"))


def _ids(n: int = 3, length: int = 40) -> torch.Tensor:
    """Token ids below the per-layer vocabulary (above it transformers reads per-layer row 0, llama.cpp the zero
    rows the converter pads with: the audio / image ids of the real model, which a text export never sees)."""
    return torch.randint(4, VOCAB - 12, (n, length), generator=torch.Generator().manual_seed(1))


def test_names_keys_and_shapes_follow_llama_cpp(exported):
    import gguf

    model, files = exported
    reader = gguf.GGUFReader(str(files["f16"]))
    names = {t.name: t for t in reader.tensors}
    table = gguf.TENSOR_NAMES
    allowed = {table[t].format(bid=b) for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GEMMA3N] for b in range(LAYERS)}
    assert {n.rsplit(".", 1)[0] for n in names} <= allowed
    assert "output.weight" not in names  # tied
    assert list(names["altup_proj.weight"].shape) == [64, 64, 3]  # ggml order: the three matrices stacked
    assert list(names["token_embd.weight"].shape) == [64, VOCAB]
    assert list(names["per_layer_token_embd.weight"].shape) == [256 * LAYERS, VOCAB]  # padded to the vocabulary
    per_layer = names["per_layer_token_embd.weight"]
    assert not np.asarray(per_layer.data, np.float32)[VOCAB - 12 :].any()  # the padded rows are zeros
    for layer in range(KV_LAYERS, LAYERS):  # the KV-shared layers carry K / V, as llama.cpp's loader requires
        assert f"blk.{layer}.attn_k.weight" in names and f"blk.{layer}.attn_v.weight" in names
    for n in ("blk.0.altup_correct_coef.weight", "blk.0.altup_predict_coef.weight", "blk.0.attn_norm.weight"):
        assert names[n].tensor_type == gguf.GGMLQuantizationType.F32
    fields = reader.fields
    assert fields["general.architecture"].contents() == "gemma3n"
    assert fields["gemma3n.rope.freq_base_swa"].contents() == 10000.0
    assert fields["gemma3n.final_logit_softcapping"].contents() == 30.0
    assert fields["gemma3n.attention.shared_kv_layers"].contents() == LAYERS - KV_LAYERS
    assert len(fields["tokenizer.ggml.tokens"].contents()) == VOCAB


def test_reimported_model_matches(exported):
    """f32 re-imports exactly (every tensor where llama.cpp's layout puts it); f16 / q8_0 hold every weight within
    their rounding (the tiny random model is too chaotic for a logit check to say more about them)."""
    model, files = exported
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(read_gguf_gemma3n(files["f32"])(ids).logits, model(ids).logits)
    want = model.state_dict()
    for kind, rel in (("f16", 1e-3), ("q8_0", 1e-2)):
        got = read_gguf_gemma3n(files[kind]).state_dict()
        for name, w in want.items():
            err = (got[name][: w.shape[0]] - w).abs().max().item()  # the per-layer table is padded
            assert err <= rel * w.abs().max().item() + 1e-6, (kind, name, err)


def test_what_llama_cpp_runs_differently_is_refused(tmp_path):
    from tiny_models import tiny_text_config

    reasons = gemma3n_problems(tiny_text_config("gemma3n"))
    assert any("layer_types" in r for r in reasons) and any("laurel_rank" in r for r in reasons)
    assert any("altup_num_inputs" in r for r in reasons) and any("layers hold KV" in r for r in reasons)
    model = tiny_gemma3n(laurel_rank=32)
    model.save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    assert main(["--model_path", str(tmp_path / "lm"), "--to", "gguf", "--output", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()


def test_llama_cpp_runs_the_export_like_the_model(exported, monkeypatch):
    """llama.cpp's gemma3n graph on the f32 file (f32 KV cache), teacher-forced, against the project on the same
    weights: the graph compared, not the rounding (llama.cpp runs an f16 file's products with f16 activations,
    which this tiny random model amplifies; the real-weights f16 check is the Gemma 3 270M test). Its logits are
    nearly flat, so the check is: logits close, and the same choice wherever the project's top two are further
    apart than the largest difference seen.

    One numeric difference is known and aligned here: llama.cpp's gaussian top-k takes the sample standard deviation
    (n - 1), transformers the population one. At this model's 1024-wide FFN that moves the cut-off by 5e-4 and its
    logits by up to 0.10; at Gemma 3n E2B's 8192 by 6e-5."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is an optional extra (requirements-llama.txt)")
    from transformers.models.gemma3n import modeling_gemma3n

    from gemma3.export.gguf import llama_cpp_logits

    def sample_std_topk(self, x):  # [.., F]
        cut = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(self.activation_sparsity))
        return torch.relu(x - (x.mean(-1, keepdim=True) + x.std(-1, keepdim=True, unbiased=True) * cut))

    monkeypatch.setattr(modeling_gemma3n.Gemma3nTextMLP, "_gaussian_topk", sample_std_topk)

    _, files = exported
    ids = _ids()
    got = llama_cpp_logits(files["f32"], ids.tolist(), f32_cache=True)
    got = np.stack(got)  # [B, L, V]
    with torch.no_grad():
        want = read_gguf_gemma3n(files["f32"])(ids).logits.numpy()
    assert_llama_cpp_agrees(got, want, 0.25)
