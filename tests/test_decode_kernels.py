"""The CPU decoding kernels (``gemma3/model/csrc/decode_cpu.cpp``): the int4 head's logits against the quantized
product computed in PyTorch, the fp16 GEMV against the fp16-rounded weights, the decoder layer step against the
Python step it replaces (grouped-query attention, left padding, the sliding window), and the portable build (no AVX2)
against this machine's. The real Gemma 3 270M's tokens through them are checked in tests/test_static_decode.py."""

from __future__ import annotations

import ctypes

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_text_config
from torch import nn
from transformers import Gemma3ForCausalLM

from gemma3.model import native_kernels
from gemma3.model.fast_head import INT4_ROWS, RescoredInt4Head, RescoredInt8Head, int4_entry, pack_int4
from gemma3.model.fast_linears import Fp16Linear, gemv_entry, pack_fp16_linears, pack_rows
from gemma3.model.static_decode import _Layer, _rotary_tables


def _unpack_codes(codes: torch.Tensor) -> torch.Tensor:
    """codes [V' / 8, D' / 64, 8, 32] -> the signed 4-bit values [V', D'] (per 64 weights of a row: low nibbles, then
    high nibbles)."""
    rows = codes.transpose(1, 2).reshape(codes.shape[0] * 8, -1, 32).to(torch.int16)  # [V', D' / 64, 32]
    return (torch.stack([rows & 0x0F, rows >> 4], dim=2).view(rows.shape[0], -1) - 8).float()  # [V', D']


