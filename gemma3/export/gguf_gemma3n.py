"""The Gemma 3n text backbone in llama.cpp's ``gemma3n`` GGUF layout, and the reader that loads one back.

What llama.cpp's converter (``Gemma3NModel``) writes and its loader (``src/models/gemma3n.cpp``) reads:

- keys ``gemma3n.*``: the usual sizes, ``feed_forward_length`` per layer, ``rope.freq_base`` (full layers) and
  ``rope.freq_base_swa``, ``attention.sliding_window``, ``final_logit_softcapping``, and the AltUp / per-layer /
  shared-KV / activation-sparsity keys (written for other readers; llama.cpp's loader does not read them);
- tensors named by gguf-py's Gemma 3n table, norms stored as they are (Gemma 3n's RMSNorm multiplies by ``w``, not
  ``1 + w``), the three ``altup_projections`` and ``altup_unembed_projections`` stacked into one ``[3, D, D]`` tensor
  each, ``correct_output_scale`` as ``altup_correct_scale.weight``, the token and per-layer embeddings zero-padded to
  ``vocab_size`` rows, the AltUp coefficients kept f32.

llama.cpp hard-codes much of Gemma 3n (``llama-hparams.h``, ``gemma3n.cpp``): every 5th layer full attention, the
first 20 layers holding the KV cache (later ones reuse layer 18's / 19's), 4 AltUp inputs with the first active,
LAuReL rank 64, 256-wide per-layer inputs, gaussian top-k sparsity (0.95) on the first 10 layers, a final logit
soft-cap of 30, the AltUp output scale, one FFN width for all layers and tanh-GELU. `gemma3n_problems` refuses a model
that differs from any of these before anything is written. transformers 5.x saves no K / V projections for the
KV-shared layers, but llama.cpp requires them on every layer: the export writes the source layer's (they are never
read, because those layers take their keys and values from the cache of layer 18 / 19).

transformers cannot read a ``gemma3n`` GGUF, so `read_gguf_gemma3n` rebuilds ``Gemma3nForCausalLM`` from the file
with llama.cpp's settings: the model llama.cpp runs, in PyTorch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import numpy as np
import torch

from gemma3.export.gguf_format import GgufLayout, gguf_tensor_name, load_gguf_arrays, read_gguf_file, rope_parameters

ARCH = "gemma3n"
SWA_PERIOD = 5  # llama.cpp: swa_period = 5 (the converter's bool-array pattern is not read)
KV_LAYERS = 20  # llama.cpp: n_layer_kv_from_start = 20
ALTUP_INPUTS, ALTUP_ACTIVE, LAUREL_RANK, PER_LAYER_WIDTH = 4, 0, 64, 256
SPARSE_LAYERS, SPARSITY = 10, 0.95  # llama.cpp: n_layer_sparsity = 10, f_sparsity_std_mul = icdf(0.95)
SOFTCAP = 30.0  # llama.cpp: f_final_logit_softcapping = 30, always applied for gemma3n
F32_TENSORS = ("altup_correct_coef", "altup_predict_coef")  # the converter keeps these f32
STACK_PART = r"(model\.altup_(?:unembed_)?projections)\.(\d+)\.weight"  # one of the three AltUp matrices
STACKED = {"model.altup_projections": "altup_proj", "model.altup_unembed_projections": "altup_unembd_proj"}


def layer_types(num_layers: int) -> list[str]:
    return ["full_attention" if i % SWA_PERIOD == SWA_PERIOD - 1 else "sliding_attention" for i in range(num_layers)]


def sparsity_pattern(num_layers: int) -> list[float]:
    return [SPARSITY if i < SPARSE_LAYERS else 0.0 for i in range(num_layers)]


def gemma3n_problems(config) -> list[str]:
    """Why llama.cpp's ``gemma3n`` architecture would run this text config differently (or not load it)."""
    out = []
    n = config.num_hidden_layers
    if list(config.layer_types) != layer_types(n):
        out.append(f"layer_types differ from llama.cpp's fixed pattern (every {SWA_PERIOD}th layer full)")
    if n - config.num_kv_shared_layers != KV_LAYERS:
        out.append(f"{n - config.num_kv_shared_layers} layers hold KV ({n} layers, {config.num_kv_shared_layers} "
                   f"shared); llama.cpp fixes {KV_LAYERS}")  # fmt: skip
    for name, want in (("altup_num_inputs", ALTUP_INPUTS), ("altup_active_idx", ALTUP_ACTIVE),
                       ("laurel_rank", LAUREL_RANK), ("hidden_size_per_layer_input", PER_LAYER_WIDTH)):  # fmt: skip
        if getattr(config, name) != want:
            out.append(f"{name} is {getattr(config, name)}; llama.cpp fixes {want}")
    pattern = list(config.activation_sparsity_pattern or [0.0] * n)
    if not np.allclose(pattern, sparsity_pattern(n)):
        out.append(f"activation_sparsity_pattern {pattern}; llama.cpp fixes {SPARSITY} on the first {SPARSE_LAYERS}")
    if not math.isclose(float(config.final_logit_softcapping or 0.0), SOFTCAP):
        out.append(f"final_logit_softcapping is {config.final_logit_softcapping}; llama.cpp always applies {SOFTCAP}")
    if not config.altup_correct_scale:
        out.append("altup_correct_scale is off; llama.cpp always applies the AltUp output scale")
    sizes = config.intermediate_size if isinstance(config.intermediate_size, list) else [config.intermediate_size]
    if len(set(sizes)) != 1:
        out.append(f"intermediate_size varies by layer {sorted(set(sizes))}; llama.cpp uses layer 0's for all")
    if getattr(config, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        out.append(f"hidden_activation {config.hidden_activation}; llama.cpp uses tanh-approximated GELU")
    for kind in ("full_attention", "sliding_attention"):
        if rope_parameters(config, kind).get("rope_type", "default") != "default":
            out.append(f"{kind} RoPE scaling {rope_parameters(config, kind)}; llama.cpp's gemma3n reads none")
    if config.vocab_size_per_layer_input > config.vocab_size:
        out.append(f"vocab_size_per_layer_input {config.vocab_size_per_layer_input} > vocab_size")
    return out


def gemma3n_keys(writer, config, state=None) -> None:
    """The ``gemma3n.*`` keys beyond the common ones, as llama.cpp's converter writes them."""
    from torch.distributions import Normal

    n = config.num_hidden_layers
    sizes = config.intermediate_size if isinstance(config.intermediate_size, list) else [config.intermediate_size] * n
    writer.add_feed_forward_length([int(s) for s in sizes])
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_freq_base(float(rope_parameters(config, "full_attention").get("rope_theta", 1_000_000.0)))
    writer.add_rope_freq_base_swa(float(rope_parameters(config, "sliding_attention").get("rope_theta", 10_000.0)))
    writer.add_sliding_window(config.sliding_window)
    writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    writer.add_altup_active_idx(config.altup_active_idx)
    writer.add_altup_num_inputs(config.altup_num_inputs)
    writer.add_embedding_length_per_layer_input(config.hidden_size_per_layer_input)
    writer.add_shared_kv_layers(config.num_kv_shared_layers)
    normal = Normal(0.0, 1.0)
    writer.add_activation_sparsity_scale(
        [float(normal.icdf(torch.tensor(s))) if s > 0 else -math.inf for s in config.activation_sparsity_pattern]
    )
    writer.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])


