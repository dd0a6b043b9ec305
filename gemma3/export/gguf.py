"""The (merged) Gemma 3 text backbone as a GGUF file for llama.cpp, and the reader that loads one back.

What llama.cpp's ``gemma3`` architecture reads (its ``convert_hf_to_gguf.py`` and ``llama-model.cpp``):

- keys ``gemma3.{context_length, embedding_length, block_count, feed_forward_length, attention.head_count,
  attention.head_count_kv, attention.key_length, attention.value_length, attention.layer_norm_rms_epsilon,
  attention.sliding_window, rope.freq_base}``, ``rope.scaling.*`` for linear RoPE scaling and
  ``final_logit_softcapping`` when set; a SentencePiece-style vocabulary (``tokenizer.ggml.model = llama``) with
  scores and token types;
- tensors named by gguf-py's Gemma 3 table (``token_embd``, ``blk.N.attn_q`` ...), every RMSNorm weight stored as
  ``1 + w`` (llama.cpp multiplies by the weight; transformers' Gemma norm multiplies by ``1 + w``), no Q/K permute,
  the output head omitted when tied to the embedding.

llama.cpp fixes some things the HF config can change, so `llama_cpp_problems` refuses a model it would run
differently: the sliding / full layer pattern (every 6th layer full), RoPE base 10000 on sliding layers, the
attention scale ``1/sqrt(head_dim)`` (``hidden/heads`` for the 62-layer 27B) and no attention soft-capping.

Types: ``f32``, ``f16`` (2-D weights; norms and other 1-D tensors stay f32, as llama.cpp's converter keeps them)
and ``q8_0`` (weights whose rows are a multiple of 32 values; others fall back to f16, as the converter does).

Gemma 3n backbones go through `gemma3.export.gguf_gemma3n` (llama.cpp's ``gemma3n`` layout); the layout of each
text architecture is a `GgufLayout` record chosen by the config's ``model_type``; dense Gemma 4 goes through
`gemma3.export.gguf_gemma4` (llama.cpp's ``gemma4`` layout).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gemma3.export import gguf_gemma3n, gguf_gemma4
from gemma3.export.gguf_format import GgufLayout, gguf_tensor_name, rope_parameters

logger = logging.getLogger(__name__)

ARCH = "gemma3"
GGUF_TYPES = ("f16", "q8_0", "f32")
SWA_PATTERN = 6  # llama.cpp: hparams.set_swa_pattern(6) for gemma3 (layer i is full iff (i + 1) % 6 == 0)
SWA_ROPE_BASE = 10000.0  # llama.cpp: rope_freq_base_train_swa = 10000 for gemma3
LAYERS_27B = 62  # llama.cpp scales the 27B's queries by hidden/heads instead of head_dim
# GGUF token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPECIAL_SCORE = -1000.0  # what the converter gives control and user-defined pieces


def llama_cpp_scale_scalar(config) -> int:
    """The ``query_pre_attn_scalar`` llama.cpp's gemma3 graph implies (its attention scale is 1/sqrt of this)."""
    if config.num_hidden_layers == LAYERS_27B:
        return config.hidden_size // config.num_attention_heads  # llama.cpp divides integers too
    return int(config.head_dim)


def llama_cpp_layer_types(num_layers: int) -> list[str]:
    return ["full_attention" if (i + 1) % SWA_PATTERN == 0 else "sliding_attention" for i in range(num_layers)]


