"""The rescored int8 output head: exact best logits, the same greedy tokens as the fp32 head (tiny model and the
real Gemma 3 270M), swapped in only while generating."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

from gemma3.model.fast_head import RescoredInt4Head, RescoredInt8Head, build_head, build_int8_head, output_head
from gemma3.serve.decoding import generation_head


def _tiny(vocab: int = 4096) -> Gemma3ForCausalLM:
    config = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=256, sliding_window=16,
    )  # fmt: skip
    return Gemma3ForCausalLM(config).eval()


def test_best_logits_are_exact_and_the_rest_within_int8_error():
    model = _tiny()
    weight = model.get_output_embeddings().weight
    head = RescoredInt8Head(weight, k=8)
    assert head.weight is weight  # shared with the tied embedding, not copied
    hidden = torch.randn(3, 5, 64)
    exact = hidden @ weight.T  # [3, 5, V]
    approx = head(hidden)
    assert approx.shape == exact.shape
    top = exact.topk(3, dim=-1).indices  # the best few are well inside the 8 rescored candidates
    torch.testing.assert_close(approx.gather(-1, top), exact.gather(-1, top), rtol=1e-5, atol=1e-5)
    assert torch.equal(approx.argmax(-1), exact.argmax(-1))
    # int8 weights (half a step per row) and fbgemm's 7-bit dynamic activations (half a step of the row's range)
    weight_step = (weight.abs().amax(1) / 127 / 2) * hidden.abs().sum(-1, keepdim=True)  # [3, 5, V]
    act_range = hidden.amax(-1, keepdim=True) - hidden.amin(-1, keepdim=True)  # [3, 5, 1]
    act_step = act_range / 127 / 2 * weight.abs().sum(1)  # [3, 5, V]
    assert ((approx - exact).abs() <= weight_step + act_step + 1e-5).all()
    assert (approx - exact).abs().max() > 0  # the rest really is the int8 product


def test_swapped_in_only_inside_the_block_and_generation_matches():
    torch.manual_seed(0)
    model = _tiny()
    original = model.get_output_embeddings()
    ids = torch.randint(0, 4096, (2, 12))
    ref = model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    head = build_int8_head(model)
    with output_head(model, head):
        assert model.get_output_embeddings() is head
        out = model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    assert model.get_output_embeddings() is original
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(out, ref)
    with pytest.raises(RuntimeError), output_head(model, head):
        raise RuntimeError("generation failed")
    assert model.get_output_embeddings() is original  # restored on errors too


def test_generation_head_choices():
    model = _tiny()
    assert generation_head(model, "exact") is None
    assert type(generation_head(model, "auto")) is RescoredInt4Head  # its kernel builds on every CI machine
    assert type(generation_head(model, "int8")) is RescoredInt8Head
    assert type(generation_head(model, "int4")) is RescoredInt4Head
    with pytest.raises(ValueError, match="choose auto"):
        generation_head(model, "int2")
    meta = _tiny().to("meta")
    with pytest.raises(ValueError, match="CPU path"):
        generation_head(meta, "int8")
    assert generation_head(meta, "auto") is None  # falls back to the exact head


def test_real_gemma3_270m_teacher_forced_tokens_unchanged(gemma270m_dir):
    """The real 262k-word tied head: every teacher-forced next token of varied text equals the fp32 head's."""
    tok = AutoTokenizer.from_pretrained(gemma270m_dir)
    model = AutoModelForCausalLM.from_pretrained(gemma270m_dir, dtype=torch.float32).eval()
    texts = [
        "The squat is a lower-body exercise: keep your chest up, push your hips back and drive through the heels.",
        "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
        "Le vélo est un moyen de transport écologique, rapide et bon pour la santé en ville comme à la campagne.",
    ]
    heads = [build_int8_head(model), build_head(model, "int4")]
    weight = model.get_output_embeddings().weight
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt").input_ids
            out = model(ids, output_hidden_states=True)
            exact = out.logits[0].argmax(-1)  # [L]
            hidden = out.hidden_states[-1][0]  # [L, D], after the final norm: what the head sees
            assert torch.equal((hidden @ weight.T).argmax(-1), exact)
            for head in heads:  # one row per call, as batch-1 decoding calls it (the int4 kernel's case)
                fast = torch.stack([head(hidden[t : t + 1])[0].argmax() for t in range(hidden.shape[0])])
                assert torch.equal(fast, exact), (type(head).__name__, text)
