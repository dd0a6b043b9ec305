"""Tiny native Gemma 3 / 3n / 4 vision-language checkpoints with their processors, built and saved by tests.

Each folder holds a random 2-layer model of the real class (`Gemma3ForConditionalGeneration`, ...) and a real
processor of the family (image processor, audio feature extractor where the family has one, the real Gemma 3
tokenizer with the family's multimodal special tokens added, and the official published chat template of the family), so
`AutoProcessor` / `AutoModelForImageTextToText` load them exactly as they load the released checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_models import tiny_text_config
from transformers import AutoTokenizer

from gemma3.data.template import official_chat_template
from gemma3.utils.tokenizer_files import save_tokenizer

NATIVE_FAMILIES = ("gemma3", "gemma3n", "gemma4")

_SPECIAL = {
    "gemma3": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    "gemma3n": {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
        "boa_token": "<start_of_audio>",
        "eoa_token": "<end_of_audio>",
        "audio_token": "<audio_soft_token>",
    },
    "gemma4": {
        "boi_token": "<|image>",
        "eoi_token": "<image|>",
        "image_token": "<|image|>",
        "boa_token": "<|audio>",
        "eoa_token": "<audio|>",
        "audio_token": "<|audio|>",
    },
}
_EXTRA_TOKENS = {"gemma4": ["<|turn>", "<turn|>", "<|video|>"]}


def tiny_native_tokenizer(gemma270m_dir: Path, family: str):
    """The real Gemma 3 tokenizer with the family's image / audio / turn tokens (added at the end of the vocab)."""
    special = _SPECIAL[family]
    tok = AutoTokenizer.from_pretrained(gemma270m_dir, extra_special_tokens=special)
    new = [t for t in [*special.values(), *_EXTRA_TOKENS.get(family, [])] if t not in tok.get_vocab()]
    tok.add_tokens(new, special_tokens=True)
    return tok


def _gemma3(tok):
    from transformers import Gemma3Config, Gemma3ImageProcessor, Gemma3Processor, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        vision_use_head=False,  # as in the released Gemma 3 checkpoints
    )
    cfg = Gemma3Config(
        text_config=tiny_text_config("gemma3", vocab_size=len(tok)).to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,  # 4x4 patches pooled to 2x2
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    image_proc = Gemma3ImageProcessor(size={"height": 32, "width": 32})
    proc = Gemma3Processor(image_proc, tok, chat_template=official_chat_template("gemma3"), image_seq_length=4)
    return cfg, proc


def _gemma3n(tok):
    from transformers import (
        Gemma3nAudioConfig,
        Gemma3nAudioFeatureExtractor,
        Gemma3nConfig,
        Gemma3nProcessor,
        Gemma3nVisionConfig,
        SiglipImageProcessor,
    )

    ids = {k: tok.convert_tokens_to_ids(v) for k, v in _SPECIAL["gemma3n"].items()}
    text = tiny_text_config("gemma3n", vocab_size=len(tok))
    text.vocab_size_per_layer_input = 262_144
    # MobileNet-V5 at 1/20 width: the real architecture (and its 16x16 = 256 soft tokens per image), 6M parameters.
    vision = Gemma3nVisionConfig(model_args={"channel_multiplier": 0.05}, vocab_offset=262_144)
    audio = Gemma3nAudioConfig(
        hidden_size=16,
        conf_num_hidden_layers=1,
        conf_num_attention_heads=2,
        sscp_conv_channel_size=[8, 4],
        vocab_offset=262_144 + 128,
    )
    cfg = Gemma3nConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        audio_config=audio.to_dict(),
        boi_token_id=ids["boi_token"],
        eoi_token_id=ids["eoi_token"],
        image_token_id=ids["image_token"],
        boa_token_id=ids["boa_token"],
        eoa_token_id=ids["eoa_token"],
        audio_token_id=ids["audio_token"],
    )
    image_proc = SiglipImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.0] * 3, image_std=[1.0] * 3)
    proc = Gemma3nProcessor(
        Gemma3nAudioFeatureExtractor(),
        image_proc,
        tok,
        chat_template=official_chat_template("gemma3n"),
        image_seq_length=256,
    )
    return cfg, proc


def _gemma4(tok):
    from transformers import (
        Gemma4AudioFeatureExtractor,
        Gemma4Config,
        Gemma4ImageProcessor,
        Gemma4Processor,
        Gemma4VideoProcessor,
        Gemma4VisionConfig,
    )

    vision = Gemma4VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        patch_size=4,
        pooling_kernel_size=2,
        position_embedding_size=64,
        use_clipped_linears=True,  # the released checkpoints wrap vision linears in clipping bounds
    )
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in _SPECIAL["gemma4"].items()}
    cfg = Gemma4Config(
        text_config=tiny_text_config("gemma4", vocab_size=len(tok)).to_dict(),
        vision_config=vision.to_dict(),
        audio_config=None,
        boi_token_id=ids["boi_token"],
        eoi_token_id=ids["eoi_token"],
        image_token_id=ids["image_token"],
        video_token_id=tok.convert_tokens_to_ids("<|video|>"),
        boa_token_id=ids["boa_token"],
        eoa_token_index=ids["eoa_token"],
        audio_token_id=ids["audio_token"],
    )
    pieces = dict(patch_size=4, max_soft_tokens=70, pooling_kernel_size=2)
    proc = Gemma4Processor(
        Gemma4AudioFeatureExtractor(),
        Gemma4ImageProcessor(**pieces),
        tok,
        Gemma4VideoProcessor(**pieces),
        chat_template=official_chat_template("gemma4"),
    )
    return cfg, proc


def make_native(root: Path, gemma270m_dir: Path, family: str) -> Path:
    """Save a tiny native VLM of ``family`` with its processor under ``root``; returns the folder."""
    from transformers import AutoModelForImageTextToText

    out = Path(root) / f"tiny-native-{family}"
    if (out / "config.json").exists():
        return out
    tok = tiny_native_tokenizer(gemma270m_dir, family)
    cfg, proc = {"gemma3": _gemma3, "gemma3n": _gemma3n, "gemma4": _gemma4}[family](tok)
    model = AutoModelForImageTextToText.from_config(cfg)
    projector = getattr(model.model, "multi_modal_projector", None)
    if projector is not None:  # initialised to zeros, which would stop every gradient into the vision tower
        torch.nn.init.normal_(projector.mm_input_projection_weight, std=0.2)
    model.save_pretrained(out)
    save_tokenizer(proc, out)
    return out
