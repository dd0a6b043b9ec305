#!/usr/bin/env bash
# Old name of scripts/finetune_qevd.sh (the dataset is QEVD), kept so existing command lines keep working.
exec bash "$(dirname "$0")/finetune_qevd.sh" "$@"
