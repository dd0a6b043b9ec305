"""Text normalisation shared by answer matching (evaluation) and the stream's feedback events (serve), and the
nearest entry of a phrase bank (a reply -> the label of its nearest phrasing)."""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from typing import TypeVar

K = TypeVar("K")
T = TypeVar("T")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "-"})


def normalize(text: str) -> str:
    """Lower-case, drop punctuation (hyphens kept), articles and extra spaces."""
    text = (text or "").lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(w for w in text.split() if w.strip("-"))  # a lone "-" (the QEVD separator) is no word


def nearest(query: K, bank: Mapping[K, T], similarity: Callable[[K, K], float]) -> T:
    """The value of the ``bank`` entry whose key is most similar to ``query`` (the first one on a tie)."""
    return bank[max(bank, key=lambda key: similarity(query, key))]
