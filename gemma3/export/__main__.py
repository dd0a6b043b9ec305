"""``python -m gemma3.export --model_path OUT --to hf|gguf|onnx --output DIR`` (the same as ``video-gemma export``)."""

import sys

from gemma3.export.hf import main
from gemma3.utils.errors import run_main

if __name__ == "__main__":
    sys.exit(run_main(main))
