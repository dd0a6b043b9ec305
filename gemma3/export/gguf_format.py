"""GGUF building blocks every architecture's layout shares: tensor names through gguf-py's tables, GGUF tensors
as arrays, reading a file's metadata and tensors back into a model, and the `GgufLayout` record that says how one
text architecture goes into GGUF (`gemma3.export.gguf` holds the registry of layouts and the writer)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def rope_parameters(config, layer_type: str) -> dict:
    params = getattr(config, "rope_parameters", None) or {}
    return dict(params.get(layer_type, params)) if isinstance(params, dict) else {}


def gguf_tensor_name(names, hf_name: str) -> str:
    """The GGUF name of a transformers parameter through gguf-py's table ``names`` (a bare parameter such as
    ``layer_scalar`` gets ``.weight``, as the converter appends it); a clear error when the table has none."""
    base, _, suffix = hf_name.rpartition(".")
    if suffix in ("weight", "bias"):
        found = names.get_name(base)
    else:
        found, suffix = names.get_name(hf_name), "weight"
    if found is None:
        raise ValueError(f"{hf_name}: no GGUF name in gguf-py's table for this architecture")
    return f"{found}.{suffix}"


def gguf_array(tensor) -> np.ndarray:
    """A GGUF tensor as float32 in PyTorch's [out, in] order (dequantized where quantized)."""
    import gguf

    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(data, dtype=np.float32).reshape([int(d) for d in reversed(tensor.shape)])


def read_gguf_file(path: str | Path, arch: str) -> tuple[Callable, dict[str, np.ndarray]]:
    """(``key(name, default)`` for the ``<arch>.*`` metadata, every tensor as a float32 array by GGUF name)."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def key(name: str, default=None):
        field = reader.fields.get(f"{arch}.{name}")
        return default if field is None else field.contents()

    return key, {t.name: gguf_array(t) for t in reader.tensors}


def load_gguf_arrays(model, arrays: dict[str, np.ndarray], source: Callable[[str], np.ndarray]):
    """Fill ``model`` from GGUF arrays: ``source(hf_name)`` gives each parameter's array; a tied output head reads
    the token embedding. Returns the model in eval mode."""
    state = {}
    for hf_name, param in model.state_dict().items():
        if hf_name == "lm_head.weight":
            array = arrays["output.weight" if "output.weight" in arrays else "token_embd.weight"]
        else:
            array = source(hf_name)
        state[hf_name] = torch.from_numpy(np.array(array)).reshape(param.shape)
    model.load_state_dict(state)
    return model.eval()


@dataclass(frozen=True)
class GgufLayout:
    """How one text architecture goes into GGUF: llama.cpp's architecture name, the reasons it would run a config
    differently, the keys beyond the common ones, the tensors under their GGUF names, and the ones kept f32."""

    arch: str
    problems: Callable
    write_keys: Callable
    tensors: Callable
    f32: tuple[str, ...] = ()
    vocab: str = "llama"  # llama.cpp's tokenizer model: SentencePiece-style ("llama") or Gemma 4's BPE ("gemma4")
    bpe: bool = False  # the vocabulary is BPE with merges (gguf_bpe_vocabulary)
