"""Batched generation over an annotation file or a folder of videos (custom model or native Gemma VLMs).

    python gemma3n_batch_inference.py --model_path outputs/finetune --annotations data/test.json \
        --media_root data --output predictions.jsonl --batch_size 8

A thin entry point, the same command as ``video-gemma infer``: the library is `gemma3.serve.inference`.
"""

import sys

from gemma3.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