def llama_cpp_problems(config) -> list[str]:
    """Why llama.cpp's ``gemma3`` architecture would run this text config differently; empty if it would not."""
    problems = []
    want = llama_cpp_layer_types(config.num_hidden_layers)
    if list(config.layer_types) != want:
        problems.append(f"layer_types {config.layer_types} differ from llama.cpp's fixed pattern (every "
                        f"{SWA_PATTERN}th layer full): {want}")  # fmt: skip
    if not math.isclose(float(config.query_pre_attn_scalar), llama_cpp_scale_scalar(config)):
        problems.append(f"query_pre_attn_scalar is {config.query_pre_attn_scalar}; llama.cpp scales queries by "
                        f"1/sqrt({llama_cpp_scale_scalar(config):g})")  # fmt: skip
    local = rope_parameters(config, "sliding_attention")
    if float(local.get("rope_theta", SWA_ROPE_BASE)) != SWA_ROPE_BASE or local.get("rope_type", "default") != "default":
        problems.append(f"sliding layers use RoPE {local}; llama.cpp fixes base {SWA_ROPE_BASE:g}, no scaling")
    if getattr(config, "attn_logit_softcapping", None):
        problems.append("attn_logit_softcapping is set; llama.cpp's gemma3 graph has no attention soft-capping")
    full = rope_parameters(config, "full_attention")
    if full.get("rope_type", "default") not in ("default", "linear"):
        problems.append(f"full-attention RoPE type {full.get('rope_type')!r}; the converter writes linear scaling only")
    if getattr(config, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        problems.append(f"hidden_activation {config.hidden_activation}; llama.cpp uses tanh-approximated GELU")
    return problems


def gguf_vocabulary(tokenizer, sentencepiece: bool = True) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types as the converter writes a Gemma SentencePiece vocabulary: added special tokens are
    CONTROL, other added tokens and runs of spaces (stored as real spaces) USER_DEFINED, ``<0xNN>`` BYTE; normal
    pieces score ``-(their rank among normal pieces)`` (the merge priority), the others ``-1000`` (BYTE: 0).
    ``sentencepiece=False`` keeps runs of spaces as the pieces they are (NORMAL), as the BPE path writes them."""
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    tokens = [""] * size
    for piece, i in vocab.items():
        tokens[i] = piece
    added = {i: tok for i, tok in tokenizer.added_tokens_decoder.items()}
    types, scores, rank = [], [], 0
    for i, piece in enumerate(tokens):
        if i in added:
            types.append(CONTROL if added[i].special else USER_DEFINED)
        elif sentencepiece and len(piece) >= 2 and set(piece) == {"\u2581"}:
            tokens[i] = " " * len(piece)
            types.append(USER_DEFINED)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            types.append(BYTE)
        else:
            types.append(NORMAL)
        if types[-1] == NORMAL:
            scores.append(-float(rank))
            rank += 1
        else:
            scores.append(0.0 if types[-1] == BYTE else SPECIAL_SCORE)
    return tokens, scores, types


def gguf_bpe_vocabulary(tokenizer) -> tuple[list[str], list[int], list[str]]:
    """Tokens, types and merges as llama.cpp's converter writes a Gemma 4 vocabulary (its ``gemma4`` tokenizer:
    BPE over the pieces as they are, with byte fallback): added special tokens CONTROL, other added tokens
    USER_DEFINED, ``<0xNN>`` BYTE, the rest NORMAL; merges from the tokenizer's BPE model."""
    import json

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE" or not model.get("merges"):
        raise ValueError(f"llama.cpp's gemma4 vocabulary is BPE with merges; this tokenizer's model is "
                         f"{model.get('type')!r} without merges")  # fmt: skip
    tokens, _, types = gguf_vocabulary(tokenizer, sentencepiece=False)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, types, merges


def text_backbone(model) -> tuple[object, dict[str, torch.Tensor]]:
    """(text config, state dict named as ``Gemma3ForCausalLM`` names it) of a causal LM, a native Gemma 3 VLM or the
    custom model's language model."""
    if hasattr(model, "language_model") and not hasattr(model.language_model, "lm_head"):
        # native VLM: model.model.language_model (Gemma3TextModel) + lm_head
        config = model.config.get_text_config()
        state = {f"model.{k}": v for k, v in model.model.language_model.state_dict().items()}
        state["lm_head.weight"] = model.lm_head.weight
        return config, state
    lm = getattr(model, "language_model", model)
    return lm.config, dict(lm.state_dict())


def _tensor_type(name: str, array: np.ndarray, gguf_type: str):
    import gguf

    if array.ndim < 2 or gguf_type == "f32":
        return gguf.GGMLQuantizationType.F32
    if gguf_type == "q8_0":
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
        if array.shape[-1] % block == 0:
            return gguf.GGMLQuantizationType.Q8_0
        logger.info("%s: rows of %d values are not a multiple of %d; kept as f16", name, array.shape[-1], block)
    return gguf.GGMLQuantizationType.F16


def _gemma3_keys(writer, config, state=None) -> None:
    import gguf

    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_sliding_window(config.sliding_window)
    full = rope_parameters(config, "full_attention")
    writer.add_rope_freq_base(float(full.get("rope_theta", 10000.0)))
    if full.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(full["factor"]))
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))


def _gemma3_tensors(config, state: dict[str, torch.Tensor], tied: bool):
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, config.num_hidden_layers)
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        data = tensor.detach().to(torch.float32)
        if hf_name.endswith("norm.weight"):
            data = data + 1.0  # llama.cpp multiplies by the stored weight, Gemma's RMSNorm by (1 + w)
        yield gguf_tensor_name(names, hf_name), data


# The registry: text config model_type -> its layout (each architecture's module declares its own record).
LAYOUTS: dict[str, GgufLayout] = {
    "gemma3_text": GgufLayout(ARCH, llama_cpp_problems, _gemma3_keys, _gemma3_tensors),
    "gemma3n_text": gguf_gemma3n.LAYOUT,
    "gemma4_text": gguf_gemma4.LAYOUT,
}


