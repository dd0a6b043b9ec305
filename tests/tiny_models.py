"""Tiny random configs of every backbone family and of the whole custom model, for fast CPU tests."""

from __future__ import annotations

from transformers import CLIPVisionConfig, Gemma3nTextConfig, Gemma3TextConfig, Gemma4TextConfig

from gemma3.model.configuration import ProjectorConfig, VideoGemmaConfig, VideoMambaConfig

VOCAB = 300
IMAGE_TOKEN_ID = 299
VIDEO_TOKEN_ID = 298
PAD, EOS, BOS = 0, 1, 2
FAMILIES = ("gemma3", "gemma3n", "gemma4")


def tiny_text_config(family: str, vocab_size: int = VOCAB, hidden: int = 32):
    """A 2-layer text config of the given Gemma family (one sliding + one full attention layer)."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=2048,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,
    )
    if family == "gemma3":
        return Gemma3TextConfig(intermediate_size=64, **common)
    if family == "gemma3n":
        return Gemma3nTextConfig(
            intermediate_size=[64, 64],
            vocab_size_per_layer_input=vocab_size,
            hidden_size_per_layer_input=8,
            num_kv_shared_layers=0,
            laurel_rank=4,
            altup_num_inputs=2,
            activation_sparsity_pattern=[0.0, 0.0],
            **common,
        )
    if family == "gemma4":
        return Gemma4TextConfig(
            intermediate_size=64, vocab_size_per_layer_input=vocab_size, hidden_size_per_layer_input=8, **common
        )
    raise ValueError(family)


def tiny_clip_config(image_size: int = 32, patch: int = 8) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=16,
    )


def tiny_videomamba_config(image_size: int = 32, patch: int = 8, num_frames: int = 2) -> VideoMambaConfig:
    return VideoMambaConfig(
        img_size=image_size, patch_size=patch, embed_dim=32, depth=2, num_frames=num_frames, d_state=4, out_grid=2
    )


def tiny_video_gemma_config(family: str = "gemma3", **overrides) -> VideoGemmaConfig:
    """Whole custom model at tiny size: 4 frames, chunks of 2, 1 key frame per chunk, 32 px, 4x4 grids."""
    kw = dict(
        text_config=tiny_text_config(family),
        vision_config=tiny_clip_config(),
        video_config=tiny_videomamba_config(),
        projector_config=ProjectorConfig(
            video_input_grid=2, video_output_grid=2, image_input_grid=4, image_output_grid=2
        ),
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        num_frames=4,
        keyframe_chunk_size=2,
        keyframes_per_chunk=1,
    )
    kw.update(overrides)
    return VideoGemmaConfig(**kw)
