"""Full-size models from the shipped published configs, on the ``meta`` device: parameter counts per component
against the published figures (within 1%), and the custom model's pieces at real width."""

from __future__ import annotations

import pytest
import torch

from gemma3.model.configuration import ProjectorConfig, VideoGemmaConfig, VideoMambaConfig
from gemma3.model.families import CUSTOM, family_for_config
from gemma3.model.reference_configs import meta_model, parameter_counts, reference_config, reference_models
from gemma3.model.videomamba_releases import release_shapes

# Published figures: keras-hub presets (Gemma 3 4B with the HF vocabulary; Gemma-3n E2B), the Gemma 4 model cards
# (5.1B / 7.9B with embeddings), the ViT-B/16 vision tower, VideoMamba-M's model zoo (74M with its K400 head).
PUBLISHED = {
    "google/gemma-3-4b-it": {"total": 4_300_079_472, "image_encoder": 416_866_032, "projector": 2_950_272},
    "google/gemma-3n-E2B-it": {"total": 5_439_595_456, "image_encoder": 294_284_096, "language_model": 4_435_000_000},
    "google/gemma-4-e2b-it": {"total": 5_100_000_000},
    "google/gemma-4-e4b-it": {"total": 7_900_000_000},
}


def test_every_named_model_has_a_reference_config():
    assert set(reference_models()) == {*PUBLISHED, "openai/clip-vit-base-patch16"}
    # The E2B text config is the real one (transformers' Gemma3nTextConfig() defaults are E4B-like).
    text = reference_config("google/gemma-3n-E2B-it").text_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_kv_shared_layers) == (30, 2048, 10)
    assert text.intermediate_size == [8192] * 30


@pytest.mark.parametrize("model_id", sorted(PUBLISHED))
def test_native_parameter_counts_match_published(model_id):
    config = reference_config(model_id)
    fam = family_for_config(config)
    counts = parameter_counts(meta_model(config), fam.component_fn())
    for part, published in PUBLISHED[model_id].items():
        assert counts[part] == pytest.approx(published, rel=0.01), (part, counts)


def _real_width_custom(depth: int | None = None) -> VideoGemmaConfig:
    text = reference_config("google/gemma-3n-E2B-it").text_config
    if depth is not None:  # real width, depth cut (both attention types kept)
        text.num_hidden_layers = depth
        text.layer_types = text.layer_types[3:5]
        text.intermediate_size = text.intermediate_size[:depth]
        text.activation_sparsity_pattern = text.activation_sparsity_pattern[:depth]
        text.num_kv_shared_layers = 0
    clip = reference_config("openai/clip-vit-base-patch16").vision_config
    video = VideoMambaConfig.from_size("middle", num_frames=8, depth=depth or 32)
    return VideoGemmaConfig(
        text_config=text,
        vision_config=clip,
        video_config=video,
        projector_config=ProjectorConfig(
            video_input_grid=7, video_output_grid=7, image_input_grid=14, image_output_grid=7
        ),  # fmt: skip
        image_token_id=262145,
        video_token_id=262146,
        num_frames=16,
    )


def test_custom_model_at_full_size_on_meta():
    from gemma3.model.modeling import VideoGemmaForCausalLM

    with torch.device("meta"):
        model = VideoGemmaForCausalLM(_real_width_custom())
    counts = parameter_counts(model, CUSTOM.component_fn())
    # One dtype although the published text config says bfloat16 (a bf16 LM beside fp32 encoders made the CPU
    # backward 270x slower: 776 s instead of 2.9 s at the cut depth below).
    assert {p.dtype for p in model.parameters()} == {torch.get_default_dtype()}
    assert counts["language_model"] == pytest.approx(4_435_000_000, rel=0.01)  # Gemma-3n E2B text decoder
    assert counts["image_encoder"] == pytest.approx(85_799_424, rel=0.01)  # CLIP ViT-B/16 vision tower
    official = release_shapes("supervised", d=576, n=32, p=16, t=8, size=224, d_state=16)
    official_encoder = sum(int(torch.Size(s).numel()) for k, s in official.items() if not k.startswith("head."))
    assert counts["video_encoder"] == official_encoder  # VideoMamba-M as the official modules define it
    assert counts["video_encoder"] + 400 * 576 + 400 == pytest.approx(74_000_000, rel=0.01)  # model zoo: 74M
    # ETP projectors at real width: 768 (CLIP) and 576 (VideoMamba) -> 2048 (Gemma-3n hidden).
    assert model.image_projector.mlp[0].in_features == 768 and model.video_projector.mlp[0].in_features == 576
    assert model.image_projector.mlp[2].out_features == model.video_projector.mlp[2].out_features == 2048
    # LoRA targets at real width: 7 projections in each of the 20 layers with their own KV, 5 in the 10 KV-shared
    # layers (they have no k_proj / v_proj); no AltUp / LAuReL / per-layer modules.
    names = CUSTOM.lora_targets(model, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    assert len(names) == 20 * 7 + 10 * 5
    assert not any(n.startswith(tuple(f"language_model.model.layers.{i}.self_attn.k_proj" for i in range(20, 30)))
                   for n in names)  # fmt: skip
    every = CUSTOM.lora_targets(model, "all-linear")
    assert not any(s in n for n in every for s in ("altup", "laurel", "per_layer", "lm_head"))


def test_gpu_preset_reports_the_planned_size_before_downloading(caplog):
    from gemma3.pipeline import log_planned_size

    with caplog.at_level("INFO", logger="gemma3.pipeline"):
        log_planned_size("google/gemma-3n-E2B-it")
    assert "language_model 4,435M" in caplog.text


@pytest.mark.slow
def test_real_width_cut_depth_splice_and_lora_step():
    """Gemma-3n E2B's real width (2,048 hidden, AltUp, LAuReL, per-layer inputs) cut to 2 layers, CLIP ViT-B/16 and
    VideoMamba-M widths, random weights: the splice and the LoRA-wrapped loss with logits at supervised positions
    only, forward and backward (about 5 GB and 40 s here)."""
    from peft import LoraConfig, get_peft_model

    from gemma3.constants import IGNORE_INDEX
    from gemma3.model.modeling import VideoGemmaForCausalLM

    torch.manual_seed(0)
    cfg = _real_width_custom(depth=2)
    cfg.vision_config.num_hidden_layers = 2
    model = VideoGemmaForCausalLM(cfg)
    n_video = cfg.num_video_tokens
    assert n_video == 8 * (49 + 49)  # 8 key frames x (7x7 VideoMamba + 7x7 CLIP) tokens
    text = torch.randint(3, 1000, (1, 20))
    ids = torch.cat([text[:, :10], torch.full((1, n_video), cfg.video_token_id), text[:, 10:]], 1)  # [1, L]
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -5:] = ids[:, -5:]
    video = torch.randn(1, 16, 3, 224, 224)
    with pytest.raises(ValueError, match=f"{n_video - 1}.*{n_video}|{n_video}.*{n_video - 1}"):
        model(input_ids=ids[:, 1:].clone().index_fill_(1, torch.tensor([9]), 5), pixel_values_videos=video)
    names = CUSTOM.lora_targets(model, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=names, task_type="CAUSAL_LM"))
    assert sum(p.numel() for p in peft.parameters() if p.requires_grad) == 704_512  # LoRA r=8 only
    out = peft(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=video, labels=labels)
    assert out.logits.shape == (5, cfg.text_config.vocab_size)  # supervised positions only
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    out.loss.backward()
    grads = [p.grad for n, p in peft.named_parameters() if "lora_B" in n]
    assert len(grads) == len(names) and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
