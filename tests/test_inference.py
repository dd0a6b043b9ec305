"""Batched inference: batch results equal one-by-one, restart skips written ids, bad media recorded."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_checkpoints import custom_train_args, make_custom_assets

import gemma3.serve.inference as inf
from gemma3.data.formats import Sample, load_annotations
from gemma3.serve.decoding import CPUFastDecoder, GenerateDecoder, choose_decoder
from gemma3.train import train as T


@pytest.fixture(scope="module")
def trained(tmp_path_factory, gemma270m_dir):
    root = tmp_path_factory.mktemp("inf")
    llm, clip, vm, data = make_custom_assets(root, gemma270m_dir, n=6)
    T.main(custom_train_args(llm, clip, vm, data, root / "out", stage="finetune", use_lora=True, max_steps=1))
    return root, data


def _read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_batched_generation_equals_one_by_one(trained):
    root, data = trained
    pred = inf.load_predictor(str(root / "out"), generation=inf.GenerationConfig(max_new_tokens=6))
    samples = [inf.split_reference(s)[0] for s in load_annotations(data)]
    batch_texts, _ = pred.generate([pred.encode(s) for s in samples])
    single = [pred.generate([pred.encode(s)])[0][0] for s in samples]
    assert batch_texts == single


def test_restart_skips_done_ids_and_bad_media_is_recorded(trained, tmp_path):
    root, data = trained
    recs = json.loads(data.read_text())
    recs.append({"id": "broken", "video": "videos/none.mp4", "conversations": recs[0]["conversations"]})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(recs))
    out = tmp_path / "preds.jsonl"
    argv = [
        "--model_path",
        str(root / "out"),
        "--annotations",
        str(ann),
        "--media_root",
        str(data.parent),
        "--output",
        str(out),
        "--batch_size",
        "3",
        "--max_new_tokens",
        "4",
    ]
    first = inf.main(argv + ["--limit", "4"])  # a run stopped part-way
    assert first["done"] == 4 and len(_read(out)) == 4
    with out.open("a") as f:
        f.write('{"id": "torn')  # killed mid-write
    second = inf.main(argv)
    assert second["skipped_existing"] == 4 and second["done"] == 3 and second["errors"] == 1
    # Every line but the torn one parses; the torn id was never complete, so nothing is duplicated.
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.endswith("}")]
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(r["id"] for r in recs) and len(ids) == len(set(ids))
    bad = next(r for r in rows if r["id"] == "broken")
    assert bad["prediction"] == "" and "not found" in bad["error"]
    assert all(r["reference"] for r in rows)


@pytest.fixture(scope="module")
def memorised(tmp_path_factory, gemma270m_dir):
    """A tiny custom model fully fine-tuned until it answers every clip with one phrase."""
    root = tmp_path_factory.mktemp("memorised")
    llm, clip, vm, data = make_custom_assets(root, gemma270m_dir)
    recs = json.loads(data.read_text())
    for r in recs:
        r["conversations"][1]["value"] = "moving left"
    data.write_text(json.dumps(recs))
    args = custom_train_args(llm, clip, vm, data, root / "out", stage="finetune", max_steps=25, learning_rate=1e-2)
    T.main(args + ["--projector_lr", "1e-2"])
    return root, data


def test_rank_candidates_prefers_trained_answer(memorised):
    root, data = memorised
    pred = inf.load_predictor(str(root / "out"))
    sample = load_annotations(data)[1]
    assert sample.reference == "moving left"
    candidates = ["zebra crossing", "moving left", "moving right"]
    scores = pred.rank_candidates(sample, candidates)
    assert max(range(3), key=scores.__getitem__) == 1, scores  # the memorised answer wins
    assert all(s < 0 for s in scores)  # log-probabilities
    ((ll, greedy),) = pred.loglikelihood([sample])
    assert ll == pytest.approx(scores[1], rel=1e-5)
    # The greedy flag says whether greedy decoding reproduces the reply exactly.
    prompt = Sample(sample.id, sample.messages[:-1], sample.media)
    assert greedy == (pred.generate([pred.encode(prompt)])[0][0] == "moving left")
    wrong = Sample(sample.id, [*sample.messages[:-1], {"role": "assistant", "content": "zebra"}], sample.media)
    assert pred.loglikelihood([wrong])[0][1] is False
    # The summed log-probability equals a teacher-forced forward pass computed by hand.
    feats = pred.plugin.collate([pred.encode(prompt)], "left")
    ids = feats["input_ids"]
    reply = pred.text_tokenizer("moving left<end_of_turn>", add_special_tokens=False).input_ids
    full = torch.cat([ids, torch.tensor([reply])], 1)
    mask = torch.ones_like(full)
    with torch.no_grad():
        hidden = pred.model(
            input_ids=full, attention_mask=mask, pixel_values_videos=feats["pixel_values_videos"]
        ).logits  # [1, L, V] (no labels: full logits)
    lp = torch.log_softmax(hidden[0, ids.shape[1] - 1 : -1].float(), -1)
    by_hand = float(lp.gather(-1, torch.tensor(reply)[:, None]).sum())
    assert ll == pytest.approx(by_hand, rel=1e-4)


def test_left_padding_uses_pad_not_eos(trained):
    root, data = trained
    pred = inf.load_predictor(str(root / "out"))
    samples = [inf.split_reference(s)[0] for s in load_annotations(data)[:2]]
    samples[1] = Sample(
        samples[1].id, [{"role": "user", "content": "<video>\n" + "longer prompt " * 5}], samples[1].media
    )
    batch = pred.plugin.collate([pred.encode(s) for s in samples], padding_side="left")
    tok = pred.text_tokenizer
    assert tok.pad_token_id != tok.eos_token_id
    assert batch["input_ids"][0, 0] == tok.pad_token_id and batch["attention_mask"][0, 0] == 0
    assert torch.all(batch["attention_mask"][:, -1] == 1)


def test_static_decoder_replies_equal_generate(trained):
    """The default CPU decoding loop (`gemma3.model.static_decode`) on the trained custom model: the same replies
    as transformers' generate, on a left-padded batch with visual tokens; sampling keeps generate."""
    root, data = trained
    samples = [inf.split_reference(s)[0] for s in load_annotations(data)]
    samples[1] = Sample(
        samples[1].id, [{"role": "user", "content": "<video>\n" + "longer prompt " * 4}], samples[1].media
    )
    gen = inf.GenerationConfig(max_new_tokens=8)
    pred = inf.load_predictor(str(root / "out"), generation=gen)
    fast = pred.decoder  # auto picks the CPU fast path for greedy Gemma 3 on CPU
    assert isinstance(fast, CPUFastDecoder) and fast.supports(pred.model, gen, 20)[0] and not fast.strict
    feats = [pred.encode(s) for s in samples]
    static = pred.generate(feats)
    assert sum(static[1]) > 0  # tokens were generated
    pred.decoder = GenerateDecoder(fast.head)
    assert pred.generate(feats) == static
    assert not fast.supports(pred.model, inf.GenerationConfig(do_sample=True), 20)[0]
    pred.decoder = choose_decoder(pred.model, "static")
    assert pred.decoder.strict
    with pytest.raises(ValueError, match="--decoder static: sampling"):
        pred.generate(feats[:1], inf.GenerationConfig(do_sample=True))
    with pytest.raises(ValueError, match="decoder 'fast'"):
        inf.load_predictor(str(root / "out"), generation=gen, decoder="fast")
