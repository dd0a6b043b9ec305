"""The encoder warm-up: CLIP and VideoMamba trained as a clip classifier on the rendered coach's labels, read through
the QEVD reader, written as releases the builder loads, kept when done, and honest about unreadable clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_checkpoints import CLIP_CFG, VIDEOMAMBA_CFG, make_llm

from gemma3.data.coach import CoachConfig, make_coach_dataset, specs
from gemma3.model.builder import build_model, video_encoder_config_for
from gemma3.model.encoders import CLIPImageEncoder
from gemma3.model.videomamba import VideoMambaModel
from gemma3.model.videomamba_checkpoints import load_videomamba_checkpoint
from gemma3.model.visual_tokens import VisualTokens
from gemma3.train.encoder_warmup import DONE, WarmupConfig, warm_up_encoders

CLIP = {**CLIP_CFG, "image_size": 32, "patch_size": 8}
VISUAL = VisualTokens(num_frames=4, keyframe_chunk_size=4, keyframes_per_chunk=4, image_output_grid=2,
                      video_output_grid=2, video_size="tiny")  # fmt: skip


@pytest.fixture(scope="module")
def coach(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coach")
    make_coach_dataset(root, CoachConfig(seed=1, size=32, clip_frames=4, clips_per_label=2, test_fraction=0.5,
                                         sessions=0))  # fmt: skip
    return root


def test_the_classifier_learns_its_clips_and_the_builder_loads_the_encoders(coach, tmp_path, gemma270m_dir):
    s = specs(coach)
    out = tmp_path / "warmup"
    cfg = WarmupConfig(steps=80, batch=8, lr=3e-3, warmup_steps=5)
    warmed = warm_up_encoders(s["train_labels"], out, CLIP, VIDEOMAMBA_CFG, VISUAL, cfg, heldout=s["test_labels"])
    assert len(warmed.classes) == 16 and warmed.skipped == 0
    assert warmed.train_accuracy >= 0.5  # 16 clips of 16 labels: chance is 1/16
    assert warmed.heldout_accuracy is not None and 0.0 <= warmed.heldout_accuracy <= 1.0
    record = json.loads((out / DONE).read_text())
    assert record["train_accuracy"] == warmed.train_accuracy and record["classes"] == list(warmed.classes)

    # CLIP as a CLIPVisionModel folder, VideoMamba as OpenGVLab's supervised (fine-tuned) release layout
    clip = CLIPImageEncoder.from_pretrained(warmed.image_encoder)
    assert clip.config.patch_size == 8 and clip.config.hidden_size == CLIP["hidden_size"]
    vm = VideoMambaModel(video_encoder_config_for(VISUAL, 32, VIDEOMAMBA_CFG))
    report = load_videomamba_checkpoint(vm, warmed.video_encoder)
    assert report.layout == "supervised"
    saved = torch.load(warmed.video_encoder, weights_only=True)["model"]
    assert torch.equal(vm.patch_embed.proj.weight, saved["patch_embed.proj.weight"])

    # the language-model stages build the model from them as from any checkpoint
    llm = make_llm(tmp_path, gemma270m_dir)
    model, _ = build_model(llm, image_encoder=warmed.image_encoder, video_encoder=warmed.video_encoder,
                           visual=VISUAL, video_encoder_config=VIDEOMAMBA_CFG)  # fmt: skip
    assert torch.equal(model.image_encoder.vision_model.embeddings.patch_embedding.weight,
                       clip.vision_model.embeddings.patch_embedding.weight)  # fmt: skip
    assert torch.equal(model.video_encoder.patch_embed.proj.weight, saved["patch_embed.proj.weight"])


def test_a_finished_warm_up_is_kept_and_other_settings_train_again(coach, tmp_path):
    spec = specs(coach)["train_labels"]
    cfg = WarmupConfig(steps=2, batch=4)
    first = warm_up_encoders(spec, tmp_path, CLIP, None, VISUAL, cfg)
    assert first.video_encoder is None  # CLIP only
    stamp = (tmp_path / DONE).stat().st_mtime_ns
    assert warm_up_encoders(spec, tmp_path, CLIP, None, VISUAL, cfg) == first
    assert (tmp_path / DONE).stat().st_mtime_ns == stamp
    warm_up_encoders(spec, tmp_path, CLIP, None, VISUAL, WarmupConfig(steps=3, batch=4))
    assert json.loads((tmp_path / DONE).read_text())["params"]["steps"] == 3


def test_unreadable_clips_are_skipped_and_counted(coach, tmp_path):
    broken = tmp_path / "coach"
    broken.mkdir()
    for item in coach.iterdir():
        (broken / item.name).symlink_to(item)
    (broken / "short_clips").unlink()
    (broken / "short_clips").mkdir()
    for clip in (coach / "short_clips").iterdir():
        (broken / "short_clips" / clip.name).symlink_to(clip)
    first_train = next(r for r in json.loads((coach / "fine_grained_labels.json").read_text()) if r["split"] == "train")
    victim = broken / "short_clips" / Path(first_train["video_path"]).name
    victim.unlink()
    victim.write_bytes(b"not a video")
    spec = specs(broken)["train_labels"]
    warmed = warm_up_encoders(spec, tmp_path / "out", CLIP, None, VISUAL,
                              WarmupConfig(steps=1, batch=2, max_bad_fraction=0.5))  # fmt: skip
    assert warmed.skipped == 1
    with pytest.raises(Exception, match="unreadable"):
        warm_up_encoders(spec, tmp_path / "out2", CLIP, None, VISUAL, WarmupConfig(steps=1, max_bad_fraction=0.0))
