"""Annotation formats, plugin + collator, bad-sample handling, and the validation CLI."""

from __future__ import annotations

import pytest
import torch
from media_utils import make_frames, write_frame_folder, write_json, write_video
from tiny_models import tiny_video_gemma_config
from transformers import AutoTokenizer

from gemma3.cli import main as cli_main
from gemma3.constants import IGNORE_INDEX
from gemma3.data.dataset import SupervisedDataset
from gemma3.data.formats import AnnotationError, load_annotations
from gemma3.data.plugins import CustomModelPlugin
from gemma3.data.template import get_template


@pytest.fixture(scope="module")
def tok(gemma270m_dir):
    return AutoTokenizer.from_pretrained(gemma270m_dir)


@pytest.fixture(scope="module")
def config():
    return tiny_video_gemma_config("gemma3", image_token_id=6, video_token_id=7)


@pytest.fixture()
def media(tmp_path):
    frames = make_frames(4)
    write_frame_folder(tmp_path / "frames" / "clip0", frames)
    write_video(tmp_path / "videos" / "a.mp4", make_frames(16))
    return tmp_path


def _llava(root):
    return [
        {
            "id": "c0",
            "video": "frames/clip0",
            "conversations": [
                {"from": "human", "value": "<video>\nWhat is happening?"},
                {"from": "gpt", "value": "squat - good depth"},
            ],
        }
    ]


def _messages(root):
    imgs = [{"type": "image", "image": f"frames/clip0/frame_{i}.jpg"} for i in range(1, 5)]
    return [
        {
            "id": "c0",
            "messages": [
                {"role": "user", "content": [*imgs, {"type": "text", "text": "What is happening?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "squat - good depth"}]},
            ],
        }
    ]


def test_both_annotation_formats_give_identical_batches(media, tok, config):
    a = load_annotations(write_json(media / "llava.json", _llava(media)))
    jl = media / "msgs.jsonl"
    jl.write_text("\n".join(__import__("json").dumps(r) for r in _messages(media)))
    b = load_annotations(jl)
    plugin = CustomModelPlugin(config)
    tpl = get_template("gemma")
    ba = plugin.collate([plugin.encode(a[0], tok, tpl)])
    bb = plugin.collate([plugin.encode(b[0], tok, tpl)])
    assert ba.keys() == bb.keys() == {"input_ids", "attention_mask", "labels", "pixel_values_videos"}
    for k in ba:
        torch.testing.assert_close(ba[k], bb[k])
    assert ba["pixel_values_videos"].shape == (1, config.num_frames, 3, 32, 32)
    assert int((ba["input_ids"] == 7).sum()) == config.num_video_tokens


def test_messages_frames_as_separate_images(media):
    s = load_annotations(write_json(media / "m.json", _messages(media)), frames_as_video=False)[0]
    assert [m.kind for m in s.media] == ["image"] * 4
    assert s.messages[0]["content"].count("<image>") == 4


def test_collator_padding_sides(media, tok, config):
    samples = load_annotations(
        write_json(
            media / "l.json",
            [
                {
                    "id": "x",
                    "video": "videos/a.mp4",
                    "conversations": [
                        {"from": "human", "value": "<video>\nQ?"},
                        {"from": "gpt", "value": "a much longer answer here"},
                    ],
                },
                {
                    "id": "y",
                    "video": "videos/a.mp4",
                    "conversations": [{"from": "human", "value": "<video>\nQ?"}, {"from": "gpt", "value": "short"}],
                },
            ],
        )
    )
    plugin = CustomModelPlugin(config)
    feats = [plugin.encode(s, tok, get_template("gemma")) for s in samples]
    right = plugin.collate(feats, "right")
    left = plugin.collate(feats, "left")
    n1, n0 = len(feats[1]["input_ids"]), len(feats[0]["input_ids"])
    assert right["attention_mask"][1].tolist() == [1] * n1 + [0] * (n0 - n1)
    assert left["attention_mask"][1].tolist() == [0] * (n0 - n1) + [1] * n1
    assert (right["labels"][1, n1:] == IGNORE_INDEX).all() and (right["input_ids"][1, n1:] == 0).all()
    assert right["pixel_values_videos"].shape[0] == 2


def test_bad_samples_skipped_counted_and_limit_enforced(media, tok, config):
    recs = _llava(media) * 3 + [
        {
            "id": "bad",
            "video": "videos/missing.mp4",
            "conversations": [{"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": "A"}],
        }
    ]
    samples = load_annotations(write_json(media / "b.json", recs))
    plugin = CustomModelPlugin(config)
    d = SupervisedDataset(samples, plugin, tok, get_template("gemma"), max_bad_fraction=0.5)
    item = d[3]  # the bad one is replaced by the next good sample
    assert int((item["input_ids"] == 7).sum()) == config.num_video_tokens
    assert d.stats.bad == {3}
    strict = SupervisedDataset(samples, plugin, tok, get_template("gemma"), max_bad_fraction=0.01)
    with pytest.raises(RuntimeError, match="1 of 4 samples are bad"):
        strict[3]


def test_validate_finds_each_kind_of_fault(media, tok, capsys):
    corrupt = media / "videos" / "corrupt.mp4"
    corrupt.write_bytes(b"not a video at all" * 20)
    conv = lambda a="fine": [{"from": "human", "value": "<video>\nQ?"}, {"from": "gpt", "value": a}]  # noqa: E731
    recs = [
        {"id": "ok", "video": "videos/a.mp4", "conversations": conv()},
        {"id": "missing", "video": "videos/none.mp4", "conversations": conv()},
        {"id": "corrupt", "video": "videos/corrupt.mp4", "conversations": conv()},
        {"id": "noreply", "video": "videos/a.mp4", "conversations": conv()[:1]},
        {
            "id": "tags",
            "video": "videos/a.mp4",
            "conversations": [{"from": "human", "value": "<video><video>\nQ"}, {"from": "gpt", "value": "A"}],
        },
        {"id": "long", "video": "videos/a.mp4", "conversations": conv("word " * 200)},
        {"id": "broken"},
    ]
    path = write_json(media / "val.json", recs)
    rc = cli_main(
        [
            "validate",
            str(path),
            "--tokenizer",
            str(tok.name_or_path),
            "--max-length",
            "50",
            "--json",
            str(media / "report.json"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 1
    for idx, word in [
        (1, "not found"),
        (2, "unreadable"),
        (3, "no assistant"),
        (4, "2 <video> tags"),
        (5, "over max_length"),
        (6, "neither"),
    ]:
        assert any(line.startswith(f"[{idx}]") and word in line for line in out.splitlines()), (idx, word, out)
    assert not any(line.startswith("[0]") for line in out.splitlines())
    assert "7 samples, 6 bad" in out
    rc_ok = cli_main(["validate", str(write_json(media / "good.json", recs[:1]))])
    assert rc_ok == 0


def test_record_errors_name_file_index_and_field(tmp_path):
    p = write_json(tmp_path / "x.json", [{"id": "a", "conversations": [{"from": "robot", "value": "hi"}]}])
    with pytest.raises(AnnotationError, match=r"x\.json:0: conversations\[0\]"):
        load_annotations(p)
