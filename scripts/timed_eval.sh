#!/usr/bin/env bash
# Timed (QEVD-FIT-COACH-style) evaluation of a trained model on long synthetic videos:
# long videos with time-stamped action changes -> streaming inference over each -> temporal P/R/F, text metrics,
# per-window accuracy and timeline PNGs (docs/streaming.md).
#
#   bash scripts/timed_eval.sh outputs/qevd_pipeline/finetune            # model folder
#
# Environment variables (optional): OUT (runs/timed), VIDEOS (8), SEGMENTS (6), WINDOW (2), STRIDE (2: windows
# one repetition long, as the training clips), PROMPT (the training question), TOLERANCE (3.0), FEEDBACK_TIME
# (middle: the time a window's feedback refers to; end: when a live system could speak), MIN_WINDOWS (1),
# SEED (1000: videos unlike the training clips).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: bash scripts/timed_eval.sh MODEL_DIR}
OUT=${OUT:-runs/timed}
PROMPT=${PROMPT:-What action is being performed in this video?}
python3 -m gemma3.data.long_videos --out "$OUT/data" --videos "${VIDEOS:-8}" --segments "${SEGMENTS:-6}" --seed "${SEED:-1000}"
for video in "$OUT"/data/videos/*.mp4; do
  python3 -m gemma3.serve.stream --model_path "$MODEL" --source "$video" --output "$OUT/streams/$(basename "${video%.mp4}").jsonl" \
    --window "${WINDOW:-2}" --stride "${STRIDE:-2}" --prompt "$PROMPT" --batch_size 8 --max_new_tokens 8
done
python3 -m gemma3.evaluation.timed --ground_truth "$OUT/data/timed.json" --streams "$OUT/streams" --out "$OUT/report" \
  --tolerance "${TOLERANCE:-3.0}" --feedback_time "${FEEDBACK_TIME:-middle}" --min_windows "${MIN_WINDOWS:-1}"
