#!/usr/bin/env bash
# Prepare data. With no arguments: the synthetic action dataset in ${DATA_DIR:-data/synthetic_actions}.
# With real QEVD-style clips: VIDEOS_DIR=clips/ LABELS_FILE=labels.json bash scripts/initialize_dataset.sh
#   (or --videos DIR --labels FILE [--out DIR]); writes a seeded 60/20/20 split, checksums and a validation report.
# With downloaded benchmark releases, as FORMAT:ROOT[:SPLIT] (kinetics400, ssv2, ucf101, hmdb51, qevd_fit_300k,
# qevd_fit_coach, mvbench, nextqa, perceptiontest, oxford_pets, llava_video; see docs/data.md):
#   bash scripts/initialize_dataset.sh kinetics400:/data/k400:val ucf101:/data/ucf101:test [--out DIR]
#   reads each release as the readers do, names missing or unreadable clips, and writes its report (per-class
#   counts, durations, frame rates, resolutions) to DIR/<format>_<split>.json (default data/releases); exit 1 when
#   a release has problems (the reports are still written), 2 when one cannot be read at all.
set -euo pipefail
cd "$(dirname "$0")/.."
VIDEOS_DIR=${VIDEOS_DIR:-}
LABELS_FILE=${LABELS_FILE:-}
OUT=${DATA_DIR:-}
SPECS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --videos) VIDEOS_DIR=$2; shift 2 ;;
    --labels) LABELS_FILE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *:*) SPECS+=("$1"); shift ;;
    *) echo "unknown argument: $1 (a release is FORMAT:ROOT[:SPLIT])" >&2; exit 2 ;;
  esac
done
if [ ${#SPECS[@]} -gt 0 ]; then
  REPORTS=${OUT:-data/releases}
  mkdir -p "$REPORTS"
  STATUS=0
  for SPEC in "${SPECS[@]}"; do
    FORMAT=${SPEC%%:*}; REST=${SPEC#*:}; SPLIT=default
    case "$REST" in *:*) LAST=${REST##*:}; case "$LAST" in */*|"") ;; *) SPLIT=$LAST ;; esac ;; esac
    REPORT="$REPORTS/${FORMAT}_${SPLIT}.json"
    echo "== $SPEC -> $REPORT"
    RC=0; python3 -m gemma3.cli validate "$SPEC" --json "$REPORT" || RC=$?
    [ "$RC" -gt "$STATUS" ] && STATUS=$RC
  done
  exit "$STATUS"
fi
if [ -n "$VIDEOS_DIR" ]; then
  exec python3 -m gemma3.data.prepare --videos "$VIDEOS_DIR" --labels "${LABELS_FILE:?set LABELS_FILE}" \
    --out "${OUT:-data/qevd}" --seed "${SEED:-42}"
fi
exec python3 -m gemma3.data.synthetic --out "${OUT:-data/synthetic_actions}" \
  --clips-per-class "${CLIPS_PER_CLASS:-40}" --num-frames "${NUM_FRAMES:-8}" --seed "${SEED:-0}"