def layout_for(config) -> GgufLayout:
    """The GGUF layout of a text config (a clear error naming the supported ones)."""
    layouts = LAYOUTS
    model_type = getattr(config, "model_type", None)
    if model_type not in layouts:
        raise ValueError(f"the text backbone is {model_type!r}; GGUF export covers {sorted(layouts)}")
    return layouts[model_type]


def export_problems(config) -> list[str]:
    """Why this text config cannot be exported for llama.cpp as trained (empty when it can)."""
    try:
        return layout_for(config).problems(config)
    except ValueError as err:
        return [str(err)]


def write_gguf(model, tokenizer, path: str | Path, gguf_type: str = "f16", name: str | None = None,
               chat_template: str | None = None) -> dict:  # fmt: skip
    """Write ``model``'s text backbone (Gemma 3, 3n or 4) with ``tokenizer`` to ``path``; returns a summary."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"GGUF type {gguf_type!r}: choose one of {GGUF_TYPES}")
    config, state = text_backbone(model)
    layout = layout_for(config)
    problems = layout.problems(config)
    if problems:
        raise ValueError("llama.cpp would not run this language model as trained: " + "; ".join(problems))
    tied = bool(getattr(config, "tie_word_embeddings", True))
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]  # fmt: skip

    writer = gguf.GGUFWriter(str(path), layout.arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or "video-gemma export")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    layout.write_keys(writer, config, state)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    if layout.bpe:
        tokens, types, merges = gguf_bpe_vocabulary(tokenizer)
        scores = [SPECIAL_SCORE] * len(tokens)
    else:
        tokens, scores, types = gguf_vocabulary(tokenizer)
    if len(tokens) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokens)} pieces, the model's vocab_size is {config.vocab_size}")
    for i in range(len(tokens), config.vocab_size):  # the embedding's extra rows, as the converter pads them
        tokens.append(f"[PAD{i}]")
        scores.append(SPECIAL_SCORE)
        types.append(UNUSED)
    writer.add_tokenizer_model(layout.vocab)
    if layout.bpe:
        writer.add_token_merges(merges)
    else:
        writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):  # fmt: skip
        value = getattr(tokenizer, key, None)
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if template:
        writer.add_chat_template(template)

    counts: dict[str, int] = {}
    for gguf_name, data in layout.tensors(config, state, tied):
        array = data.numpy()
        qtype = _tensor_type(gguf_name, array, gguf_type)
        if gguf_name.rsplit(".", 1)[0].split(".")[-1] in layout.f32 or gguf_name.endswith("_norm.weight"):
            qtype = gguf.GGMLQuantizationType.F32
        if qtype == gguf.GGMLQuantizationType.F16:
            array = array.astype(np.float16)
        elif qtype != gguf.GGMLQuantizationType.F32:
            array = gguf.quants.quantize(array, qtype)
        writer.add_tensor(gguf_name, array, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    return {"architecture": layout.arch, "type": gguf_type, "tensors": counts, "tied_output": tied,
            "layers": config.num_hidden_layers, "vocab_size": len(tokens)}  # fmt: skip


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF header holds besides the tensor data: scalar and string metadata, the length of each array
    field (the vocabulary's 262k pieces are not decoded) and the tensor names."""

    scalars: dict
    array_lengths: dict[str, int]
    tensor_names: list[str]


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """The header of a GGUF file, read straight from its bytes: the scalars are what a full ``gguf.GGUFReader``
    parse gives for those keys, without building objects for a 262k-token vocabulary."""
    import struct

    def read(f, fmt: str):
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

    def string(f) -> str:
        return f.read(read(f, "<Q")).decode("utf-8", errors="replace")

    def skip_items(f, item: int, count: int) -> None:
        if item in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[item]) * count, 1)
        else:
            for _ in range(count):
                skip(f, item)

    def skip(f, kind: int) -> None:
        if kind == 8:
            f.seek(read(f, "<Q"), 1)
        elif kind == 9:
            skip_items(f, read(f, "<I"), read(f, "<Q"))
        else:
            f.seek(struct.calcsize(_SCALARS[kind]), 1)

    scalars, lengths, names = {}, {}, []
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version, tensor_count, kv_count = read(f, "<I"), read(f, "<Q"), read(f, "<Q")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old")
        for _ in range(kv_count):
            key, kind = string(f), read(f, "<I")
            if kind == 8:
                scalars[key] = string(f)
            elif kind in _SCALARS:
                scalars[key] = read(f, _SCALARS[kind])
            elif kind == 9:
                item, lengths[key] = read(f, "<I"), read(f, "<Q")
                skip_items(f, item, lengths[key])
            else:
                raise ValueError(f"{path}: metadata {key!r} has unknown GGUF value type {kind}")
        for _ in range(tensor_count):
            names.append(string(f))
            f.seek(8 * read(f, "<I") + 4 + 8, 1)  # dims, type, offset
    return GGUFHeader(scalars, lengths, names)


