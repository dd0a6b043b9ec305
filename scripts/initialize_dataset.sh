#!/usr/bin/env bash
# Prepare data. With no arguments: the synthetic action dataset in ${DATA_DIR:-data/synthetic_actions}.
# With real QEVD-style clips: VIDEOS_DIR=clips/ LABELS_FILE=labels.json bash scripts/initialize_dataset.sh
#   (or --videos DIR --labels FILE [--out DIR]); writes a seeded 60/20/20 split, checksums and a validation report.
set -euo pipefail
cd "$(dirname "$0")/.."
VIDEOS_DIR=${VIDEOS_DIR:-}
LABELS_FILE=${LABELS_FILE:-}
OUT=${DATA_DIR:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --videos) VIDEOS_DIR=$2; shift 2 ;;
    --labels) LABELS_FILE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -n "$VIDEOS_DIR" ]; then
  exec python3 -m gemma3.data.prepare --videos "$VIDEOS_DIR" --labels "${LABELS_FILE:?set LABELS_FILE}" \
    --out "${OUT:-data/qevd}" --seed "${SEED:-42}"
fi
exec python3 -m gemma3.data.synthetic --out "${OUT:-data/synthetic_actions}" \
  --clips-per-class "${CLIPS_PER_CLASS:-40}" --num-frames "${NUM_FRAMES:-8}" --seed "${SEED:-0}"
