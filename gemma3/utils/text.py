"""Text normalisation shared by answer matching (evaluation) and the stream's feedback events (serve)."""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "-"})


def normalize(text: str) -> str:
    """Lower-case, drop punctuation (hyphens kept), articles and extra spaces."""
    text = (text or "").lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(w for w in text.split() if w.strip("-"))  # a lone "-" (the QEVD separator) is no word
