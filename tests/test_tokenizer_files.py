"""Tokenizer folders written through `save_tokenizer` list their added tokens in tokenizer_config.json (as the
published Gemma folders do) and load to the same tokenizer as a plain `save_pretrained` folder."""

from __future__ import annotations

import json

from transformers import AutoTokenizer

from gemma3.utils.tokenizer_files import list_added_tokens, save_tokenizer

TEXT = "<bos><start_of_turn>user\nWhat is the athlete doing?<start_of_image><end_of_turn>\n<start_of_turn>model\n"


def test_saved_folder_lists_added_tokens_and_loads_the_same_tokenizer(tmp_path, gemma270m_dir):
    # The converted Gemma 3 270M folder itself carries the list.
    assert "added_tokens_decoder" in json.loads((gemma270m_dir / "tokenizer_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(gemma270m_dir)
    plain, listed = tmp_path / "plain", tmp_path / "listed"
    tok.save_pretrained(plain)
    save_tokenizer(tok, listed)
    assert "added_tokens_decoder" not in json.loads((plain / "tokenizer_config.json").read_text())
    config = json.loads((listed / "tokenizer_config.json").read_text())
    assert len(config["added_tokens_decoder"]) == len(tok.added_tokens_decoder) > 6000
    assert config["added_tokens_decoder"]["106"] == {"content": "<end_of_turn>", "single_word": False, "lstrip": False,
                                                     "rstrip": False, "normalized": False, "special": True}  # fmt: skip

    a, b = AutoTokenizer.from_pretrained(plain), AutoTokenizer.from_pretrained(listed)
    assert type(a) is type(b)
    assert a(TEXT)["input_ids"] == b(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    assert a.added_tokens_decoder == b.added_tokens_decoder
    assert a.all_special_ids == b.all_special_ids and a.special_tokens_map == b.special_tokens_map
    chat = [{"role": "user", "content": "Rate my squat."}, {"role": "assistant", "content": "Knees out."}]
    assert a.apply_chat_template(chat, tokenize=False) == b.apply_chat_template(chat, tokenize=False)

    # A plain folder gets the list added in place (loading its tokenizer), once.
    assert list_added_tokens(plain) is True
    assert json.loads((plain / "tokenizer_config.json").read_text()) == config
    assert list_added_tokens(plain) is False
    assert list_added_tokens(tmp_path / "missing") is False


def test_a_second_caller_waits_for_the_conversion_in_progress(tmp_path):
    """Two test workers (or jobs) asking for the converted Gemma 3 270M at once: the second waits on the lock and
    reuses the first one's folder instead of converting beside it."""
    import fcntl
    import threading

    from gemma3.model.offline import gemma3_270m_path

    target = tmp_path / "gemma-3-270m"
    got = []
    with open(tmp_path / ".gemma-3-270m.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a conversion in progress
        waiter = threading.Thread(target=lambda: got.append(gemma3_270m_path(target)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not got  # waiting, not converting
        target.mkdir()  # the first caller's finished folder
        (target / "config.json").write_text("{}")
        (target / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {}}))
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiter.join(timeout=60)
    assert got == [target]
