#!/usr/bin/env bash
# Run a native Gemma VLM recipe from scripts/recipes/ (YAML defaults; extra flags override them).
#
#   bash scripts/native_recipe.sh gemma4_e4b_lora --data_path data/qevd/train.json --video_folder data/qevd
#   NUM_GPUS=4 bash scripts/native_recipe.sh gemma3_4b_vision_alignment
#
# Recipes: gemma3_4b_vision_alignment, gemma4_e4b_lora, gemma4_qlora_pets (see docs/native.md).
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE="${1:?usage: native_recipe.sh RECIPE [--flag value ...]}"; shift
CONFIG="scripts/recipes/${RECIPE%.yaml}.yaml"
[ -f "$CONFIG" ] || { echo "no recipe $CONFIG; available: $(ls scripts/recipes | sed 's/.yaml//' | tr '\n' ' ')" >&2; exit 2; }
if [ "${NUM_GPUS:-1}" -gt 1 ]; then
  exec deepspeed --num_gpus "$NUM_GPUS" gemma3/train/train.py --config "$CONFIG" "$@"
fi
exec python3 -m gemma3.train.train --config "$CONFIG" "$@"
