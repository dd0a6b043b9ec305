#!/usr/bin/env bash
# The main job: data -> projector pretraining -> LoRA finetuning -> batched inference -> evaluation -> results.
#
#   bash scripts/finetune_qevd.sh                 # CPU, offline: Gemma 3 270M (PyPI GGUF) + the rendered coach
#   PRESET=gpu DATA_DIR=data/qevd bash scripts/finetune_qevd.sh      # GPU + hub: gemma-3n-E2B-it, CLIP, VideoMamba
#   REHEARSE=1 PRESET=gpu bash scripts/finetune_qevd.sh               # the gpu preset rehearsed on CPU, offline
#
# Environment variables (all optional): PRESET (auto|cpu|gpu), DATA_DIR, OUTPUT_DIR, MODEL_ID, VIDEO_ENCODER,
# EPOCHS, PRETRAIN_STEPS, FINETUNE_STEPS, LR, PRETRAIN_LR, PROJECTOR_LR, ENCODER_LR, LORA_R, LORA_ALPHA, BATCH,
# GRAD_ACCUM, MAX_LENGTH, NUM_FRAMES, CLIPS_PER_CLASS, SEED, REPORT_TO, REHEARSE=1. Extra flags pass through to the pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."

ARGS=(--preset "${PRESET:-auto}" --data_dir "${DATA_DIR:-data/qevd_coach}"
      --output_dir "${OUTPUT_DIR:-outputs/qevd_pipeline}" --seed "${SEED:-0}" --report_to "${REPORT_TO:-tensorboard}")
add() { if [ -n "${2:-}" ]; then ARGS+=("$1" "$2"); fi; }
add --model_id "${MODEL_ID:-}"
add --video_encoder "${VIDEO_ENCODER:-}"
add --epochs "${EPOCHS:-}"
add --pretrain_steps "${PRETRAIN_STEPS:-}"
add --finetune_steps "${FINETUNE_STEPS:-}"
add --lr "${LR:-}"
add --pretrain_lr "${PRETRAIN_LR:-}"
add --projector_lr "${PROJECTOR_LR:-}"
add --encoder_lr "${ENCODER_LR:-}"
add --lora_r "${LORA_R:-}"
add --lora_alpha "${LORA_ALPHA:-}"
add --batch "${BATCH:-}"
add --grad_accum "${GRAD_ACCUM:-}"
add --max_length "${MAX_LENGTH:-}"
add --num_frames "${NUM_FRAMES:-}"
add --clips_per_class "${CLIPS_PER_CLASS:-}"
if [ "${REHEARSE:-0}" = "1" ]; then ARGS+=(--rehearse); fi
exec python3 -m gemma3.pipeline "${ARGS[@]}" "$@"
