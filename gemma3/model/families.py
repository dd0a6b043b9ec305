"""The model families, as registered records: the one place that knows how each family is recognised, loaded,
prompted, adapted and saved.

Families:

- ``video_gemma`` (custom): the Mobile-VideoGPT-style model (CLIP + VideoMamba -> ETP projectors -> a Gemma 3 /
  3n / 4 text backbone). Built from a text backbone (or a multimodal checkpoint's text decoder) for training; loaded
  from a saved folder or training output otherwise. Media tags expand to the config's placeholder ids.
- ``gemma3`` / ``gemma3n`` / ``gemma4`` (native): the stock vision-language models, with their own processors and
  chat templates; a video is a sequence of frames given as images.

Training, inference, evaluation, the lmms-eval plugin and the pipeline ask `family_for_config` /
`family_for_checkpoint` once and then call the record's methods; nothing else compares family strings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gemma3.constants import CLIP_MEAN, CLIP_STD, DEFAULT_NATIVE_FRAMES
from gemma3.data.plugins import CustomModelPlugin, NativeVLMPlugin
from gemma3.data.processing import ProcessingConfig, resolve_processing
from gemma3.data.template import ChatTemplate, get_template
from gemma3.model import backbones
from gemma3.model.builder import build_meta_model, build_model, load_model, tokenizer_source
from gemma3.model.configuration import VideoGemmaConfig
from gemma3.model.lora import lora_target_names
from gemma3.model.modeling import VideoGemmaForCausalLM, component_of
from gemma3.model.native import checkpoint_sources, load_native_model
from gemma3.model.reference_configs import meta_model

logger = logging.getLogger(__name__)

KINDS = ("auto", "custom", "native")


@dataclass(frozen=True)
class Family:
    """What one model family is and how the shared pipeline handles it (the custom and native records below)."""

    name: str
    kind: str  # "custom" | "native"
    model_types: tuple[str, ...]  # config.model_type values that select this family
    config_class: str
    model_class: str

    def template(self, config) -> ChatTemplate:
        """The chat template the model was trained with."""
        raise NotImplementedError

    def stop_strings(self, config) -> tuple[str, ...]:
        """Strings that end a generated reply (the template's end-of-turn marker)."""
        return self.template(config).stop_strings

    def stop_token_ids(self, config, tokenizer) -> list[int]:
        """EOS plus the ids of the template's stop strings that are single tokens of ``tokenizer``."""
        tok = getattr(tokenizer, "tokenizer", tokenizer)
        ids = {tok.eos_token_id}
        for s in self.stop_strings(config):
            tid = tok.convert_tokens_to_ids(s)
            if isinstance(tid, int) and tid != tok.unk_token_id:
                ids.add(tid)
        return sorted(i for i in ids if i is not None)

    # ---- loading
    def load(self, path: str | Path, dtype: torch.dtype = torch.float32, quantization_config=None):
        """A saved model or training output -> (model, tokenizer or processor)."""
        raise NotImplementedError

    def load_for_training(self, model_args, data_args, dtype: torch.dtype, quantization_config=None):
        """The starting point of a training run -> (model, tokenizer or processor)."""
        raise NotImplementedError

    # ---- data
    def load_on_meta(self, model_args, data_args):
        """What `load_for_training` would return, built on the ``meta`` device from configs (no weights)."""
        raise NotImplementedError

    def data_side(self, path: str | Path, **overrides):
        """(tokenizer or processor, data plugin, chat template) of a saved model, without loading its weights:
        what ``validate --model_path`` needs to count tokens exactly as training does."""
        from types import SimpleNamespace

        config, processor = self.load_config_and_processor(path)
        stub = SimpleNamespace(config=config)
        processing = resolve_processing(path, self, stub, processor, **overrides)
        return processor, self.plugin(stub, processor, processing), self.template(config)

    def load_config_and_processor(self, path: str | Path):
        """The model's config and its tokenizer / processor (no weights)."""
        raise NotImplementedError

    def plugin(self, model, processor, processing, max_length: int | None = None):
        """The data plugin (`gemma3.data.plugins.MediaPlugin`) that turns samples into this family's tensors."""
        raise NotImplementedError

    def default_processing(self, model, processor, num_frames: int | None = None):
        """The frame processing a model of this family uses when its folder records none."""
        raise NotImplementedError

    # ---- training
    def component_fn(self) -> Callable[[str], str]:
        """Parameter name -> component (``language_model``, ``projector``, ``image_encoder``, ...)."""
        raise NotImplementedError

    def lora_targets(self, model: torch.nn.Module, targets: str, include_vision: bool = False) -> list[str]:
        """Full names of the linear layers LoRA adapts (PEFT ``target_modules``)."""
        raise NotImplementedError

    def saves_full_model(self, language_model_trains: bool, use_lora: bool) -> bool:
        """Whether a training output holds full weights (else config + trained tensors / adapter)."""
        return language_model_trains and not use_lora

    def load_merged(self, output_dir: str | Path) -> torch.nn.Module:
        """A trained LoRA output reloaded from disk with the adapter merged (for export)."""
        raise NotImplementedError


@dataclass(frozen=True)
class CustomFamily(Family):
    """The custom model; its chat template comes from its text backbone's family."""

    def template(self, config) -> ChatTemplate:
        name = getattr(config, "chat_template", None)
        if name:
            return get_template(name)
        return get_template(backbones.backbone_spec(config.text_config).chat_template)

    def load(self, path, dtype=torch.float32, quantization_config=None):
        return load_model(path, dtype=dtype)

    def load_config_and_processor(self, path):
        from transformers import AutoTokenizer

        config = VideoGemmaConfig.from_pretrained(path)
        return config, AutoTokenizer.from_pretrained(tokenizer_source(path, config))

    def load_for_training(self, model_args, data_args, dtype, quantization_config=None):
        from transformers import AutoConfig

        if AutoConfig.from_pretrained(model_args.model_id).model_type in self.model_types:
            return load_model(model_args.model_id, dtype=dtype)
        return build_model(
            **_build_arguments(model_args, data_args), dtype=dtype, quantization_config=quantization_config
        )

    def load_on_meta(self, model_args, data_args):
        from transformers import AutoConfig

        if AutoConfig.from_pretrained(model_args.model_id).model_type in self.model_types:  # a saved custom model
            config, tokenizer = self.load_config_and_processor(model_args.model_id)
            with torch.device("meta"):
                return VideoGemmaForCausalLM(config), tokenizer
        return build_meta_model(**_build_arguments(model_args, data_args))

    def plugin(self, model, processor, processing, max_length=None):
        return CustomModelPlugin(
            model.config,
            num_frames=processing.num_frames,
            sampling=processing.frame_sampling,
            fps=processing.fps,
            image_size=processing.image_size,
            mean=processing.image_mean,
            std=processing.image_std,
            max_length=max_length,
        )

    def default_processing(self, model, processor, num_frames=None):
        config = model.config
        return ProcessingConfig(
            family=self.name,
            num_frames=num_frames or config.num_frames,
            image_size=config.vision_config.image_size,
            image_mean=tuple(CLIP_MEAN),
            image_std=tuple(CLIP_STD),
            chat_template=self.template(config).name,
        )

    def component_fn(self):
        return component_of

    def lora_targets(self, model, targets, include_vision=False):
        try:
            return lora_target_names(model, targets, lambda name: name.startswith("language_model."))
        except ValueError as err:
            raise ValueError(f"LoRA targets {targets!r} match no linear layer of the language model") from err

    def load_merged(self, output_dir):
        return load_model(output_dir, merge_lora=True)[0]


@dataclass(frozen=True)
class NativeFamily(Family):
    """A stock Gemma VLM; module names say which parameters form each component."""

    vision: tuple[str, ...] = ("vision_tower",)
    projector: tuple[str, ...] = ()
    audio: tuple[str, ...] = ()

    @property
    def template_name(self) -> str:
        return backbones.BACKBONES[self.name].chat_template

    def template(self, config=None) -> ChatTemplate:
        return get_template(self.template_name)

    def component(self, param_name: str) -> str:
        """``language_model``, ``image_encoder``, ``projector`` or ``audio`` for a parameter name."""
        parts = set(param_name.split("."))
        if parts.intersection(self.vision):
            return "image_encoder"
        if parts.intersection(self.projector):
            return "projector"
        if parts.intersection(self.audio):
            return "audio"
        return "language_model"

    def load(self, path, dtype=torch.float32, quantization_config=None):
        base, _, _ = checkpoint_sources(path)
        family_for_checkpoint(base, kind="native")  # a clear error for anything but a native Gemma VLM
        return load_native_model(path, dtype=dtype, quantization_config=quantization_config)

    def load_for_training(self, model_args, data_args, dtype, quantization_config=None):
        return self.load(model_args.model_id, dtype, quantization_config)

    def load_on_meta(self, model_args, data_args):
        config, processor = self.load_config_and_processor(model_args.model_id)
        return meta_model(config), processor

    def load_config_and_processor(self, path):
        from transformers import AutoConfig, AutoProcessor

        base, processor_src, _ = checkpoint_sources(path)
        return AutoConfig.from_pretrained(base), AutoProcessor.from_pretrained(processor_src)

    def plugin(self, model, processor, processing, max_length=None):
        return NativeVLMPlugin(
            processor,
            self.template(),
            self.name,
            num_frames=processing.num_frames,
            max_length=max_length,
            sampling=processing.frame_sampling,
            fps=processing.fps,
        )

    def default_processing(self, model, processor, num_frames=None):
        ip = getattr(processor, "image_processor", None)
        size = getattr(ip, "size", None)  # a dict or transformers' SizeDict
        get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
        side = get("height") or get("shortest_edge")
        mean, std = getattr(ip, "image_mean", None), getattr(ip, "image_std", None)
        return ProcessingConfig(
            family=self.name,
            num_frames=num_frames or DEFAULT_NATIVE_FRAMES,
            image_size=side,
            image_mean=tuple(mean) if mean is not None else None,
            image_std=tuple(std) if std is not None else None,
            chat_template=self.template_name,
        )

    def component_fn(self):
        return self.component

    def lora_targets(self, model, targets, include_vision=False):
        allowed = {"language_model", "image_encoder", "projector"} if include_vision else {"language_model"}
        names = lora_target_names(model, targets, lambda name: self.component(name) in allowed)
        logger.info("LoRA on %d linear layers (%s, vision %s)", len(names), targets, "on" if include_vision else "off")
        return names

    def saves_full_model(self, language_model_trains, use_lora):
        return not use_lora  # vision-only runs too: the stock class is saved whole

    def load_merged(self, output_dir):
        return self.load(output_dir)[0].merge_and_unload()


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        CustomFamily(
            "video_gemma", "custom", ("video_gemma",), "VideoGemmaConfig", "VideoGemmaForCausalLM"
        ),
        NativeFamily(
            "gemma3", "native", ("gemma3",), "Gemma3Config", "Gemma3ForConditionalGeneration",
            projector=("multi_modal_projector",),
        ),
        NativeFamily(
            "gemma3n", "native", ("gemma3n",), "Gemma3nConfig", "Gemma3nForConditionalGeneration",
            projector=("embed_vision",), audio=("audio_tower", "embed_audio"),
        ),
        NativeFamily(
            "gemma4", "native", ("gemma4",), "Gemma4Config", "Gemma4ForConditionalGeneration",
            projector=("embed_vision",), audio=("audio_tower", "embed_audio"),
        ),
    )
}  # fmt: skip

