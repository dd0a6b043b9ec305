"""The dense Gemma 4 text backbone in llama.cpp's ``gemma4`` GGUF layout, and the reader that loads one back.

What llama.cpp's converter (``Gemma4Model``) writes and its loader (``src/models/gemma4.cpp``) reads, all from the
file (unlike Gemma 3n, llama.cpp hard-codes little of Gemma 4):

- keys ``gemma4.*``: head sizes for full layers (``attention.key_length``, ``rope.dimension_count``) and sliding ones
  (``..._swa``), the sliding / full pattern as a bool array, the number of KV-shared layers, the per-layer input
  width, ``rope.freq_base`` / ``rope.freq_base_swa``, the final soft-cap, and ``feed_forward_length`` per layer when
  the KV-shared layers have the double-wide MLP;
- tensors named by gguf-py's Gemma 4 table, norms as they are (Gemma 4's RMSNorm multiplies by ``w``),
  ``layer_scalar`` as ``layer_output_scale.weight``, no K / V for the KV-shared layers, the per-layer embedding
  zero-padded to the vocabulary, and a generated ``rope_freqs`` ([global_head_dim / 2]: 1 on the rotated pairs,
  1e30 on the others) that gives the full-attention layers transformers' "proportional" partial RoPE.

`gemma4_problems` refuses what llama.cpp would run differently or what this exporter does not write: no final soft-cap
(llama.cpp applies 30 when the key is missing), mixture-of-experts blocks, ``attention_k_eq_v``, bidirectional
attention, a KV-sharing tail whose producers are not (sliding, full) as llama.cpp's reuse rule assumes, RoPE
scaling on sliding layers, other activations. transformers reads a ``gemma4`` GGUF only in part (it ignores the
sliding pattern, KV sharing, soft-cap and per-layer width), so `read_gguf_gemma4` rebuilds ``Gemma4ForCausalLM``
from the file itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gemma3.export.gguf_format import GgufLayout, gguf_tensor_name, load_gguf_arrays, read_gguf_file, rope_parameters

ARCH = "gemma4"
NO_ROTATION = 1e30  # the converter's frequency factor for pairs proportional RoPE leaves unrotated


def gemma4_problems(config) -> list[str]:
    """Why llama.cpp's ``gemma4`` architecture would run this text config differently, or what is not written."""
    out = []
    if not config.final_logit_softcapping:
        out.append("final_logit_softcapping is unset; llama.cpp applies 30 when the file has none")
    if getattr(config, "enable_moe_block", False) or getattr(config, "num_experts", None):
        out.append("mixture-of-experts blocks are not written by this exporter")
    if getattr(config, "attention_k_eq_v", False):
        out.append("attention_k_eq_v (values from the key projection) is not written by this exporter")
    if getattr(config, "use_bidirectional_attention", None):
        out.append("use_bidirectional_attention: llama.cpp's gemma4 text graph is causal")
    if getattr(config, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        out.append(f"hidden_activation {config.hidden_activation}; llama.cpp uses tanh-approximated GELU")
    n, shared = config.num_hidden_layers, config.num_kv_shared_layers
    if shared:
        tail = config.layer_types[n - shared - 2 : n - shared]
        if tail != ["sliding_attention", "full_attention"]:
            out.append(f"the last two KV-holding layers are {tail}; llama.cpp's KV reuse takes sliding layers' from "
                       "the second-to-last and full layers' from the last")  # fmt: skip
    sliding, full = rope_parameters(config, "sliding_attention"), rope_parameters(config, "full_attention")
    if sliding.get("rope_type", "default") != "default" or sliding.get("partial_rotary_factor", 1.0) != 1.0:
        out.append(f"sliding layers use RoPE {sliding}; the converter writes plain RoPE for them")
    if full.get("rope_type", "default") not in ("default", "proportional"):
        out.append(f"full-attention RoPE type {full.get('rope_type')!r}; llama.cpp's gemma4 has default / proportional")
    return out


def _dims(config, state: dict[str, torch.Tensor]) -> dict:
    """Per-layer head size, KV heads and FFN width, read off the weights (transformers 5.x folds the full layers'
    head size into ``per_layer_config``)."""
    n = config.num_hidden_layers
    head = [int(state[f"model.layers.{i}.self_attn.q_norm.weight"].shape[0]) for i in range(n)]
    kv_layers = n - config.num_kv_shared_layers
    kv = [int(state[f"model.layers.{i}.self_attn.k_proj.weight"].shape[0]) // head[i] for i in range(kv_layers)]
    ffn = [int(state[f"model.layers.{i}.mlp.gate_proj.weight"].shape[0]) for i in range(n)]
    swa = [t == "sliding_attention" for t in config.layer_types]
    return {"head": head, "kv": kv, "ffn": ffn, "swa": swa, "head_swa": next(h for h, s in zip(head, swa) if s),
            "head_full": next(h for h, s in zip(head, swa) if not s)}  # fmt: skip


def gemma4_keys(writer, config, state: dict[str, torch.Tensor]) -> None:
    """The ``gemma4.*`` keys beyond the common ones, as llama.cpp's converter writes them."""
    d = _dims(config, state)
    if len(set(d["kv"])) > 1:
        by_type = {s: k for k, s in zip(d["kv"], d["swa"])}
        writer.add_head_count_kv([by_type[s] for s in d["swa"]])  # overrides the common scalar
    writer.add_feed_forward_length(d["ffn"] if len(set(d["ffn"])) > 1 else d["ffn"][0])
    writer.add_key_length(d["head_full"])
    writer.add_value_length(d["head_full"])
    writer.add_key_length_swa(d["head_swa"])
    writer.add_value_length_swa(d["head_swa"])
    writer.add_rope_dimension_count(d["head_full"])  # partial rotation is carried by rope_freqs
    writer.add_rope_dimension_count_swa(d["head_swa"])
    writer.add_rope_freq_base(float(rope_parameters(config, "full_attention").get("rope_theta", 1_000_000.0)))
    writer.add_rope_freq_base_swa(float(rope_parameters(config, "sliding_attention").get("rope_theta", 10_000.0)))
    writer.add_sliding_window(config.sliding_window)
    writer.add_sliding_window_pattern(d["swa"])
    writer.add_shared_kv_layers(config.num_kv_shared_layers)
    writer.add_embedding_length_per_layer_input(config.hidden_size_per_layer_input or 0)
    writer.add_final_logit_softcapping(float(config.final_logit_softcapping))


def rope_freqs(config, head_full: int) -> torch.Tensor:
    """[head_full / 2] frequency factors: 1 for the pairs proportional RoPE rotates, 1e30 (no rotation) for the rest."""
    full = rope_parameters(config, "full_attention")
    factor = float(full.get("partial_rotary_factor", 1.0)) if full.get("rope_type") == "proportional" else 1.0
    rotated = int(head_full * factor / 2)
    return torch.tensor([1.0] * rotated + [NO_ROTATION] * (head_full // 2 - rotated), dtype=torch.float32)


def gemma4_tensors(config, state: dict[str, torch.Tensor], tied: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) pairs in llama.cpp's gemma4 layout, from a ``Gemma4ForCausalLM`` state dict."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, config.num_hidden_layers)
    yield "rope_freqs.weight", rope_freqs(config, _dims(config, state)["head_full"])
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        data = tensor.detach().to(torch.float32)
        if hf_name == "model.embed_tokens_per_layer.weight" and data.shape[0] < config.vocab_size:
            data = torch.cat([data, data.new_zeros(config.vocab_size - data.shape[0], data.shape[1])])
        yield gguf_tensor_name(names, hf_name), data


def read_gguf_gemma4(path, dtype: torch.dtype = torch.float32):
    """Load a dense ``gemma4`` GGUF as ``Gemma4ForCausalLM`` with every setting llama.cpp reads from it."""
    import gguf
    from transformers.models.gemma4 import Gemma4ForCausalLM, Gemma4TextConfig

    key, arrays = read_gguf_file(path, ARCH)
    n = int(key("block_count"))
    swa = [bool(s) for s in key("attention.sliding_window_pattern")]
    ffn = key("feed_forward_length")
    ffn = ffn if isinstance(ffn, list) else [ffn] * n
    shared = int(key("attention.shared_kv_layers", 0))
    freqs = arrays["rope_freqs.weight"]
    rotated = int((freqs < NO_ROTATION / 2).sum())
    head_full = int(key("attention.key_length"))
    full_rope = {"rope_type": "proportional", "partial_rotary_factor": 2 * rotated / head_full,
                 "rope_theta": float(key("rope.freq_base"))}  # fmt: skip
    kv = key("attention.head_count_kv")
    config = Gemma4TextConfig(
        vocab_size=arrays["token_embd.weight"].shape[0], hidden_size=int(key("embedding_length")),
        intermediate_size=int(ffn[0]), use_double_wide_mlp=len(set(ffn)) > 1, num_hidden_layers=n,
        num_attention_heads=int(key("attention.head_count")),
        num_key_value_heads=int(kv[swa.index(True)] if isinstance(kv, list) else kv),
        num_global_key_value_heads=int(kv[swa.index(False)]) if isinstance(kv, list) else None,
        head_dim=int(key("attention.key_length_swa")), global_head_dim=head_full,
        max_position_embeddings=int(key("context_length")), rms_norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        sliding_window=int(key("attention.sliding_window")),
        layer_types=["sliding_attention" if s else "full_attention" for s in swa], num_kv_shared_layers=shared,
        hidden_size_per_layer_input=int(key("embedding_length_per_layer_input")),
        vocab_size_per_layer_input=arrays["token_embd.weight"].shape[0],
        final_logit_softcapping=float(key("final_logit_softcapping", 30.0)),
        rope_parameters={"full_attention": full_rope,
                         "sliding_attention": {"rope_type": "default", "rope_theta": float(key("rope.freq_base_swa"))}},
        tie_word_embeddings="output.weight" not in arrays,
    )  # fmt: skip
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, n)
    model = Gemma4ForCausalLM(config)
    return load_gguf_arrays(model, arrays, lambda hf_name: arrays[gguf_tensor_name(names, hf_name)]).to(dtype)


LAYOUT = GgufLayout(ARCH, gemma4_problems, gemma4_keys, gemma4_tensors, vocab=ARCH, bpe=True)
