"""GGUF export of a dense Gemma 4 text backbone in llama.cpp's ``gemma4`` layout: a tiny random model with what
Gemma 4 E2B has (a larger head on full-attention layers with proportional partial RoPE, KV-shared layers with the
double-wide MLP, per-layer inputs, layer scalars), exported through the command line, checked against gguf-py's
Gemma 4 table, re-imported, and run by llama.cpp where llama-cpp-python is installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf_checks import assert_llama_cpp_agrees, export_kinds

from gemma3.export.gguf_gemma4 import NO_ROTATION, gemma4_problems, read_gguf_gemma4
from gemma3.export.hf import main

VOCAB, LAYERS = 512, 6
LAYER_TYPES = ["sliding_attention"] * 3 + ["full_attention", "sliding_attention", "full_attention"]


CORPUS = (
    "keep your chest up and push the knees out over the toes. the athlete lowers into the squat, pauses at "
    "the bottom, then drives up through the heels while the bar stays over the middle of the foot. "
)
TEXTS = ["keep the chest up", "The athlete squats.\nThen   rests!", "über 90 kg: push-up × 12", "  two  spaces  "]


def tiny_bpe_tokenizer():
    """A Gemma-style BPE tokenizer (spaces as U+2581, byte fallback) with merges learnt from a small corpus: what
    llama.cpp's gemma4 vocabulary is (special pieces, the 256 byte pieces, characters, merges)."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = CORPUS.replace(" ", "\u2581")
    vocab = {p: i for i, p in enumerate(["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)])}
    for ch in sorted(set(text)):
        vocab.setdefault(ch, len(vocab))
    symbols, merges = list(text), []
    while len(vocab) < 400:
        pairs = Counter(zip(symbols, symbols[1:]))
        (a, b), count = pairs.most_common(1)[0]
        if count < 2:
            break
        merges.append((a, b))
        vocab[a + b] = len(vocab)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == (a, b):
                merged.append(a + b)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>")  # fmt: skip


def tiny_gemma4(**overrides):
    from transformers.models.gemma4 import Gemma4ForCausalLM, Gemma4TextConfig

    torch.manual_seed(0)
    config = Gemma4TextConfig(**{
        "vocab_size": VOCAB, "vocab_size_per_layer_input": VOCAB - 12, "hidden_size": 64, "intermediate_size": 256,
        "num_hidden_layers": LAYERS, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
        "global_head_dim": 64, "layer_types": LAYER_TYPES, "num_kv_shared_layers": 2, "use_double_wide_mlp": True,
        "hidden_size_per_layer_input": 16, "sliding_window": 16, "max_position_embeddings": 256,
        "final_logit_softcapping": 30.0, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
        **overrides})  # fmt: skip
    model = Gemma4ForCausalLM(config).eval()
    with torch.no_grad():  # norms and layer scalars away from their initial ones, so a misplaced one shows
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
        for i, layer in enumerate(model.model.layers):
            layer.layer_scalar.fill_(0.6 + 0.1 * i)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("g4")
    model = tiny_gemma4()
    return model, export_kinds(model, tiny_bpe_tokenizer(), root, ("f32", "q8_0"))


def _ids() -> torch.Tensor:
    return torch.randint(4, VOCAB - 12, (3, 40), generator=torch.Generator().manual_seed(1))


def test_names_keys_and_rope_follow_llama_cpp(exported):
    import gguf

    model, files = exported
    reader = gguf.GGUFReader(str(files["f32"]))
    names = {t.name: t for t in reader.tensors}
    table = gguf.TENSOR_NAMES
    allowed = {table[t].format(bid=b) for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GEMMA4] for b in range(LAYERS)}
    assert {n.rsplit(".", 1)[0] for n in names} <= allowed
    assert "blk.4.attn_k.weight" not in names and "blk.3.attn_k.weight" in names  # no K / V on shared layers
    assert np.asarray(names["blk.2.layer_output_scale.weight"].data).item() == pytest.approx(0.8)
    # proportional RoPE, factor 0.25 on 64-wide heads: 8 of 32 pairs rotate
    assert list(np.asarray(names["rope_freqs.weight"].data)) == [1.0] * 8 + [NO_ROTATION] * 24
    f = reader.fields
    assert f["gemma4.attention.key_length"].contents() == 64 and f["gemma4.attention.key_length_swa"].contents() == 32
    assert f["gemma4.attention.sliding_window_pattern"].contents() == [t == "sliding_attention" for t in LAYER_TYPES]
    assert f["gemma4.feed_forward_length"].contents() == [256] * 4 + [512] * 2  # double-wide on the shared layers
    assert f["gemma4.attention.shared_kv_layers"].contents() == 2
    assert f["gemma4.embedding_length_per_layer_input"].contents() == 16
    assert f["tokenizer.ggml.model"].contents() == "gemma4" and len(f["tokenizer.ggml.merges"].contents()) > 20


def test_llama_cpp_tokenizes_like_the_tokenizer(exported):
    """The gemma4 BPE vocabulary (pieces, types, merges) read by llama.cpp gives the tokenizer's ids."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is an optional extra (requirements-llama.txt)")
    from llama_cpp import Llama

    _, files = exported
    tokenizer = tiny_bpe_tokenizer()
    llm = Llama(model_path=str(files["f32"]), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            want = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == want, text
    finally:
        llm.close()


def test_reimported_model_matches(exported):
    model, files = exported
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(read_gguf_gemma4(files["f32"])(ids).logits, model(ids).logits)
    want, got = model.state_dict(), read_gguf_gemma4(files["q8_0"]).state_dict()
    for name, w in want.items():
        err = (got[name][: w.shape[0]] - w).abs().max().item()
        assert err <= 1e-2 * w.abs().max().item() + 1e-6, (name, err)


def test_what_llama_cpp_runs_differently_is_refused(tmp_path):
    reasons = gemma4_problems(tiny_gemma4(final_logit_softcapping=None, attention_k_eq_v=True).config)
    assert any("final_logit_softcapping" in r for r in reasons) and any("k_eq_v" in r for r in reasons)
    swapped = LAYER_TYPES[:2] + ["full_attention", "sliding_attention"] + LAYER_TYPES[4:]
    assert any("KV reuse" in r for r in gemma4_problems(tiny_gemma4(layer_types=swapped).config))
    model = tiny_gemma4(final_logit_softcapping=None)
    model.save_pretrained(tmp_path / "lm")
    tiny_bpe_tokenizer().save_pretrained(tmp_path / "lm")
    assert main(["--model_path", str(tmp_path / "lm"), "--to", "gguf", "--output", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()


def test_llama_cpp_runs_the_export_like_the_model(exported):
    """llama.cpp's gemma4 graph on the f32 file (f32 KV cache), teacher-forced, against transformers on the same
    weights: logits close, and the same choice wherever transformers' top two are further apart than twice the
    largest difference seen."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is an optional extra (requirements-llama.txt)")
    from gemma3.export.gguf import llama_cpp_logits

    model, files = exported
    ids = _ids()
    got = llama_cpp_logits(files["f32"], ids.tolist(), f32_cache=True)
    got = np.stack(got)  # [B, L, V]
    with torch.no_grad():
        want = model(ids).logits.numpy()
    assert_llama_cpp_agrees(got, want, 0.2)
