"""Frozen-encoder feature cache: same features as encoding, computed once per clip, never stale (weights changed,
encoders trained, stochastic layers), kept on disk across runs; a pretrain stage with frozen encoders trains to the
same losses with and without it."""

from __future__ import annotations

import torch
from tiny_checkpoints import custom_train_args, make_custom_assets
from tiny_models import tiny_video_gemma_config

from gemma3.model.feature_cache import FeatureCache
from gemma3.model.modeling import VideoGemmaForCausalLM


def _model() -> VideoGemmaForCausalLM:
    torch.manual_seed(0)
    model = VideoGemmaForCausalLM(tiny_video_gemma_config()).eval()
    for m in (model.image_encoder, model.video_encoder):
        m.requires_grad_(False)
    return model


def test_cached_features_equal_encoding_and_are_computed_once(tmp_path):
    model = _model()
    videos = torch.randn(3, 4, 3, 32, 32)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want_v, want_i = model.get_video_features(videos), model.get_image_features(images)
        model.feature_cache = cache = FeatureCache(tmp_path / "cache")
        torch.testing.assert_close(model.get_video_features(videos), want_v, rtol=0, atol=1e-6)
        torch.testing.assert_close(model.get_image_features(images), want_i, rtol=0, atol=1e-6)
        assert cache.stats()["misses"] == 5 and cache.stats()["hits"] == 0
        # a batch mixing a seen clip with a new one encodes only the new one
        mixed = torch.stack([videos[1], torch.randn(4, 3, 32, 32)])
        torch.testing.assert_close(model.get_video_features(mixed)[0], want_v[1], rtol=0, atol=1e-6)
        assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 6
        torch.testing.assert_close(model.get_video_features(videos), want_v, rtol=0, atol=1e-6)
        assert cache.stats()["hits"] == 4
        # one new clip three times in a batch (candidates being ranked): encoded once
        clip = torch.randn(4, 3, 32, 32)
        same = model.get_video_features(torch.stack([clip, clip, clip]))
        assert cache.stats()["misses"] == 7 and torch.equal(same[0], same[2])

        # kept on disk: a new cache over the same folder (a later run or stage) reads, encodes nothing
        model.feature_cache = again = FeatureCache(tmp_path / "cache")
        torch.testing.assert_close(model.get_video_features(videos), want_v, rtol=0, atol=1e-6)
        assert again.stats() == {**again.stats(), "hits": 3, "misses": 0}

        # encoder weights changed in place: new keys, fresh features
        model.video_encoder.patch_embed.proj.weight.mul_(1.5)
        changed = model.get_video_features(videos)
        assert again.stats()["misses"] == 3 and not torch.allclose(changed, want_v)
        model.feature_cache = None
        torch.testing.assert_close(changed, model.get_video_features(videos), rtol=0, atol=1e-6)


def test_the_cache_steps_aside_for_trained_or_stochastic_encoders():
    model = _model()
    model.feature_cache = cache = FeatureCache()
    videos = torch.randn(2, 4, 3, 32, 32)
    model.video_encoder.requires_grad_(True)  # an encoder that trains is always run
    model.get_video_features(videos)
    assert cache.stats()["misses"] == 0 and cache.stats()["entries"] == 0
    model.video_encoder.requires_grad_(False)
    model.train()
    for block in model.video_encoder.modules():
        if hasattr(block, "drop_path"):
            block.drop_path = 0.1  # drop-path while training: outputs are random, nothing is cached
    model.get_video_features(videos)
    assert cache.stats()["entries"] == 0
    model.eval()
    model.get_video_features(videos)
    assert cache.stats()["entries"] == 2


def test_pretrain_with_frozen_encoders_trains_the_same_with_the_cache(tmp_path, gemma270m_dir):
    """Two epochs of 4 clips: the second epoch reads every clip from the cache; the loss curve is unchanged."""
    from gemma3.train import train as T

    llm, clip, vm, data = make_custom_assets(tmp_path, gemma270m_dir, n=4)
    runs = {}
    for setting in ("off", "memory"):
        argv = custom_train_args(llm, clip, vm, data, tmp_path / setting, stage="pretrain", max_steps=4,
                                 feature_cache=setting, projector_lr=1e-2)  # fmt: skip
        runs[setting] = T.main(argv)
    off, on = runs["off"], runs["memory"]
    assert len(on["losses"]) == 4
    torch.testing.assert_close(torch.tensor(on["losses"]), torch.tensor(off["losses"]), rtol=0, atol=1e-5)
    assert off["model"].feature_cache is None
    stats = on["model"].feature_cache.stats()
    assert stats["misses"] == 4 and stats["hits"] == 4
