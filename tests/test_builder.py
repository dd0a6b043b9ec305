"""Builder: text decoders from text and multimodal checkpoints, placeholder ids, trained-output reloads."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_clip_config, tiny_text_config, tiny_video_gemma_config
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

from gemma3.model import backbones
from gemma3.model.builder import load_trainables, save_trainables
from gemma3.model.modeling import VideoGemmaForCausalLM, component_of


def test_text_checkpoint_loads_directly(tmp_path):
    lm = backbones.build_text_backbone(tiny_text_config("gemma3n")).eval()
    lm.save_pretrained(tmp_path)
    loaded = backbones.load_text_backbone(tmp_path).eval()
    ids = torch.tensor([[2, 5, 6, 7]])
    torch.testing.assert_close(lm(ids).logits, loaded(ids).logits)


def test_text_decoder_taken_out_of_multimodal_checkpoint(tmp_path):
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    text = tiny_text_config("gemma3")
    vlm_config = Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_index=299,
        boi_token_index=297,
        eoi_token_index=296,
    )
    vlm = Gemma3ForConditionalGeneration(vlm_config).eval()
    vlm.save_pretrained(tmp_path)
    lm = backbones.load_text_backbone(tmp_path).eval()
    assert lm.config.model_type == "gemma3_text"
    ids = torch.tensor([[2, 5, 6, 7, 8]])
    with torch.no_grad():
        ref = vlm(input_ids=ids).logits
        got = lm(input_ids=ids).logits
    torch.testing.assert_close(got, ref)


def test_unknown_backbone_family_is_a_clear_error():
    with pytest.raises(ValueError, match="Unsupported backbone model_type 'llama'"):
        backbones.family_for_model_type("llama")


def test_trainables_round_trip_into_fresh_model(tmp_path):
    config = tiny_video_gemma_config("gemma3", use_video_encoder=False)
    a = VideoGemmaForCausalLM(config)
    for n, p in a.named_parameters():
        p.requires_grad_(component_of(n) == "projector")
        if p.requires_grad:
            p.data.add_(1.0)
    path = save_trainables(a, tmp_path)
    b = VideoGemmaForCausalLM(config)
    names = load_trainables(b, path)
    # Trainable projectors, plus CLIP: it was built without a checkpoint, so a reload needs its weights too.
    assert {component_of(n) for n in names} == {"projector", "image_encoder"}
    for n, p in b.named_parameters():
        if n in names:
            torch.testing.assert_close(p, dict(a.named_parameters())[n])


def test_tiny_clip_encoder_from_local_folder(tmp_path):
    from transformers import CLIPVisionModel

    from gemma3.model.encoders import CLIPImageEncoder

    CLIPVisionModel(tiny_clip_config()).save_pretrained(tmp_path)
    enc = CLIPImageEncoder.from_pretrained(tmp_path)
    out = enc(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 16, 32)  # 4x4 patches, CLS dropped
