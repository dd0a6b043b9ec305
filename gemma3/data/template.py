"""Chat templates as registered data, and the one-pass renderer that yields token ids and the loss mask.

Templates are frozen dataclasses in a registry filled at import; nothing here is mutable module state. The model's
model's family record chooses the template (`gemma3.model.families.Family.template`), never a folder name.

Rendering: the conversation becomes text pieces (each marked supervised or not) separated by media tags. Each run
of text is tokenised once with character offsets, and a token is supervised when its characters fall inside an
assistant reply or its end-of-turn marker. Media tags become the placeholder ids the model fills. So ids and mask
come from one pass, with the tokenizer's real merges.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gemma3.constants import IGNORE_INDEX, MEDIA_TAGS

# The official chat templates, verbatim as published with the models (see gemma3/chat_templates/SOURCES.md). The
# Gemma 3 270M GGUF tokenizer ships without one; `ensure_chat_template` attaches Gemma 3's so that
# `apply_chat_template` works offline. The tests check these files against their published SHA-256.
OFFICIAL_TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "chat_templates"


def official_chat_template(family: str) -> str:
    """The official Jinja chat template of a Gemma family (``gemma3``, ``gemma3n``, ``gemma4``)."""
    path = OFFICIAL_TEMPLATE_DIR / f"{family}.jinja"
    if not path.is_file():
        raise KeyError(f"No official chat template for {family!r} (looked for {path})")
    return path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation is laid out as text.

    A turn is ``turn_start + role + role_suffix + content + turn_end + turn_sep``. The assistant's content and
    ``turn_end`` are supervised; ``turn_sep`` (the newline after the end-of-turn token) is not.
    """

    name: str
    turn_start: str = ""
    turn_end: str = ""
    turn_sep: str = ""
    role_suffix: str = "\n"
    roles: tuple[tuple[str, str], ...] = (("user", "user"), ("assistant", "model"), ("system", "system"))
    system: str = "fold"  # "fold": prepend to the first user turn; "turn": its own turn; "drop"
    system_sep: str = "\n\n"
    # A system prompt given as a content list: "first" uses its first text item as is (Gemma 3 / 3n); "spaced"
    # writes every text item trimmed and followed by a space (Gemma 4).
    system_items: str = "first"
    add_bos: bool = True
    trim: bool = True
    plain: bool = False  # caption-only: user text is dropped except media; the reply follows directly
    stop_strings: tuple[str, ...] = field(default=())

    def role_name(self, role: str) -> str:
        mapping = dict(self.roles)
        if role not in mapping:
            raise ValueError(f"template {self.name!r}: unknown role {role!r}")
        return mapping[role]

    @property
    def generation_prompt(self) -> str:
        return "" if self.plain else f"{self.turn_start}{self.role_name('assistant')}{self.role_suffix}"


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate(
            "gemma",
            turn_start="<start_of_turn>",
            turn_end="<end_of_turn>",
            turn_sep="\n",
            stop_strings=("<end_of_turn>",),
        ),
        ChatTemplate(
            "gemma4",
            turn_start="<|turn>",
            turn_end="<turn|>",
            turn_sep="\n",
            system="turn",
            system_items="spaced",
            stop_strings=("<turn|>",),
        ),
        # Projector pretraining: "<media>caption<eos>"; the instruction is dropped.
        ChatTemplate("plain", turn_end="<eos>", role_suffix="", plain=True, trim=True, stop_strings=("<eos>",)),
    )
}