def _int4_reference(weight: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """What the kernel computes, in fp32 PyTorch: int4 weights (groups of 32, the packed fp16 scales) times int8
    activations (groups of 32, scale max|x| / 127)."""
    codes, scales = pack_int4(weight)
    v, width = weight.shape[0], codes.shape[1] * 64
    w = F.pad(weight.float(), (0, width - weight.shape[1])).view(v, -1, 32)  # [V, G, 32]
    s = scales.transpose(1, 2).reshape(-1, width // 32)[:v].float().unsqueeze(-1)  # [V, G, 1]
    q = (w / s).nan_to_num(0.0, 0.0, 0.0).round().clamp(-8, 7)
    assert torch.equal(_unpack_codes(codes)[:v].view_as(q), q)  # the packed layout holds exactly these values
    assert not _unpack_codes(codes)[v:].add(8).any()  # padding rows: code 0, scale 0
    x = F.pad(hidden.float(), (0, width - hidden.shape[1])).view(hidden.shape[0], -1, 32)  # [M, G, 32]
    peak = x.abs().amax(-1, keepdim=True)
    xq = (x * (127.0 / peak)).nan_to_num(0.0, 0.0, 0.0).round().clamp(-127, 127)
    return (xq * peak / 127.0).view(hidden.shape[0], -1) @ (q * s).view(v, -1).T  # [M, V]


def test_int4_logits_are_the_quantized_product_and_the_best_are_exact():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(301, 96, generator=g) * 0.05  # D = 96: padded to 128; 301 rows: 3 padding rows in the last 8
    weight[7, :32] = 0.0  # a group of zeros (its scale is 0)
    head = RescoredInt4Head(weight, k=8)
    assert head.codes.shape == (38, 2, 8, 32) and head.scales.shape == (38, 4, 8) and head.weight is weight
    for rows in (1, 2):
        hidden = torch.randn(rows, 96, generator=g)
        hidden[0, 40:72] = 0.0  # an activation group of zeros
        approx = head.approximate(hidden.contiguous())
        torch.testing.assert_close(approx, _int4_reference(weight, hidden), rtol=1e-5, atol=1e-5)
        exact = hidden @ weight.T
        assert (approx - exact).abs().max() > 1e-3  # it really is the int4 product
        out = head(hidden)
        top = exact.topk(3, dim=-1).indices
        torch.testing.assert_close(out.gather(-1, top), exact.gather(-1, top), rtol=1e-5, atol=1e-5)
        assert torch.equal(out.argmax(-1), exact.argmax(-1))
    more = torch.randn(INT4_ROWS + 1, 96, generator=g)  # a larger batch takes the int8 copy
    torch.testing.assert_close(head.approximate(more), RescoredInt8Head(weight).approximate(more))


def test_fp16_gemv_is_the_fp16_rounded_product_with_padded_rows():
    g = torch.Generator().manual_seed(1)
    linear = nn.Linear(40, 45, bias=False)  # 45 rows: the last block of 4 is padded with zero rows
    packed = pack_rows(linear.weight)
    assert packed.shape == (12, 5, 4, 8) and packed.dtype == torch.float16
    assert torch.equal(packed.transpose(1, 2).reshape(48, 40)[:45], linear.weight.detach().half())
    fp16 = Fp16Linear(linear)
    assert fp16.half_weight is not None
    half = linear.weight.detach().half().float()
    for rows in (1, 2, 3, 8):  # pairs of rows and an odd one out
        x = torch.randn(rows, 40, generator=g)
        torch.testing.assert_close(fp16(x), x @ half.T, rtol=0, atol=2e-6)


def _tiny_gqa(seed: int = 0) -> Gemma3ForCausalLM:
    torch.manual_seed(seed)
    cfg = tiny_text_config("gemma3", vocab_size=128, hidden=32)
    cfg.num_attention_heads, cfg.num_key_value_heads = 4, 2  # two query heads per key / value head
    cfg.initializer_range = 0.1
    return Gemma3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("kind,window", [("sliding_attention", 4), ("full_attention", 0)])
def test_the_layer_kernel_equals_the_python_step(kind, window):
    model = _tiny_gqa()
    index = model.config.layer_types.index(kind)
    layer = _Layer(model.model.layers[index], kind, pack_fp16_linears(model), window)
    assert layer.native is not None
    g = torch.Generator().manual_seed(2)
    b, hk, total, hd, col = 2, 2, 12, 16, 9  # the new token at cache index 9: a window of 4 drops 0 .. 5
    keys, values = torch.randn(b, hk, total, hd, generator=g), torch.randn(b, hk, total, hd, generator=g)
    key_ok = torch.ones(b, total, dtype=torch.bool)
    key_ok[0, :3] = False  # row 0 is left-padded
    cos, sin = _rotary_tables(model.model, 16, torch.float32)[kind]
    pos = torch.tensor([6, 9])  # [B] positions (row 0 after its padding)
    h = torch.randn(b, 1, 32, generator=g)
    mask = key_ok[:, None, None, : col + 1]  # [B, 1, 1, col + 1]
    if window:
        mask = mask & (torch.arange(col + 1) > col - window)
    k1, v1, k2, v2 = keys.clone(), values.clone(), keys.clone(), values.clone()
    with torch.no_grad():
        want = layer.step(h.clone(), cos[pos], sin[pos], k1, v1, col, mask)
    got = layer.native(h.clone(), cos[pos], sin[pos], k2, v2, col, key_ok)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k2, k1, rtol=1e-5, atol=1e-5)  # this token's key and value written at col
    torch.testing.assert_close(v2, v1, rtol=1e-5, atol=1e-5)
    assert not torch.equal(k2[:, :, col], keys[:, :, col])


def test_the_layer_kernel_is_not_used_where_it_does_not_apply():
    model = _tiny_gqa()
    layer = model.model.layers[0]
    assert _Layer(layer, "sliding_attention", None, 4).native is None  # the fp32 modules: the Python step
    linears = pack_fp16_linears(model)
    del linears[layer.mlp.down_proj]  # one projection without an fp16 copy (e.g. a LoRA wrapper)
    assert _Layer(layer, "sliding_attention", linears, 4).native is None


def test_the_portable_build_agrees_with_this_machines(tmp_path):
    """What a machine without AVX2 / F16C compiles (plain loops, its own half-to-float conversion), run here."""
    library = tmp_path / "portable.so"
    source = native_kernels.CSRC / "decode_cpu.cpp"
    assert native_kernels.compile_kernel(source, library, native_kernels.compiler(), march="x86-64") == ""
    portable, native = ctypes.CDLL(str(library)), native_kernels.load_kernel(native_kernels.DECODE_KERNEL)
    assert portable.gemma3_decode_vectorised() == 0
    g = torch.Generator().manual_seed(3)
    weight, hidden = torch.randn(203, 128, generator=g) * 0.05, torch.randn(2, 128, generator=g)
    codes, scales = pack_int4(weight)
    outs = []
    for lib in (portable, native):
        out = torch.empty(2, 203)
        int4_entry(lib)(codes.data_ptr(), scales.data_ptr(), hidden.data_ptr(), out.data_ptr(), 2, 203, 128, 2)
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0], _int4_reference(weight, hidden), rtol=1e-5, atol=1e-5)
    w = torch.randn(45, 64, generator=g)
    packed, x = pack_rows(w), torch.randn(3, 64, generator=g)
    for lib in (portable, native):
        y = torch.empty(3, 45)
        gemv_entry(lib)(x.data_ptr(), packed.data_ptr(), y.data_ptr(), 3, 45, 64, 2)
        torch.testing.assert_close(y, x @ w.half().float().T, rtol=0, atol=1e-5)