CUSTOM = FAMILIES["video_gemma"]


def get_family(name: str) -> Family:
    """Family by registry name."""
    if name not in FAMILIES:
        raise KeyError(f"Unknown model family {name!r}; registered: {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_for_config(config, kind: str = "auto") -> Family:
    """The family a config belongs to.

    ``kind`` ``auto``: a saved custom model or a Gemma text backbone -> the custom family; a multimodal Gemma
    checkpoint -> its native family. ``custom`` forces the custom family (a multimodal checkpoint then gives its text
    decoder to a new custom model); ``native`` requires a native VLM.
    """
    if kind not in KINDS:
        raise ValueError(f"model family kind must be one of {KINDS}, got {kind!r}")
    model_type = getattr(config, "model_type", None)
    text_types = {s.text_model_type for s in backbones.BACKBONES.values()}
    native = next((f for f in FAMILIES.values() if f.kind == "native" and model_type in f.model_types), None)
    if model_type in CUSTOM.model_types or (kind != "native" and model_type in text_types):
        if kind == "native":
            raise ValueError(f"model_type {model_type!r} is not a native Gemma VLM (use --model_family custom)")
        return CUSTOM
    if native is not None:
        return CUSTOM if kind == "custom" else native
    supported = sorted({t for f in FAMILIES.values() for t in f.model_types} | text_types)
    raise ValueError(f"model_type {model_type!r} is not supported; supported model types: {supported}")


def family_for_checkpoint(model_id: str | Path, kind: str = "auto") -> Family:
    """`family_for_config` on a checkpoint's ``config.json`` (HF id or folder; a clear error when it is neither)."""
    from transformers import AutoConfig

    path = Path(str(model_id)).expanduser()
    looks_local = path.is_absolute() or str(model_id).startswith((".", "~")) or path.exists()
    if looks_local and not (path / "config.json").exists():
        what = "does not exist" if not path.exists() else "has no config.json (not a model folder)"
        raise FileNotFoundError(f"model path {model_id}: {what}")
    try:
        config = AutoConfig.from_pretrained(str(path) if path.exists() else str(model_id))
    except (OSError, ValueError) as err:
        if path.exists():
            raise
        raise FileNotFoundError(
            f"model path {model_id}: no such local folder, and not a model id the hub (or its cache) has ({err})"
        ) from err
    return family_for_config(config, kind)


def _build_arguments(model_args, data_args) -> dict:
    """The custom builder's arguments from the training arguments (`build_model` / `build_meta_model`)."""
    return {
        "llm": model_args.model_id,
        "image_encoder": model_args.image_encoder,
        "video_encoder": model_args.video_encoder,
        "visual": model_args.visual_tokens(),
        "use_video_encoder": model_args.use_video_encoder,
        "image_encoder_config": _load_mapping(model_args.image_encoder_config),
        "video_encoder_config": _load_mapping(model_args.video_encoder_config),
    }


def _load_mapping(path: str | None) -> dict | None:
    import yaml

    return None if not path else yaml.safe_load(Path(path).read_text())
