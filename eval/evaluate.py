"""``python eval/evaluate.py --benchmark NAME ...``: a thin entry point, the same command as ``video-gemma eval``.
The evaluation library is `gemma3.evaluation` (benchmarks, metrics, timed evaluation, the lmms-eval plugin)."""

import sys

from gemma3.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
