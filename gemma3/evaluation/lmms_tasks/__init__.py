"""lmms-eval tasks for the project's own benchmarks, over prepared data (see `gemma3.evaluation.lmms_tasks.prepare`).

    python -m gemma3.evaluation.lmms_tasks.prepare --data_dir data/synthetic_actions          # writes data/lmms/*.json
    python -m lmms_eval --model video_gemma --model_args pretrained=outputs/qevd_pipeline/finetune \
        --include_path gemma3/evaluation/lmms_tasks \
        --tasks video_gemma_action_mc,video_gemma_action_gen,video_gemma_feedback --batch_size 8 \
        --output_path outputs/lmms

The YAMLs read ``data/lmms/{action,feedback}.json`` relative to the directory lmms-eval runs in (the repo root).
"""