def _kv_source(config, layer: int) -> int:
    """The layer whose KV cache a shared layer reads in llama.cpp (18 for sliding, 19 for full)."""
    return KV_LAYERS - (2 if config.layer_types[layer] == "sliding_attention" else 1)


def gemma3n_tensors(config, state: dict[str, torch.Tensor], tied: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) pairs in llama.cpp's gemma3n layout, from a ``Gemma3nForCausalLM`` state dict."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3N, config.num_hidden_layers)
    state = dict(state)
    for layer in range(KV_LAYERS, config.num_hidden_layers):  # transformers 5.x keeps no K / V on shared layers
        src = _kv_source(config, layer)
        for part in ("k_proj.weight", "v_proj.weight", "k_norm.weight"):
            state.setdefault(f"model.layers.{layer}.self_attn.{part}", state[f"model.layers.{src}.self_attn.{part}"])
    stacked: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        match = re.fullmatch(STACK_PART, hf_name)
        if match:
            stacked.setdefault(match.group(1), []).append((int(match.group(2)), tensor))
            continue
        data = tensor.detach().to(torch.float32)
        if hf_name in ("model.embed_tokens.weight", "model.embed_tokens_per_layer.weight"):
            pad = config.vocab_size - data.shape[0]
            data = torch.cat([data, data.new_zeros(pad, data.shape[1])]) if pad > 0 else data
        yield gguf_tensor_name(names, hf_name), data
    for base, parts in stacked.items():
        yield f"{STACKED[base]}.weight", torch.stack([t.detach().to(torch.float32) for _, t in sorted(parts)])


def read_gguf_gemma3n(path, dtype: torch.dtype = torch.float32):
    """Load a ``gemma3n`` GGUF as ``Gemma3nForCausalLM`` with llama.cpp's settings (no tokenizer: transformers has
    no Gemma 3n GGUF reader; the vocabulary is checked through llama.cpp)."""
    import gguf
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    key, arrays = read_gguf_file(path, ARCH)
    n = int(key("block_count"))
    vocab = arrays["token_embd.weight"].shape[0]
    ff = key("feed_forward_length")
    config = Gemma3nTextConfig(
        vocab_size=vocab, vocab_size_per_layer_input=vocab, hidden_size=int(key("embedding_length")),
        intermediate_size=int(ff[0] if isinstance(ff, list) else ff), num_hidden_layers=n,
        num_attention_heads=int(key("attention.head_count")), num_key_value_heads=int(key("attention.head_count_kv")),
        head_dim=int(key("attention.key_length")), max_position_embeddings=int(key("context_length")),
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        sliding_window=int(key("attention.sliding_window")),
        layer_types=layer_types(n), num_kv_shared_layers=n - KV_LAYERS, final_logit_softcapping=SOFTCAP,
        altup_num_inputs=ALTUP_INPUTS, altup_active_idx=ALTUP_ACTIVE, laurel_rank=LAUREL_RANK,
        hidden_size_per_layer_input=PER_LAYER_WIDTH, activation_sparsity_pattern=sparsity_pattern(n),
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": float(key("rope.freq_base"))},
                         "sliding_attention": {"rope_type": "default",
                                               "rope_theta": float(key("rope.freq_base_swa", 10_000.0))}},
        tie_word_embeddings="output.weight" not in arrays,
    )  # fmt: skip
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3N, n)

    def source(hf_name: str) -> np.ndarray:
        match = re.fullmatch(STACK_PART, hf_name)
        if match:  # one of the stacked AltUp matrices
            return arrays[f"{STACKED[match.group(1)]}.weight"][int(match.group(2))]
        return arrays[gguf_tensor_name(names, hf_name)]

    return load_gguf_arrays(Gemma3nForCausalLM(config), arrays, source).to(dtype)


LAYOUT = GgufLayout(ARCH, gemma3n_problems, gemma3n_keys, gemma3n_tensors, F32_TENSORS)