def gguf_scalars(path: str | Path) -> dict:
    """The scalar and string metadata of a GGUF file (arrays skipped), from its header (`read_gguf_header`)."""
    return read_gguf_header(path).scalars


def gguf_text_config(path: str | Path):
    """The ``Gemma3TextConfig`` transformers' GGUF reader derives from a Gemma 3 file's header (its own key table,
    vocabulary size from the token list, tied head when there is no ``output.weight``), plus the settings llama.cpp
    implies and that reader leaves at its defaults: query scale, layer pattern, sliding-layer RoPE base, RoPE
    scaling and final soft-capping."""
    from transformers import Gemma3TextConfig
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    header = read_gguf_header(path)
    keys = header.scalars
    if keys.get("general.architecture") != ARCH:
        raise ValueError(f"{path}: general.architecture is {keys.get('general.architecture')!r}, not {ARCH!r}")
    kwargs = {}
    for name, field in GGUF_CONFIG_MAPPING[ARCH].items():
        if field and f"{ARCH}.{name}" in keys:
            kwargs[field] = keys[f"{ARCH}.{name}"]
    kwargs.setdefault("vocab_size", header.array_lengths["tokenizer.ggml.tokens"])
    kwargs.pop("rope_theta", None)  # set per layer type below
    for name, field in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id"),
                        ("unknown", "unk_token_id")):  # fmt: skip
        if f"tokenizer.ggml.{name}_token_id" in keys:
            kwargs[field] = keys[f"tokenizer.ggml.{name}_token_id"]
    config = Gemma3TextConfig(**kwargs, tie_word_embeddings="output.weight" not in header.tensor_names)
    config.query_pre_attn_scalar = llama_cpp_scale_scalar(config)
    config.layer_types = llama_cpp_layer_types(config.num_hidden_layers)
    full = {"rope_type": "default", "rope_theta": float(keys[f"{ARCH}.rope.freq_base"])}
    if keys.get(f"{ARCH}.rope.scaling.type") == "linear":
        full = {"rope_type": "linear", "rope_theta": full["rope_theta"],
                "factor": float(keys[f"{ARCH}.rope.scaling.factor"])}  # fmt: skip
    config.rope_parameters = {"full_attention": full,
                              "sliding_attention": {"rope_type": "default", "rope_theta": SWA_ROPE_BASE}}  # fmt: skip
    config.final_logit_softcapping = keys.get(f"{ARCH}.final_logit_softcapping")
    return config


def read_gguf(path: str | Path, dtype: torch.dtype = torch.float32, with_tokenizer: bool = True):
    """Load a Gemma 3 GGUF file as ``Gemma3ForCausalLM`` (+ its tokenizer, or None): the config from the header
    (`gguf_text_config`), the tensors through transformers' GGUF reader. Reading a 262k-piece vocabulary (which
    that reader does for the tensors too) takes tens of seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    config = gguf_text_config(path)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, config=config, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name) if with_tokenizer else None
    return model.eval(), tokenizer


def _llama_cpp_scores(path: str | Path, sequences: list[list[int]], threads: int, f32_cache: bool):
    """llama.cpp's teacher-forced logits [L, V] of each token sequence, one sequence at a time."""
    try:
        from llama_cpp import Llama
    except ImportError as err:
        raise ImportError("llama-cpp-python is not installed: pip install -r requirements-llama.txt") from err

    longest = max(len(s) for s in sequences)
    cache = {"type_k": 0, "type_v": 0} if f32_cache else {}  # GGML_TYPE_F32
    llm = Llama(model_path=str(path), logits_all=True, n_ctx=max(64, longest), n_threads=threads, verbose=False,
                **cache)  # fmt: skip
    try:
        for ids in sequences:
            llm.reset()
            llm.eval(list(ids))
            yield np.array(llm.scores[: len(ids)])  # a copy: llama-cpp-python reuses the buffer
    finally:
        llm.close()


def llama_cpp_logits(path: str | Path, sequences: list[list[int]], threads: int = 2,
                     f32_cache: bool = False) -> list[np.ndarray]:  # fmt: skip
    """llama.cpp's teacher-forced logits [L, V] at every position of each token sequence (llama-cpp-python, an
    optional extra: ``pip install -r requirements-llama.txt``); ``f32_cache`` keeps the KV cache in f32 instead of
    llama.cpp's default f16, to compare the graph rather than the cache's rounding."""
    return list(_llama_cpp_scores(path, sequences, threads, f32_cache))


def llama_cpp_next_tokens(path: str | Path, sequences: list[list[int]], threads: int = 2) -> list[np.ndarray]:
    """llama.cpp's teacher-forced next-token choice [L] at every position of each token sequence."""
    return [logits.argmax(-1) for logits in _llama_cpp_scores(path, sequences, threads, False)]
