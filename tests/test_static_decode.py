"""The static-cache greedy decoder against transformers' ``generate``: the real Gemma 3 270M on left-padded batches,
a tiny Gemma 3 decoding past its sliding window, ``min_new_tokens`` and the streamer, and when it applies."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_text_config
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM

from gemma3.model.fast_head import build_head, build_int8_head, output_head
from gemma3.model.fast_linears import decoder_linears
from gemma3.model.static_decode import static_decode_supported, static_greedy_generate

PROMPTS = [
    "The history of the bicycle begins in the early nineteenth century, when",
    "Q: What is the capital of Australia?\nA:",
    "def merge_sort(values):\n    if len(values) <= 1:\n        return values\n",
    "The coach watched the runner's stride and told her to",
]


@pytest.fixture(scope="module")
def real(gemma270m_dir):
    model = AutoModelForCausalLM.from_pretrained(gemma270m_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(gemma270m_dir, padding_side="left")
    return model, tok


def _generate(model, batch, new: int, eos: list[int], pad: int, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(**batch, max_new_tokens=new, do_sample=False, eos_token_id=eos, pad_token_id=pad, **kw)


def test_real_270m_left_padded_batch_equals_generate(real):
    model, tok = real
    batch = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    assert (batch["attention_mask"] == 0).any()  # left padding is exercised
    eos, new = [tok.eos_token_id, 106], 16  # end tokens, new tokens per row
    want = _generate(model, batch, new, eos, tok.pad_token_id)
    got = static_greedy_generate(model, batch, new, eos, tok.pad_token_id)
    assert torch.equal(got, want)
    # One prompt alone gives its row of the batch (padding changes nothing).
    one = dict(tok(PROMPTS[1:2], return_tensors="pt"))
    alone = static_greedy_generate(model, one, new, eos, tok.pad_token_id)
    assert alone[0, one["input_ids"].shape[1] :].tolist() == got[1, batch["input_ids"].shape[1] :].tolist()
    # With the rescored int8 head swapped in, as Predictor does on CPU: still generate's tokens.
    with output_head(model, build_int8_head(model)):
        assert torch.equal(static_greedy_generate(model, batch, new, eos, tok.pad_token_id), want)
        # And with fp16 copies of the decoder's linears too (Predictor's whole CPU default): the same tokens.
        fp16 = decoder_linears(model, "auto")
        assert fp16 is not None and len(fp16) == 7 * model.config.num_hidden_layers
        assert torch.equal(static_greedy_generate(model, batch, new, eos, tok.pad_token_id, linears=fp16), want)
    # The CPU default since the decoding kernels: the fp16 layer kernel and the int4 head, batched and one row alone.
    with output_head(model, build_head(model, "int4")):
        assert torch.equal(static_greedy_generate(model, batch, new, eos, tok.pad_token_id, linears=fp16), want)
        got = static_greedy_generate(model, one, new, eos, tok.pad_token_id, linears=fp16)
        assert got[0, one["input_ids"].shape[1] :].tolist() == want[1, batch["input_ids"].shape[1] :].tolist()


def test_eos_ends_rows_min_new_tokens_and_streamer(real):
    model, tok = real
    batch = dict(tok(PROMPTS[1:2], return_tensors="pt"))
    first = static_greedy_generate(model, batch, 4, [tok.eos_token_id], tok.pad_token_id)
    stop = int(first[0, batch["input_ids"].shape[1]])  # make the first new token an end token
    ended = static_greedy_generate(model, batch, 8, [stop], tok.pad_token_id)
    assert ended.shape[1] == batch["input_ids"].shape[1] + 1
    want = _generate(model, batch, 8, [stop], tok.pad_token_id, min_new_tokens=5)
    got = static_greedy_generate(model, batch, 8, [stop], tok.pad_token_id, min_new_tokens=5)
    assert torch.equal(got, want) and stop not in got[0, -8:-3].tolist()

    class Collect:
        def __init__(self):
            self.parts, self.ended = [], False

        def put(self, value):
            self.parts.append(value.clone())

        def end(self):
            self.ended = True

    streamer = Collect()
    out = static_greedy_generate(model, batch, 6, [tok.eos_token_id], tok.pad_token_id, streamer=streamer)
    assert streamer.ended and torch.equal(streamer.parts[0], batch["input_ids"])
    assert torch.cat(streamer.parts[1:]).tolist() == out[0, batch["input_ids"].shape[1] :].tolist()


def test_decoding_past_the_sliding_window_equals_generate():
    torch.manual_seed(0)
    cfg = tiny_text_config("gemma3", vocab_size=128, hidden=32)
    cfg.sliding_window = 4  # 3-token prompts, 12 new tokens: the sliding layer drops old keys while decoding
    cfg.initializer_range, cfg.tie_word_embeddings = 0.1, False  # varied tokens, not the input repeated
    model = Gemma3ForCausalLM(cfg).eval()
    ids = torch.tensor([[0, 5, 9], [7, 3, 11]])
    batch = {"input_ids": ids, "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}
    want = _generate(model, batch, 12, [127], 0, min_new_tokens=12)
    got = static_greedy_generate(model, batch, 12, [127], 0, min_new_tokens=12)
    assert torch.equal(got, want)
    cfg.sliding_window = 64  # the same model without a window in reach decodes differently
    assert not torch.equal(static_greedy_generate(model, batch, 12, [127], 0, min_new_tokens=12), want)


def test_when_it_applies():
    model = Gemma3ForCausalLM(tiny_text_config("gemma3", vocab_size=128)).eval()
    assert static_decode_supported(model, False, 1, 10) == (True, "")
    assert not static_decode_supported(model, True, 1, 10)[0]
    assert not static_decode_supported(model, False, 2, 10)[0]
    ok, why = static_decode_supported(model, False, 1, 64)
    assert not ok and "sliding window" in why
    from transformers import Gemma3nForCausalLM

    other = Gemma3nForCausalLM(tiny_text_config("gemma3n", vocab_size=128))
    ok, why = static_decode_supported(other, False, 1, 10)
    assert not ok and "not a Gemma 3 text decoder" in why
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        static_greedy_generate(model, {"input_ids": torch.tensor([[1, 2]])}, 0, [1], 0)
    with pytest.raises(ValueError, match="needs a Gemma 3 text decoder"):
        static_greedy_generate(other, {"input_ids": torch.tensor([[1, 2]])}, 2, [1], 0)
