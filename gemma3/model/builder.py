"""Build the custom model from real checkpoints, and load trained outputs back.

Sources are HF ids or local folders (the text backbone may be a multimodal Gemma checkpoint; its text decoder is
taken out). What a training run writes, and what `load_model` reads:

- a full model folder (``config.json`` of type ``video_gemma`` + weights): `from_pretrained`;
- a trainables folder (``config.json`` + ``non_lora_trainables.safetensors``, e.g. after projector pretraining):
  the base is rebuilt from the sources recorded in the config, then the trained tensors are loaded;
- an adapter folder (the above + PEFT's ``adapter_config.json`` / ``adapter_model.safetensors``): the same, then
  the LoRA/DoRA adapter is attached.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from gemma3.constants import DEFAULT_IMAGE_ENCODER, DEFAULT_LLM
from gemma3.model import backbones
from gemma3.model.checkpoint_files import check_checkpoint_files, load_checked
from gemma3.model.configuration import ProjectorConfig, VideoGemmaConfig, VideoMambaConfig
from gemma3.model.encoders import CLIPImageEncoder
from gemma3.model.modeling import VideoGemmaForCausalLM, component_of
from gemma3.model.videomamba_checkpoints import load_videomamba_checkpoint
from gemma3.model.visual_tokens import VisualTokens
from gemma3.utils.errors import CheckpointError

logger = logging.getLogger(__name__)

TRAINABLES_FILE = "non_lora_trainables.safetensors"
ADAPTER_CONFIG = "adapter_config.json"

# Placeholder candidates, in order of preference. Reserved tokens keep the vocabulary (and the tied head) intact.
IMAGE_PLACEHOLDERS = ("<image_soft_token>", "<|image|>", "<unused0>")
VIDEO_PLACEHOLDERS = ("<video_soft_token>", "<|video|>", "<unused1>")


def _first_known_token(tokenizer: PreTrainedTokenizerBase, candidates: tuple[str, ...], exclude: int = -1) -> int:
    vocab = tokenizer.get_vocab()
    for tok in candidates:
        tid = vocab.get(tok)
        if tid is not None and tid != exclude and tid != tokenizer.unk_token_id:
            return int(tid)
    raise ValueError(
        f"The tokenizer has none of the placeholder tokens {candidates}; add one as a special token and resize "
        "the embeddings, or pass image_token_id / video_token_id explicitly"
    )


def choose_placeholder_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """(image_token_id, video_token_id): real ids from the vocabulary (soft-token ids, else reserved tokens)."""
    image_id = _first_known_token(tokenizer, IMAGE_PLACEHOLDERS)
    video_id = _first_known_token(tokenizer, VIDEO_PLACEHOLDERS, exclude=image_id)
    return image_id, video_id


def video_encoder_config_for(visual: VisualTokens, image_size: int, overrides: dict | None = None) -> VideoMambaConfig:
    """VideoMamba's config in the custom model: the named size (``visual.video_size``) at CLIP's image size and the
    key-frame count, with ``overrides`` (the fields of an encoder built without a checkpoint)."""
    fields = {"img_size": image_size, "num_frames": visual.num_keyframes, **(overrides or {})}
    return VideoMambaConfig.from_size(visual.video_size, **fields)


def custom_config(
    text_config,
    clip_config,
    tokenizer: PreTrainedTokenizerBase,
    llm: str | Path,
    image_encoder: str | Path | None,
    video_encoder: str | Path | None,
    visual: VisualTokens,
    use_video_encoder: bool,
    video_encoder_config: dict | None,
) -> VideoGemmaConfig:
    """The custom model's config from its parts' configs and the visual-token settings (what `build_model` and
    `build_meta_model` build)."""
    visual.check()
    image_id, video_id = choose_placeholder_ids(tokenizer)
    grid = clip_config.image_size // clip_config.patch_size
    vm_cfg = video_encoder_config_for(visual, clip_config.image_size, video_encoder_config)
    return VideoGemmaConfig(
        text_config=text_config,
        vision_config=clip_config,
        video_config=vm_cfg,
        projector_config=ProjectorConfig(
            video_input_grid=vm_cfg.out_grid,
            video_output_grid=visual.video_output_grid,
            image_input_grid=grid,
            image_output_grid=visual.image_output_grid,
            norm_position=visual.projector_norm,
        ),
        image_token_id=image_id,
        video_token_id=video_id,
        num_frames=visual.num_frames,
        keyframe_chunk_size=visual.keyframe_chunk_size,
        keyframes_per_chunk=visual.keyframes_per_chunk,
        use_video_encoder=use_video_encoder,
        sources={
            "llm": str(llm),
            "image_encoder": None if image_encoder is None else str(image_encoder),
            "video_encoder": None if video_encoder is None else str(video_encoder),
        },
    )


def build_meta_model(
    llm: str | Path,
    image_encoder: str | Path | None,
    visual: VisualTokens | None = None,
    use_video_encoder: bool = True,
    image_encoder_config: dict | None = None,
    video_encoder_config: dict | None = None,
    video_encoder: str | Path | None = None,
) -> tuple[VideoGemmaForCausalLM, PreTrainedTokenizerBase]:
    """The model `build_model` would build, on the ``meta`` device: configs and tokenizer only, no weights."""
    from transformers import AutoConfig, CLIPVisionConfig

    tokenizer = AutoTokenizer.from_pretrained(llm)
    text = backbones.text_config_of(AutoConfig.from_pretrained(llm))
    if image_encoder is not None:
        clip_cfg = CLIPVisionConfig.from_pretrained(image_encoder)
    else:
        clip_cfg = CLIPVisionConfig(**(image_encoder_config or {}))
    config = custom_config(
        text, clip_cfg, tokenizer, llm, image_encoder, video_encoder, visual or VisualTokens(), use_video_encoder,
        video_encoder_config,
    )  # fmt: skip
    with torch.device("meta"):
        return VideoGemmaForCausalLM(config), tokenizer


def build_model(
    llm: str | Path = DEFAULT_LLM,
    image_encoder: str | Path | None = DEFAULT_IMAGE_ENCODER,
    video_encoder: str | Path | None = None,
    visual: VisualTokens | None = None,
    use_video_encoder: bool = True,
    dtype: torch.dtype = torch.float32,
    image_encoder_config: dict | None = None,
    video_encoder_config: dict | None = None,
    quantization_config=None,
) -> tuple[VideoGemmaForCausalLM, PreTrainedTokenizerBase]:
    """Assemble the model from real checkpoints.

    Args:
        llm: Gemma text or multimodal checkpoint (HF id or folder).
        image_encoder: CLIP checkpoint (HF id or folder). ``None`` builds CLIP from ``image_encoder_config``
            (random weights; for tests and CPU demos).
        video_encoder: an official OpenGVLab VideoMamba ``.pth`` file; ``None`` leaves VideoMamba randomly
            initialised (a warning says so).
        visual: the visual-token settings (`VisualTokens`: frames, key-frame chunk and count, ETP output grids
            (tokens per frame = grid**2), projector norm position, VideoMamba size); None: their defaults.
        use_video_encoder: False gives a CLIP-only model (video = CLIP tokens of key frames).
        dtype: parameter dtype (bf16 on GPU; fp32 on CPU).
        image_encoder_config / video_encoder_config: overrides for encoders built without checkpoints.
        quantization_config: a `BitsAndBytesConfig` for the language model (QLoRA; CUDA only).
    """
    tokenizer = AutoTokenizer.from_pretrained(llm)
    choose_placeholder_ids(tokenizer)  # fails before any weights load
    lm_kwargs = {"quantization_config": quantization_config} if quantization_config is not None else {}
    lm = backbones.load_text_backbone(llm, dtype=dtype, **lm_kwargs)
    if image_encoder is not None:
        clip = CLIPImageEncoder.from_pretrained(image_encoder, dtype=dtype)
    else:
        from transformers import CLIPVisionConfig

        clip = CLIPImageEncoder(CLIPVisionConfig(**(image_encoder_config or {})))
    config = custom_config(
        lm.config, clip.config, tokenizer, llm, image_encoder, video_encoder, visual or VisualTokens(),
        use_video_encoder, video_encoder_config,
    )  # fmt: skip
    model = VideoGemmaForCausalLM(config, meta_language_model=True)
    # Swap in the loaded sub-models (the LM placeholder was never materialised; the fresh CLIP is discarded).
    model.language_model = lm
    model.image_encoder = clip
    if use_video_encoder:
        if video_encoder is not None:
            load_videomamba_checkpoint(model.video_encoder, video_encoder)
        else:
            logger.warning("No VideoMamba checkpoint given: the video encoder is randomly initialised")
    model.tie_weights()
    if quantization_config is None:
        model = model.to(dtype)
    return model, tokenizer


def unsourced_components(model: torch.nn.Module) -> list[str]:
    """Encoders built without a checkpoint (random init): their weights must travel with every save."""
    config = getattr(model, "config", None)
    sources = getattr(config, "sources", None) or {}
    if not isinstance(config, VideoGemmaConfig):  # native models always load from their checkpoint
        return []
    out = []
    if config.use_image_encoder and not sources.get("image_encoder"):
        out.append("image_encoder")
    if config.use_video_encoder and not sources.get("video_encoder"):
        out.append("video_encoder")
    return out


def saved_parameter_names(model: torch.nn.Module) -> list[str]:
    """The parameters a compact save writes (adapters included): trainable ones, and those of encoders without a
    checkpoint to rebuild them from."""

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    keep = set(unsourced_components(base))
    return [n for n, p in model.named_parameters() if p.requires_grad or component_of(n) in keep]


def save_trainables(model: torch.nn.Module, out_dir: str | Path, names: list[str] | None = None) -> Path | None:
    """Write the non-LoRA tensors a reload needs to ``non_lora_trainables.safetensors``: the trainable ones
    (projectors, unfrozen encoders) and those of encoders that have no checkpoint to rebuild them from. Nothing is
    written (None returned) when there are none.

    Names are stored without PEFT's ``base_model.model.`` prefix so they load into a plain model too.
    """

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(names) if names is not None else set(saved_parameter_names(model))
    state = {}
    for name, p in model.named_parameters():
        if name not in wanted:
            continue
        if "lora_" in name or "modules_to_save" in name:
            continue
        state[_strip_peft(name)] = p.detach().to("cpu").contiguous()
    if not state:  # e.g. LoRA only: the adapter is the whole output
        return None
    path = out / TRAINABLES_FILE
    save_file(state, str(path))
    return path


def load_trainables(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Load tensors written by `save_trainables`; every stored name must exist in the model."""
    state = load_file(str(path))
    params = {_strip_peft(n): p for n, p in model.named_parameters()}
    missing = sorted(k for k in state if k not in params)
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} stored tensors are not in the model, e.g. {missing[:5]}")
    wrong = [f"{k}: saved {list(v.shape)}, the model has {list(params[k].shape)}" for k, v in state.items()
             if v.shape != params[k].shape]  # fmt: skip
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} stored tensors do not fit the model, e.g. {wrong[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].dtype))
    return sorted(state)


