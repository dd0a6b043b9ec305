"""Custom model: splice, counts, gradients, save/load, generation, for each backbone family (tiny configs)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, tiny_video_gemma_config
from transformers import AutoModelForCausalLM

from gemma3.constants import IGNORE_INDEX
from gemma3.model import backbones
from gemma3.model.configuration import ProjectorConfig
from gemma3.model.encoders import select_keyframes
from gemma3.model.modeling import VideoGemmaForCausalLM, component_of
from gemma3.model.projector import ETPProjector


def _batch(config, with_video=True, with_image=True, batch=2):
    """Text + one video + one image per sample; labels on the last 3 tokens."""
    rows = []
    for b in range(batch):
        ids = [2, 10 + b, 11]
        if with_video:
            ids += [VIDEO_TOKEN_ID] * config.num_video_tokens
        if with_image:
            ids += [IMAGE_TOKEN_ID] * config.num_image_tokens
        ids += [12, 13, 14, 15 + b]
        rows.append(ids)
    input_ids = torch.tensor(rows)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, -3:] = input_ids[:, -3:]
    out = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    if with_video:
        out["pixel_values_videos"] = torch.randn(batch, config.num_frames, 3, 32, 32)
    if with_image:
        out["pixel_values"] = torch.randn(batch, 3, 32, 32)
    return out


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def test_forward_loss_and_gradients_reach_projectors_and_encoders(family):
    config = tiny_video_gemma_config(family)
    model = VideoGemmaForCausalLM(config)
    out = model(**_batch(config))
    assert torch.isfinite(out.loss)
    assert out.logits.shape == (2 * 3, config.text_config.vocab_size)  # supervised positions only
    out.loss.backward()
    for group in ("projector", "image_encoder", "video_encoder", "language_model"):
        grads = [p.grad for n, p in model.named_parameters() if component_of(n) == group and p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), group


def test_frozen_encoders_get_no_grad_but_projectors_do():
    config = tiny_video_gemma_config("gemma3")
    model = VideoGemmaForCausalLM(config)
    for n, p in model.named_parameters():
        p.requires_grad_(component_of(n) == "projector")
    model(**_batch(config)).loss.backward()
    for n, p in model.named_parameters():
        if component_of(n) == "projector":
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, n
        else:
            assert p.grad is None, n


def test_loss_matches_full_logits_cross_entropy():
    config = tiny_video_gemma_config("gemma3")
    model = VideoGemmaForCausalLM(config).eval()
    batch = _batch(config)
    with torch.no_grad():
        loss = model(**batch).loss
        full = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # [B, L, V]
    ref = torch.nn.functional.cross_entropy(
        full[:, :-1].reshape(-1, full.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


def test_placeholder_count_mismatch_names_both_numbers():
    config = tiny_video_gemma_config("gemma3")
    model = VideoGemmaForCausalLM(config)
    batch = _batch(config, batch=1)
    batch["pixel_values"] = torch.randn(2, 3, 32, 32)  # two images, one placeholder run
    with pytest.raises(
        ValueError, match=rf"{config.num_image_tokens} placeholder tokens .* {2 * config.num_image_tokens}"
    ):
        model(**batch)
    batch = _batch(config, batch=1, with_image=False)
    batch["input_ids"] = batch["input_ids"][:, 1:]  # drop a token: still fine
    batch["labels"] = batch["labels"][:, 1:]
    batch["attention_mask"] = batch["attention_mask"][:, 1:]
    del batch["pixel_values_videos"]
    with pytest.raises(ValueError, match=rf"{config.num_video_tokens} placeholder tokens .* 0 video"):
        model(**batch)


def test_all_ignored_labels_raise():
    config = tiny_video_gemma_config("gemma3", use_video_encoder=False)
    model = VideoGemmaForCausalLM(config)
    batch = _batch(config, with_video=False)
    batch["labels"].fill_(IGNORE_INDEX)
    with pytest.raises(ValueError, match="supervise no token"):
        model(**batch)


def test_per_layer_inputs_use_pad_at_placeholders():
    config = tiny_video_gemma_config("gemma3n", use_video_encoder=False)
    model = VideoGemmaForCausalLM(config)
    batch = _batch(config, with_video=False, batch=1)
    embeds, per_layer = model.embed_inputs(batch["input_ids"], batch["pixel_values"])
    pad_ids = torch.full_like(batch["input_ids"], config.text_config.pad_token_id)
    pad_pl = backbones.per_layer_inputs(model.language_model, pad_ids)
    mask = batch["input_ids"] == IMAGE_TOKEN_ID
    torch.testing.assert_close(per_layer[mask], pad_pl[mask])
    assert per_layer.shape[:2] == batch["input_ids"].shape
    # Visual soft tokens arrive RMS-normalised (order 1), like Gemma's scaled text embeddings.
    rms = embeds[mask].pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-3, atol=1e-3)


def _round_trip(model: VideoGemmaForCausalLM, tmp_path) -> VideoGemmaForCausalLM:
    """Save ``model``, load it back through the Auto class and check both give the same logits on a batch."""
    batch = _batch(model.config)
    batch.pop("labels")
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, VideoGemmaForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, before)
    return loaded


def test_save_load_round_trip_same_logits(tmp_path, family):
    _round_trip(VideoGemmaForCausalLM(tiny_video_gemma_config(family)).eval(), tmp_path)


@pytest.mark.parametrize("inputs", ["video", "image", "text"])
def test_generate_with_kv_cache(inputs):
    config = tiny_video_gemma_config("gemma3")
    model = VideoGemmaForCausalLM(config).eval()
    batch = _batch(config, with_video=inputs == "video", with_image=inputs == "image", batch=1)
    batch.pop("labels")
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        cached = model.generate(**batch, use_cache=True, **kw)
        uncached = model.generate(**batch, use_cache=False, **kw)
        # Manual greedy loop with full recomputation: the reference.
        ids = batch["input_ids"]
        for _ in range(5):
            step = {**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
            nxt = model(**step).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert cached.shape[1] == batch["input_ids"].shape[1] + 5
    assert torch.equal(cached, ids)
    assert torch.equal(uncached, ids)


@pytest.mark.parametrize("family", ["gemma3n", "gemma4"])
def test_generate_per_layer_families(family):
    config = tiny_video_gemma_config(family)
    model = VideoGemmaForCausalLM(config).eval()
    batch = _batch(config, batch=2)
    batch.pop("labels")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
        ids = batch["input_ids"]
        for _ in range(4):
            step = {**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
            ids = torch.cat([ids, model(**step).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)


def test_keyframe_selection_prefers_attended_frames_in_time_order():
    torch.manual_seed(0)
    v, t, n, d = 2, 8, 6, 16
    base = torch.randn(d)
    tokens = base + 0.1 * torch.randn(v, t, n, d)
    tokens[0, [1, 3, 6, 7]] *= 3.0  # strongly aligned with the shared direction -> receive attention
    tokens[1, [0, 2, 5, 6]] *= 3.0
    keep = select_keyframes(tokens, chunk_size=4, per_chunk=2)
    assert keep.tolist() == [[1, 3, 6, 7], [0, 2, 5, 6]]
    keep = select_keyframes(tokens, chunk_size=8, per_chunk=4)
    assert keep.tolist() == [[1, 3, 6, 7], [0, 2, 5, 6]]


def test_etp_projector_pools_real_grid_and_checks_width():
    proj = ETPProjector(in_dim=8, out_dim=16, in_grid=4, out_grid=2)
    out = proj(torch.randn(3, 16, 8))
    assert out.shape == (3, 4, 16)
    with pytest.raises(ValueError, match="4x4=16 tokens"):
        proj(torch.randn(3, 9, 8))


def test_etp_projector_norm_positions():
    """``output`` gives unit-RMS soft tokens; ``input`` is blind to the encoder's feature scale. A component shared
    by every sample (a large bias on the MLP's output) eats the samples' spread under ``output`` and leaves it as it
    is under ``input``: the collapse the cpu preset's encoders trained from scratch fell into."""
    torch.manual_seed(0)
    tokens = torch.randn(6, 16, 8)  # [N, G*G, in]
    out_norm = ETPProjector(8, 16, 4, 2, norm_position="output")
    in_norm = ETPProjector(8, 16, 4, 2, norm_position="input")
    assert in_norm.norm.weight.shape == (8,) and out_norm.norm.weight.shape == (16,)
    with torch.no_grad():
        rms = out_norm(tokens).pow(2).mean(-1).sqrt()
        torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(in_norm(tokens), in_norm(100 * tokens), rtol=1e-4, atol=1e-5)

        def spread(proj):  # mean distance of each sample's tokens from the mean sample's
            out = proj(tokens)  # [N, g*g, D]
            return (out - out.mean(0)).norm(dim=-1).mean()

        before = {p: spread(p) for p in (out_norm, in_norm)}
        for proj in (out_norm, in_norm):
            proj.mlp[-1].bias += 50.0
        assert spread(out_norm) < 0.1 * before[out_norm]
        torch.testing.assert_close(spread(in_norm), before[in_norm], rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="norm_position 'middle': choose output or input"):
        ETPProjector(8, 16, 4, 2, norm_position="middle")


def test_save_load_keeps_the_projector_norm_position(tmp_path):
    config = tiny_video_gemma_config(
        projector_config=ProjectorConfig(
            video_input_grid=2, video_output_grid=2, image_input_grid=4, image_output_grid=2, norm_position="input"
        )
    )
    model = VideoGemmaForCausalLM(config).eval()
    assert model.video_projector.norm_input and model.image_projector.norm_input
    loaded = _round_trip(model, tmp_path)
    assert loaded.config.projector_config.norm_position == "input"


def test_config_rejects_mismatched_videomamba_frames():
    config = tiny_video_gemma_config("gemma3", num_frames=8)  # 8 frames / chunk 2 x 1 = 4 key frames != 2
    with pytest.raises(ValueError, match="must equal the number of key frames"):
        VideoGemmaForCausalLM(config)
