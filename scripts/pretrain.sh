#!/usr/bin/env bash
# Stage 1: projector alignment. Encoders and LLM frozen; the video/image ETP projectors train.
# Every hyperparameter is an environment variable; extra flags are passed through to train.py.
#   MODEL_ID=google/gemma-3n-E2B-it DATA_PATH=data/train.json VIDEO_FOLDER=data bash scripts/pretrain.sh
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_ID=${MODEL_ID:-google/gemma-3n-E2B-it}
IMAGE_ENCODER=${IMAGE_ENCODER:-openai/clip-vit-base-patch16}
VIDEO_ENCODER=${VIDEO_ENCODER:-}                 # official VideoMamba .pth (e.g. videomamba_m16_25M_f8_res224.pth)
DATA_PATH=${DATA_PATH:?set DATA_PATH to an annotation file (or dataset name)}
VIDEO_FOLDER=${VIDEO_FOLDER:-$(dirname "$DATA_PATH")}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/pretrain}
RUN_NAME=${RUN_NAME:-$(basename "$OUTPUT_DIR")}
EPOCHS=${EPOCHS:-1}
LR=${LR:-1e-3}
PROJECTOR_LR=${PROJECTOR_LR:-$LR}
BATCH=${BATCH:-8}
GRAD_ACCUM=${GRAD_ACCUM:-4}
MAX_LENGTH=${MAX_LENGTH:-2048}
NUM_FRAMES=${NUM_FRAMES:-16}
DEEPSPEED=${DEEPSPEED:-scripts/zero2.json}
NUM_GPUS=${NUM_GPUS:-$(python3 -c 'import torch; print(torch.cuda.device_count())')}
BF16=${BF16:-$([ "$NUM_GPUS" -gt 0 ] && echo True || echo False)}

ARGS=(
  --stage pretrain --model_family custom
  --model_id "$MODEL_ID" --image_encoder "$IMAGE_ENCODER"
  --data_path "$DATA_PATH" --video_folder "$VIDEO_FOLDER" --image_folder "$VIDEO_FOLDER"
  --output_dir "$OUTPUT_DIR" --run_name "$RUN_NAME"
  --num_train_epochs "$EPOCHS" --learning_rate "$LR" --projector_lr "$PROJECTOR_LR"
  --per_device_train_batch_size "$BATCH" --gradient_accumulation_steps "$GRAD_ACCUM"
  --max_length "$MAX_LENGTH" --num_frames "$NUM_FRAMES"
  --warmup_ratio 0.03 --lr_scheduler_type cosine --weight_decay 0.0
  --save_strategy steps --save_steps 500 --save_total_limit 2 --logging_steps 10
  --bf16 "$BF16" --report_to "${REPORT_TO:-tensorboard}"
)
[ -n "$VIDEO_ENCODER" ] && ARGS+=(--video_encoder "$VIDEO_ENCODER")
if [ "$NUM_GPUS" -gt 0 ]; then
  exec deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29500}" gemma3/train/train.py \
    --deepspeed "$DEEPSPEED" "${ARGS[@]}" "$@"
fi
exec python3 -m gemma3.train.train --use_cpu True "${ARGS[@]}" "$@"