def get_template(name: str) -> ChatTemplate:
    """Template by registry name (``gemma``, ``gemma4``, ``plain``)."""
    if name not in TEMPLATES:
        raise KeyError(f"Unknown chat template {name!r}; registered: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


@dataclass
class RenderedConversation:
    """Token ids and labels (IGNORE_INDEX where not supervised), same length."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


_TAG_RE = re.compile("(" + "|".join(re.escape(t) for t in MEDIA_TAGS) + ")")

# A piece is text (with a supervised flag) or a media tag.
Piece = tuple[str, bool]


def _content_text(content, trim: bool) -> str:
    """Message content as text with media tags. A string is trimmed as a whole; in an HF content list each text
    item is trimmed and the items are joined with nothing between them (as the official Gemma templates do)."""
    if isinstance(content, str):
        return content.strip() if trim else content
    parts = []
    for item in content:
        kind = item.get("type")
        if kind == "text":
            parts.append(item["text"].strip() if trim else item["text"])
        elif kind in ("image", "video"):
            parts.append(f"<{kind}>")
        else:
            raise ValueError(f"unsupported content item type {kind!r}")
    return "".join(parts)


def _system_text(content, template: ChatTemplate) -> str:
    """The system prompt's text: a string as given (trimmed in its own turn); a content list per the template."""
    if isinstance(content, str):
        return content.strip() if template.system == "turn" and template.trim else content
    texts = [item["text"] for item in content if item.get("type") == "text"]
    if template.system_items == "spaced":
        return "".join(t.strip() + " " for t in texts)
    return texts[0] if texts else ""


def conversation_pieces(
    messages: Sequence[dict], template: ChatTemplate, bos_token: str, add_generation_prompt: bool = False
) -> list[Piece]:
    """The conversation as (text, supervised) pieces, media tags still inside the text."""
    msgs = [dict(m) for m in messages]
    prefix = ""
    if msgs and msgs[0]["role"] == "system":
        system = _system_text(msgs.pop(0)["content"], template)
        if template.system == "fold":
            prefix = system + template.system_sep
        elif template.system == "turn":
            msgs.insert(0, {"role": "system", "content": system})
    pieces: list[Piece] = [(bos_token, False)] if template.add_bos else []
    expect_user = True
    first_user = True
    for m in msgs:
        role = m["role"]
        if role == "system":  # already normalised by _system_text
            pieces.append((f"{template.turn_start}{template.role_name('system')}{template.role_suffix}", False))
            pieces += [(m["content"], False), (template.turn_end + template.turn_sep, False)]
            continue
        if (role == "user") != expect_user:
            raise ValueError("Conversation roles must alternate user/assistant/user/assistant/...")
        expect_user = not expect_user
        body = _content_text(m["content"], template.trim)
        if role == "user":
            if first_user:
                body = prefix + body
                first_user = False
            if template.plain:
                body = "".join(t for t in _TAG_RE.split(body) if t in MEDIA_TAGS)
                pieces.append((body, False))
                continue
            head = f"{template.turn_start}{template.role_name('user')}{template.role_suffix}"
            pieces += [(head + body + template.turn_end + template.turn_sep, False)]
        else:
            if not template.plain:
                pieces.append((template.generation_prompt, False))
            pieces += [(body, True), (template.turn_end, True), (template.turn_sep, False)]
    if add_generation_prompt:
        if not expect_user:
            pieces.append((template.generation_prompt, False))
        else:
            raise ValueError("add_generation_prompt needs a conversation that ends with a user turn")
    return [(t, s) for t, s in pieces if t]


def render_text(
    messages: Sequence[dict], template: ChatTemplate, bos_token: str = "<bos>", add_generation_prompt: bool = False
) -> str:
    """The conversation as one string (media tags kept), e.g. to compare with ``apply_chat_template``."""
    return "".join(t for t, _ in conversation_pieces(messages, template, bos_token, add_generation_prompt))


ExpandMedia = Callable[[str], list[int]]  # media tag -> placeholder ids


def render_conversation(
    messages: Sequence[dict],
    tokenizer,
    template: ChatTemplate,
    media_expander: ExpandMedia | None = None,
    add_generation_prompt: bool = False,
    max_length: int | None = None,
) -> RenderedConversation:
    """Token ids and labels of a conversation in one pass.

    Only assistant replies and their end-of-turn token are supervised. Media tags become
    ``media_expander(tag)`` ids (placeholders); without an expander a tag is an error. A conversation that
    supervises nothing raises (unless ``add_generation_prompt``), and so does one longer than ``max_length``
    (cutting would drop placeholders or the reply).
    """
    pieces = conversation_pieces(messages, template, tokenizer.bos_token or "", add_generation_prompt)
    ids: list[int] = []
    labels: list[int] = []
    run_text: list[str] = []
    run_spans: list[tuple[int, int]] = []
    run_len = 0

    def flush() -> None:
        nonlocal run_text, run_spans, run_len
        if not run_text:
            return
        enc = tokenizer("".join(run_text), add_special_tokens=False, return_offsets_mapping=True)
        for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
            sup = any(a < e and b > s for s, e in run_spans) if b > a else False
            ids.append(tid)
            labels.append(tid if sup else IGNORE_INDEX)
        run_text, run_spans, run_len = [], [], 0

    for text, supervised in pieces:
        for part in _TAG_RE.split(text):
            if not part:
                continue
            if part in MEDIA_TAGS:
                if media_expander is None:
                    raise ValueError(f"conversation has a {part} tag but no media expander was given")
                flush()
                expanded = media_expander(part)
                ids.extend(expanded)
                labels.extend([IGNORE_INDEX] * len(expanded))
                continue
            if supervised:
                run_spans.append((run_len, run_len + len(part)))
            run_text.append(part)
            run_len += len(part)
    flush()
    out = RenderedConversation(ids, labels)
    if not add_generation_prompt and out.num_supervised == 0:
        raise ValueError("conversation supervises no token: it has no assistant reply")
    if max_length is not None and len(ids) > max_length:
        raise ValueError(f"conversation is {len(ids)} tokens, over max_length={max_length}")
    return out


def ensure_chat_template(tokenizer) -> None:
    """Attach the official Gemma 3 chat template to a tokenizer that has none (e.g. loaded from GGUF)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = official_chat_template("gemma3")
