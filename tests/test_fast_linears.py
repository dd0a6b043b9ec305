"""fp16 copies of the decoder's linears for CPU decoding (`gemma3.model.fast_linears`); the real Gemma 3 270M's
tokens with them are checked in tests/test_static_decode.py."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_models import tiny_text_config
from torch import nn
from transformers import Gemma3ForCausalLM

from gemma3.model.fast_linears import Fp16Linear, decoder_linears, linears_in_forward, pack_fp16_linears
from gemma3.model.static_decode import static_greedy_generate


def _tiny(seed: int = 0) -> Gemma3ForCausalLM:
    torch.manual_seed(seed)
    cfg = tiny_text_config("gemma3", vocab_size=128, hidden=32)
    cfg.initializer_range, cfg.tie_word_embeddings = 0.1, False
    return Gemma3ForCausalLM(cfg).eval()


def test_fp16_linear_matches_the_module_within_fp16_weight_rounding():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64)  # [B, T, in]
    for bias in (False, True):  # Gemma's projections have none; a bias is added at reduced precision
        linear = nn.Linear(64, 48, bias=bias)
        got, want = Fp16Linear(linear)(x), linear(x)
        assert got.shape == want.shape == (2, 3, 48) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)
        half = nn.Linear(64, 48, bias=bias)  # the fp16-rounded weights, computed in fp32
        half.weight.data = linear.weight.data.half().float()
        if bias:
            half.bias.data = linear.bias.data.half().float()
        tol = 1e-4 if bias else 2e-6
        torch.testing.assert_close(got, half(x), rtol=0, atol=tol)


def test_static_decode_with_fp16_linears_equals_the_same_weights_in_forward():
    model = _tiny()
    batch = {"input_ids": torch.tensor([[0, 5, 9], [7, 3, 11]]), "attention_mask": torch.tensor([[0, 1, 1], [1] * 3])}
    fp16 = pack_fp16_linears(model)
    assert len(fp16) == 7 * model.config.num_hidden_layers
    with linears_in_forward(model, fp16):  # the prompt through the fp16 copies as well
        swapped = model.model.layers[0].self_attn.q_proj
        assert not isinstance(swapped, nn.Linear)
        with torch.no_grad():
            want = model.generate(**batch, max_new_tokens=10, do_sample=False, min_new_tokens=10, pad_token_id=0)
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)  # restored
    got = static_greedy_generate(model, batch, 10, [127], 0, min_new_tokens=10, linears=fp16)
    assert torch.equal(got, want)


def test_choices_and_where_fp16_does_not_apply():
    model = _tiny()
    assert decoder_linears(model, "fp32") is None
    assert len(decoder_linears(model, "fp16")) == len(decoder_linears(model, "auto"))
    with pytest.raises(ValueError, match="weights 'int4': choose auto, fp32, fp16"):
        decoder_linears(model, "int4")
    model.to(torch.bfloat16)
    assert decoder_linears(model, "auto") is None
    with pytest.raises(ValueError, match="--weights fp16: the decoder is torch.bfloat16, not fp32"):
        decoder_linears(model, "fp16")


def test_lora_wrapped_projections_keep_their_adapter():
    model = get_peft_model(
        _tiny(), LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    model.eval()
    fp16 = pack_fp16_linears(model)
    layers = model.config.num_hidden_layers
    assert len(fp16) == 5 * layers  # q and v are LoRA wrappers, left to their own forward
    batch = {"input_ids": torch.tensor([[4, 5, 9]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    with linears_in_forward(model, fp16), torch.no_grad():
        want = model.generate(**batch, max_new_tokens=8, do_sample=False, min_new_tokens=8, pad_token_id=0)
    got = static_greedy_generate(model, batch, 8, [127], 0, min_new_tokens=8, linears=fp16)
    assert torch.equal(got, want)
    with model.disable_adapter():
        plain = static_greedy_generate(model, batch, 8, [127], 0, min_new_tokens=8, linears=fp16)
    assert not torch.equal(plain, got)  # the adapter is applied in the fp16 decoding steps
