"""Templates against the official Gemma 3 chat template, with the real Gemma 3 270M tokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from gemma3.constants import IGNORE_INDEX
from gemma3.data.template import (
    TEMPLATES,
    ensure_chat_template,
    get_template,
    render_conversation,
    render_text,
)


@pytest.fixture(scope="module")
def tok(gemma270m_dir):
    t = AutoTokenizer.from_pretrained(gemma270m_dir)
    ensure_chat_template(t)
    return t


CASES = {
    "single": [{"role": "user", "content": "What is shown?"}, {"role": "assistant", "content": "A squat."}],
    "system": [
        {"role": "system", "content": "You are a fitness coach."},
        {"role": "user", "content": "  Rate my form.\n"},
        {"role": "assistant", "content": "Knees track over toes - good."},
    ],
    "multi_turn": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! Send a clip."},
        {"role": "user", "content": "Here: what exercise?"},
        {"role": "assistant", "content": "push-up - keep your hips level"},
    ],
    "images": [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The second is brighter."}]},
    ],
}


def _official(tok, messages, **kw):
    return tok.apply_chat_template(messages, tokenize=False, **kw)


@pytest.mark.parametrize("case", sorted(CASES))
def test_text_and_ids_match_official_template(tok, case):
    msgs = CASES[case]
    tpl = get_template("gemma")
    ref = _official(tok, msgs)
    # Image items render as <image> tags here; the official template writes <start_of_image>.
    assert render_text(msgs, tpl).replace("<image>", "<start_of_image>") == ref
    soi = tok.convert_tokens_to_ids(["<start_of_image>"])
    out = render_conversation(msgs, tok, tpl, media_expander=lambda tag: soi)
    assert out.input_ids == tok(ref, add_special_tokens=False).input_ids


@pytest.mark.parametrize("case", sorted(CASES))
def test_generation_prompt_matches_official(tok, case):
    msgs = CASES[case][:-1]
    ref = _official(tok, msgs, add_generation_prompt=True)
    out = render_conversation(msgs, tok, get_template("gemma"), lambda t: [255999], add_generation_prompt=True)
    assert out.input_ids == tok(ref, add_special_tokens=False).input_ids
    if not any(m["role"] == "assistant" for m in msgs):  # history replies stay supervised; nothing new is
        assert out.num_supervised == 0


def test_label_mask_covers_exactly_assistant_replies_and_end_of_turn(tok):
    msgs = CASES["multi_turn"]
    out = render_conversation(msgs, tok, get_template("gemma"))
    sup = [t for t in out.labels if t != IGNORE_INDEX]
    expected = []
    for m in msgs:
        if m["role"] == "assistant":
            expected += tok(m["content"], add_special_tokens=False).input_ids
            expected.append(tok.convert_tokens_to_ids("<end_of_turn>"))
    assert sup == expected
    # Supervised ids sit exactly where the labels say: labels equal ids there.
    assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(out.labels, out.input_ids))


def test_media_tags_become_placeholders_and_are_not_supervised(tok):
    msgs = [{"role": "user", "content": "<video>\nWhat action?"}, {"role": "assistant", "content": "jumping"}]
    out = render_conversation(msgs, tok, get_template("gemma"), media_expander=lambda tag: [7] * 5)
    assert out.input_ids.count(7) == 5
    assert all(out.labels[i] == IGNORE_INDEX for i, t in enumerate(out.input_ids) if t == 7)
    with pytest.raises(ValueError, match="no media expander"):
        render_conversation(msgs, tok, get_template("gemma"))


def test_empty_mask_and_overlong_raise(tok):
    with pytest.raises(ValueError, match="supervises no token"):
        render_conversation([{"role": "user", "content": "hi"}], tok, get_template("gemma"))
    with pytest.raises(ValueError, match="over max_length"):
        render_conversation(CASES["single"], tok, get_template("gemma"), max_length=5)
    with pytest.raises(ValueError, match="alternate"):
        render_conversation([{"role": "assistant", "content": "x"}], tok, get_template("gemma"))


def test_gemma4_and_plain_templates(tok):
    msgs = CASES["system"]
    assert render_text(msgs, get_template("gemma4")) == (
        "<bos><|turn>system\nYou are a fitness coach.<turn|>\n<|turn>user\nRate my form.<turn|>\n"
        "<|turn>model\nKnees track over toes - good.<turn|>\n"
    )
    plain = [{"role": "user", "content": "<video>\nDescribe."}, {"role": "assistant", "content": "a squat"}]
    assert render_text(plain, get_template("plain")) == "<bos><video>a squat<eos>"
    out = render_conversation(plain, tok, get_template("plain"), lambda t: [7, 7])
    assert tok.decode([t for t in out.labels if t != IGNORE_INDEX]) == "a squat<eos>"


def test_template_chosen_by_config_not_path():
    from types import SimpleNamespace

    from gemma3.model.families import CUSTOM, get_family

    def cfg(text_type, template=None):
        return SimpleNamespace(chat_template=template, text_config=SimpleNamespace(model_type=text_type))

    assert CUSTOM.template(cfg("gemma4_text")).name == "gemma4"
    assert CUSTOM.template(cfg("gemma3n_text")).name == "gemma"
    assert CUSTOM.template(cfg("gemma3n_text", "plain")).name == "plain"
    assert [get_family(n).template().name for n in ("gemma3", "gemma3n", "gemma4")] == ["gemma", "gemma", "gemma4"]
    assert get_family("gemma4").stop_strings(None) == ("<turn|>",)
    with pytest.raises(KeyError, match="Unknown chat template"):
        get_template("llava")
    assert set(TEMPLATES) == {"gemma", "gemma4", "plain"}
