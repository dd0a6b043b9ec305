"""Batched generation over an annotation file or a folder of videos (custom model or native Gemma VLMs).

    python gemma3n_batch_inference.py --model_path outputs/finetune --annotations data/test.json \
        --media_root data --output predictions.jsonl --batch_size 8

A thin entry point: the library is `gemma3.inference` (``python -m gemma3.inference --help`` lists the options).
"""

from gemma3.inference import main

if __name__ == "__main__":
    main()