def _strip_peft(name: str) -> str:
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


def resolve_sources(config: VideoGemmaConfig, folder: str | Path) -> dict:
    """The config's model sources, with relative ones (an export's ``language_model`` / ``image_encoder``
    subfolders) resolved against the model folder."""
    out = {}
    for key, value in (getattr(config, "sources", None) or {}).items():
        local = Path(folder) / value if value else None
        out[key] = str(local) if local is not None and not Path(value).is_absolute() and local.exists() else value
    return out


def _rebuild_base(config: VideoGemmaConfig, dtype: torch.dtype, folder: str | Path = ".") -> VideoGemmaForCausalLM:
    sources = resolve_sources(config, folder)
    if not sources.get("llm"):
        raise ValueError("The saved config records no model sources; cannot rebuild the base model")
    model, _ = build_model(
        llm=sources["llm"],
        image_encoder=sources.get("image_encoder"),
        video_encoder=sources.get("video_encoder"),
        visual=VisualTokens.from_config(config),  # the saved video_config's widths override the size's
        use_video_encoder=config.use_video_encoder,
        dtype=dtype,
        image_encoder_config=None if sources.get("image_encoder") else config.vision_config.to_dict(),
        video_encoder_config=config.video_config.to_dict(),
    )
    return model


def _expected_shapes(config: VideoGemmaConfig) -> dict[str, tuple[int, ...]]:
    """The tensor shapes ``config`` builds (on the meta device: no memory, no initialisation)."""
    with torch.device("meta"):
        model = VideoGemmaForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _tied(model: torch.nn.Module, key: str) -> bool:
    """Whether a key reported missing is an output embedding tied to the input embedding (never saved)."""
    return key.endswith("lm_head.weight") and bool(getattr(model.config.get_text_config(), "tie_word_embeddings", True))


