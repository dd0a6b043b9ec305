#!/usr/bin/env bash
# Timed (QEVD-FIT-COACH) evaluation of a trained coach on rendered long sessions it has not seen: sessions written in
# the QEVD-FIT-COACH layout (gemma3.data.coach, another seed than the training data) -> each streamed through the
# model -> the feedback it spoke matched in time as FitCoach matches it: temporal P/R/F, METEOR / ROUGE-L of the
# matched pairs (docs/streaming.md). Feedback is timed causally: at the end of the window that settles it.
#
#   bash scripts/timed_eval.sh outputs/qevd_pipeline/finetune            # model folder
#
# Environment variables (optional): OUT (runs/timed), SESSIONS (8), SEED (1000: sessions unlike the training data),
# WINDOW (2: one training clip, 8 frames at 4 fps), STRIDE (0.5), MIN_WINDOWS (2), TOLERANCE (3.0),
# FEEDBACK_TIME (end: when a live system can speak; middle: the time a window refers to, not causal).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: bash scripts/timed_eval.sh MODEL_DIR}
OUT=${OUT:-runs/timed}
python3 -m gemma3.data.coach --out "$OUT/data" --seed "${SEED:-1000}" --sessions "${SESSIONS:-8}" --clips_per_label 2
python3 eval/evaluate.py --benchmark qevd_fit_coach --model_path "$MODEL" \
  --annotations "qevd_fit_coach:$OUT/data:benchmark" --output_dir "$OUT/report" \
  --window "${WINDOW:-2}" --stride "${STRIDE:-0.5}" --min_windows "${MIN_WINDOWS:-3}" --speak_on form \
  --tolerance "${TOLERANCE:-3.0}" --feedback_time "${FEEDBACK_TIME:-end}"
