"""Tokenizer folders that load fast.

transformers 5 writes ``tokenizer_config.json`` without ``added_tokens_decoder``, the list of added tokens the
published Gemma folders carry in it. Loading a folder without that list takes a legacy path that parses the whole
``tokenizer.json`` once more just to find them: for Gemma's 262k-entry vocabulary (33 MB) that is 3.3 of the
6.7 s a load takes here. Every folder this project writes (training outputs, exports, the converted Gemma 3 270M)
goes through `save_tokenizer`, which adds the list back.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_FILE = "tokenizer_config.json"


def list_added_tokens(folder: str | Path, tokenizer=None) -> bool:
    """Write ``tokenizer``'s added tokens into ``folder``'s tokenizer_config.json as ``added_tokens_decoder``
    (loading the folder's tokenizer when none is given). Returns False when there is nothing to do: no such
    file, no added tokens, or the list is already there."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return False
    config = json.loads(path.read_text(encoding="utf-8"))
    if "added_tokens_decoder" in config:
        return False
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds its tokenizer
    added = getattr(tokenizer, "added_tokens_decoder", None)
    if not added:
        return False
    config["added_tokens_decoder"] = {str(i): token.__getstate__() for i, token in sorted(added.items())}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return True


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """``tokenizer.save_pretrained(folder)`` (a tokenizer, or a processor holding one), then `list_added_tokens`."""
    tokenizer.save_pretrained(folder)
    list_added_tokens(folder, tokenizer)
