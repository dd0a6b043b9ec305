"""Our renderer against the official Gemma 3 / 3n / 4 chat templates, on every content shape they accept.

The references are the published template files (gemma3/chat_templates/, checked here against the SHA-256 of the
files Google published with the models) rendered by the tokenizer's own `apply_chat_template`; token ids are
compared with a real Gemma tokenizer carrying each family's special tokens."""

from __future__ import annotations

import hashlib

import pytest
from tiny_native import tiny_native_tokenizer

from gemma3.data.template import get_template, official_chat_template, render_conversation, render_text

# SHA-256 of chat_template.jinja as published with google/gemma-3-4b-it, google/gemma-3n-E4B-it (same converter
# template for E2B) and google/gemma-4-E2B-it / -E4B-it (see gemma3/chat_templates/SOURCES.md).
PUBLISHED_SHA256 = {
    "gemma3": "7de1c58e208eda46e9c7f86397df37ec49883aeece39fb961e0a6b24088dd3c4",
    "gemma3n": "ac03dcb3b09726f1e50ac55ae58fc8d5930eadc3b3a12cb04286dc1d82ac8001",
    "gemma4": "0a2c8073c878ab1da004bee933a998606537bbb62016310352c7285c3f01c5b5",
}
TEMPLATE = {"gemma3": "gemma", "gemma3n": "gemma", "gemma4": "gemma4"}
IMAGE_STRING = {"gemma3": "<start_of_image>", "gemma3n": "<image_soft_token>", "gemma4": "<|image|>"}


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


IMG = {"type": "image"}
SHAPES = {
    "string": [{"role": "user", "content": "What is shown?"}, {"role": "assistant", "content": "A squat."}],
    "string_whitespace": [{"role": "user", "content": "  Rate my form.\n"}, {"role": "assistant", "content": " ok \n"}],
    "text_items_whitespace": [
        {"role": "user", "content": [_text("  Look at this.\n"), _text(" And this  ")]},
        {"role": "assistant", "content": [_text(" Fine. "), _text("\nReally.")]},
    ],
    "image_between_text": [
        {"role": "user", "content": [_text("Before "), IMG, _text(" after")]},
        {"role": "assistant", "content": "A cat."},
    ],
    "images_first": [
        {"role": "user", "content": [IMG, IMG, _text("Compare.")]},
        {"role": "assistant", "content": [_text("The second is brighter.")]},
    ],
    "image_last": [{"role": "user", "content": [_text("Rate:"), IMG]}, {"role": "assistant", "content": "7/10"}],
    "system_string": [
        {"role": "system", "content": "  You are a fitness coach. "},
        {"role": "user", "content": "Rate my form."},
        {"role": "assistant", "content": "Knees track over toes - good."},
    ],
    "system_list": [
        {"role": "system", "content": [_text("  Coach.  "), _text("Be brief.")]},
        {"role": "user", "content": [IMG, _text("Hi")]},
        {"role": "assistant", "content": "Hello"},
    ],
    "multi_turn": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! Send a clip."},
        {"role": "user", "content": [_text("Here: "), IMG, _text(" what exercise?")]},
        {"role": "assistant", "content": "push-up - keep your hips level"},
    ],
}


@pytest.fixture(scope="module")
def toks(gemma270m_dir):
    return {fam: tiny_native_tokenizer(gemma270m_dir, fam) for fam in PUBLISHED_SHA256}


@pytest.mark.parametrize("family", sorted(PUBLISHED_SHA256))
def test_shipped_templates_are_the_published_files(family):
    text = official_chat_template(family)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == PUBLISHED_SHA256[family]


def _official(tok, family, messages, **kw) -> str:
    return tok.apply_chat_template(messages, tokenize=False, chat_template=official_chat_template(family), **kw)


def _ours(family, messages, **kw) -> str:
    return render_text(messages, get_template(TEMPLATE[family]), **kw).replace("<image>", IMAGE_STRING[family])


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("family", sorted(PUBLISHED_SHA256))
def test_each_family_text_and_ids_match_official_template(toks, family, shape):
    tok, msgs = toks[family], SHAPES[shape]
    ref = _official(tok, family, msgs)
    assert _ours(family, msgs) == ref
    image_ids = tok(IMAGE_STRING[family], add_special_tokens=False).input_ids
    out = render_conversation(msgs, tok, get_template(TEMPLATE[family]), media_expander=lambda tag: image_ids)
    assert out.input_ids == tok(ref, add_special_tokens=False).input_ids


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("family", sorted(PUBLISHED_SHA256))
def test_each_family_generation_prompt_matches_official_template(toks, family, shape):
    msgs = SHAPES[shape][:-1]
    assert _ours(family, msgs, add_generation_prompt=True) == _official(
        toks[family], family, msgs, add_generation_prompt=True
    )


def test_official_templates_differ_where_our_templates_do(toks):
    """A check that the comparison can fail: the Gemma 4 layout is not the Gemma 3 one."""
    msgs = SHAPES["system_string"]
    assert _ours("gemma3", msgs) != _official(toks["gemma4"], "gemma4", msgs)
