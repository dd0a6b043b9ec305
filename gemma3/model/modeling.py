"""The Mobile-VideoGPT-style model: CLIP + VideoMamba -> ETP projectors -> spliced into a Gemma decoder.

Visual features replace the embeddings of placeholder tokens (``config.video_token_id`` /
``config.image_token_id``) with `masked_scatter`; the counts are checked first. Placeholder positions are given
the pad id before embedding, so Gemma-3n / Gemma 4 per-layer inputs computed from ids stay well defined.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from gemma3.constants import IGNORE_INDEX
from gemma3.model import backbones
from gemma3.model.configuration import ProjectorConfig, VideoGemmaConfig, VideoMambaConfig
from gemma3.model.encoders import CLIPImageEncoder, clip_to_imagenet, select_keyframes
from gemma3.model.feature_cache import FeatureCache, stochastic, weights_fingerprint
from gemma3.model.projector import ETPProjector
from gemma3.model.videomamba import VideoMambaModel

logger = logging.getLogger(__name__)


class VideoGemmaPreTrainedModel(PreTrainedModel):
    config_class = VideoGemmaConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["CLIPEncoderLayer", "Block"]
    _skip_keys_device_placement = ["past_key_values"]

    def _init_weights(self, module: torch.nn.Module) -> None:
        # Sub-models (Gemma, CLIP, VideoMamba) initialise themselves; only the projectors need ours.
        if isinstance(module, ETPProjector):
            for lin in (module.mlp[0], module.mlp[2]):
                torch.nn.init.xavier_uniform_(lin.weight)
                torch.nn.init.zeros_(lin.bias)
            torch.nn.init.zeros_(module.dwconv.weight)
            torch.nn.init.zeros_(module.dwconv.bias)


class VideoGemmaForCausalLM(VideoGemmaPreTrainedModel, GenerationMixin):
    """Gemma language model with video (VideoMamba + CLIP key frames) and image (CLIP) inputs."""

    def __init__(self, config: VideoGemmaConfig, meta_language_model: bool = False) -> None:
        """``meta_language_model``: build the language model on the ``meta`` device, as a placeholder the builder
        replaces with the loaded one (no throwaway full-size LM is materialised)."""
        super().__init__(config)
        if config.use_video_encoder and config.video_config.num_frames != config.num_keyframes:
            raise ValueError(
                f"video_config.num_frames={config.video_config.num_frames} must equal the number of key frames "
                f"({config.num_keyframes} = num_frames {config.num_frames} / chunk {config.keyframe_chunk_size} "
                f"x {config.keyframes_per_chunk})"
            )
        self.language_model = backbones.build_text_backbone(config.text_config, on_meta=meta_language_model)
        hidden = config.text_config.hidden_size
        proj: ProjectorConfig = config.projector_config
        style = {"hidden_act": proj.hidden_act, "use_norm": proj.use_norm, "norm_position": proj.norm_position}
        self.image_encoder = None
        self.image_projector = None
        if config.use_image_encoder:
            self.image_encoder = CLIPImageEncoder(config.vision_config, config.vision_feature_layer)
            grid = self.image_encoder.grid_size
            if grid != proj.image_input_grid:
                raise ValueError(f"CLIP grid is {grid}x{grid} but projector image_input_grid={proj.image_input_grid}")
            self.image_projector = ETPProjector(
                config.vision_config.hidden_size, hidden, grid, proj.image_output_grid, **style
            )
        self.video_encoder = None
        self.video_projector = None
        if config.use_video_encoder:
            vcfg: VideoMambaConfig = config.video_config
            self.video_encoder = VideoMambaModel(vcfg)
            if vcfg.out_grid != proj.video_input_grid:
                raise ValueError(
                    f"VideoMamba out_grid={vcfg.out_grid} but projector video_input_grid={proj.video_input_grid}"
                )
            self.video_projector = ETPProjector(vcfg.embed_dim, hidden, vcfg.out_grid, proj.video_output_grid, **style)
        self.feature_cache: FeatureCache | None = None  # set by training when a stage freezes the encoders
        self._fingerprint: tuple[int, str] | None = None  # (parameter versions, encoder weights hash)
        self.post_init()

    # ---- embeddings plumbing expected by GenerationMixin / PEFT ----
    def get_input_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_output_embeddings()

    def get_decoder(self) -> torch.nn.Module:
        return backbones.decoder_of(self.language_model)

    @property
    def pad_token_id(self) -> int:
        pad = self.config.text_config.pad_token_id
        return 0 if pad is None else int(pad)

    # ---- visual features ----
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 3, S, S] -> image soft tokens [N, image_output_grid**2, hidden]."""
        if self.image_encoder is None:
            raise ValueError("This model was built without an image encoder (use_image_encoder=False)")
        (tokens,) = self._encoded("image", pixel_values, lambda px: (self.image_encoder(px),))  # [N, n, Dc]
        return self.image_projector(tokens)

    def _encode_videos(self, pixel_values_videos: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The encoders' part of `get_video_features`: (CLIP tokens of the key frames [V, K, N, Dc] or None,
        VideoMamba tokens of the key frames [V, K, gv*gv, Dv] or None)."""
        cfg = self.config
        v, t = pixel_values_videos.shape[:2]
        key_clip = None
        if self.image_encoder is not None:
            clip_tokens = self.image_encoder(pixel_values_videos.flatten(0, 1))  # [V*T, N, Dc]
            clip_tokens = clip_tokens.unflatten(0, (v, t))  # [V, T, N, Dc]
            keep = select_keyframes(clip_tokens, cfg.keyframe_chunk_size, cfg.keyframes_per_chunk)  # [V, K]
            rows = torch.arange(v, device=keep.device)[:, None]  # [V, 1]
            key_clip = clip_tokens[rows, keep]  # [V, K, N, Dc]
        else:
            keep = torch.linspace(0, t - 1, cfg.num_keyframes, device=pixel_values_videos.device).round().long()
            keep = keep.expand(v, cfg.num_keyframes)
        mamba_tokens = None
        if self.video_encoder is not None:
            rows = torch.arange(v, device=keep.device)[:, None]  # [V, 1]
            key_pixels = pixel_values_videos[rows, keep]  # [V, K, 3, S, S]
            dtype = next(self.video_encoder.parameters()).dtype
            mamba_tokens = self.video_encoder(clip_to_imagenet(key_pixels.float()).to(dtype))  # [V, K, gv*gv, Dv]
        return key_clip, mamba_tokens

    def get_video_features(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """pixel_values_videos [V, T, 3, S, S] (CLIP-normalised) -> video soft tokens [V, num_video_tokens, hidden].

        CLIP encodes every frame; attention-based selection keeps the key frames; VideoMamba encodes the key frames.
        Per key frame the VideoMamba tokens come first, then that frame's CLIP tokens.
        """
        v, t = pixel_values_videos.shape[:2]
        if t != self.config.num_frames:
            raise ValueError(f"Videos must have num_frames={self.config.num_frames} frames, got {t}")
        key_clip, mamba_tokens = self._encoded("video", pixel_values_videos, self._encode_videos)
        parts = []
        if mamba_tokens is not None:
            k = mamba_tokens.shape[1]
            parts.append(self.video_projector(mamba_tokens.flatten(0, 1)).unflatten(0, (v, k)))  # [V, K, g*g, H]
        if key_clip is not None:
            k = key_clip.shape[1]
            parts.append(self.image_projector(key_clip.flatten(0, 1)).unflatten(0, (v, k)))  # [V, K, gi*gi, H]
        return torch.cat(parts, dim=2).flatten(1, 2)  # [V, K*(gv*gv + gi*gi), H]

    def _encoded(self, kind: str, pixels: torch.Tensor, encode) -> tuple:
        """``encode(pixels)`` (a tuple of [N, ...] tensors or None), through ``self.feature_cache`` when one is set,
        every encoder parameter is frozen and no encoder layer is stochastic in the current mode."""
        cache = self.feature_cache
        encoders = [m for m in (self.image_encoder, self.video_encoder) if m is not None]
        if cache is None or any(p.requires_grad for m in encoders for p in m.parameters()):
            return encode(pixels)
        if any(stochastic(m) for m in encoders):
            return encode(pixels)
        versions = sum(p._version for m in encoders for p in (*m.parameters(), *m.buffers()))
        if self._fingerprint is None or self._fingerprint[0] != versions:  # weights changed in place: re-hash
            self._fingerprint = (versions, weights_fingerprint(encoders))
        keys = [cache.key(x, f"{kind}:{self._fingerprint[1]}") for x in pixels]
        first: dict[str, int] = {}  # one encode per distinct input in the batch: its first position
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        known = {k: cache.get(k) for k in first}
        missing = [first[k] for k, entry in known.items() if entry is None]
        if missing:
            with torch.no_grad():
                computed = encode(pixels[missing])
            for j, i in enumerate(missing):
                known[keys[i]] = tuple(None if c is None else c[j] for c in computed)
                cache.put(keys[i], known[keys[i]])
        found = [known[k] for k in keys]
        return tuple(
            None if found[0][n] is None else torch.stack([e[n] for e in found]).to(pixels.device)
            for n in range(len(found[0]))
        )

    def _scatter(
        self, embeds: torch.Tensor, input_ids: torch.Tensor, token_id: int, features: torch.Tensor | None, kind: str
    ) -> torch.Tensor:
        mask = input_ids == token_id  # [B, L]
        n_tokens = int(mask.sum())
        n_features = 0 if features is None else features.shape[0] * features.shape[1]
        if n_tokens != n_features:
            raise ValueError(
                f"{kind} placeholder tokens and {kind} features do not match: {n_tokens} placeholder tokens "
                f"(id {token_id}) in input_ids but {n_features} {kind} feature vectors"
            )
        if n_tokens == 0:
            return embeds
        feats = features.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        return embeds.masked_scatter(mask.unsqueeze(-1).expand_as(embeds), feats)

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token embeddings with visual features spliced in; also per-layer inputs for Gemma-3n / 4.

        Returns inputs_embeds [B, L, H] and per_layer_inputs [B, L, layers, d] or None.
        """
        cfg = self.config
        placeholder = (input_ids == cfg.image_token_id) | (input_ids == cfg.video_token_id)
        ids = input_ids.masked_fill(placeholder, self.pad_token_id)
        embeds = self.get_input_embeddings()(ids)  # [B, L, H], already scaled by sqrt(H)
        per_layer = backbones.per_layer_inputs(self.language_model, ids)
        videos = None if pixel_values_videos is None else self.get_video_features(pixel_values_videos)
        images = None if pixel_values is None else self.get_image_features(pixel_values)
        embeds = self._scatter(embeds, input_ids, cfg.video_token_id, videos, "video")
        embeds = self._scatter(embeds, input_ids, cfg.image_token_id, images, "image")
        return embeds, per_layer

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Causal-LM forward.

        With ``labels`` the loss is computed from logits at supervised positions only (the 262k-word head is the
        dominant cost on CPU), and ``logits`` holds those positions' logits [num_supervised, V].
        """
        per_layer = None
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass input_ids (or inputs_embeds)")
            inputs_embeds, per_layer = self.embed_inputs(input_ids, pixel_values, pixel_values_videos)
        decoder_kwargs = {"per_layer_inputs": per_layer} if per_layer is not None else {}
        # The Trainer passes the number of supervised tokens of the whole (accumulated, all-rank) batch: the loss is
        # then sum / that number, so gradient accumulation and data parallelism give the full batch's mean.
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **decoder_kwargs,
            **kwargs,
        )
        hidden = outputs.last_hidden_state  # [B, L, H]
        loss = None
        if labels is not None:
            shift_labels = labels[:, 1:]  # [B, L-1]
            supervised = shift_labels != IGNORE_INDEX
            if not bool(supervised.any()):
                raise ValueError("labels supervise no token (all are IGNORE_INDEX): check the loss mask")
            logits = backbones.lm_logits(self.language_model, hidden[:, :-1][supervised])  # [S, V]
            if num_items_in_batch is None:
                loss = F.cross_entropy(logits.float(), shift_labels[supervised])
            else:
                total = F.cross_entropy(logits.float(), shift_labels[supervised], reduction="sum")
                loss = total / torch.as_tensor(num_items_in_batch, device=total.device, dtype=total.dtype)
        else:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = backbones.lm_logits(self.language_model, hidden[:, keep])  # [B, L', V]
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def component_of(param_name: str) -> str:
    """Component a parameter name belongs to (works with PEFT's ``base_model.model.`` prefix)."""
    for key, group in (
        ("image_projector", "projector"),
        ("video_projector", "projector"),
        ("image_encoder", "image_encoder"),
        ("video_encoder", "video_encoder"),
    ):
        if f"{key}." in param_name:
            return group
    return "language_model"


AutoConfig.register(VideoGemmaConfig.model_type, VideoGemmaConfig, exist_ok=True)
AutoConfig.register(VideoMambaConfig.model_type, VideoMambaConfig, exist_ok=True)
AutoConfig.register(ProjectorConfig.model_type, ProjectorConfig, exist_ok=True)
AutoModelForCausalLM.register(VideoGemmaConfig, VideoGemmaForCausalLM, exist_ok=True)