def tokenizer_source(path: str | Path, config: VideoGemmaConfig) -> str:
    """Where a saved custom model's tokenizer lives: its own folder when it was saved there, else the LLM source."""
    return str(path) if (Path(path) / "tokenizer_config.json").exists() else resolve_sources(config, path)["llm"]


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32, merge_lora: bool = False
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load a trained output folder (full model, trainables-only, or adapter + trainables); see module doc."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json (not a model or training output folder)")
    config = VideoGemmaConfig.from_pretrained(path)
    has_full = any(path.glob("model*.safetensors")) or any(path.glob("pytorch_model*.bin"))
    if has_full:
        model, info = load_checked(
            path,
            lambda: VideoGemmaForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True),
            lambda: _expected_shapes(config),
        )
        missing = [k for k in info["missing_keys"] if not _tied(model, k)]
        if missing:
            raise CheckpointError(f"{path}: the saved weights lack {len(missing)} tensor(s) the config builds "
                                  f"(e.g. {missing[:3]}); they would be random, so the folder is refused")  # fmt: skip
    else:
        check_checkpoint_files(path)
        model = _rebuild_base(config, dtype, path)
    if (path / ADAPTER_CONFIG).exists():
        from peft import PeftModel

        base = model
        model = load_checked(path, lambda: PeftModel.from_pretrained(base, str(path)), dict)
        if merge_lora:
            model = model.merge_and_unload()
    if (path / TRAINABLES_FILE).exists():
        loaded = load_trainables(model, path / TRAINABLES_FILE)
        logger.info("Loaded %d trained tensors from %s", len(loaded), path / TRAINABLES_FILE)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(path, config))
    model.eval()
    return model, tokenizer
