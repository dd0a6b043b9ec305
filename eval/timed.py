"""``python eval/timed.py ...``: timed (QEVD-FIT-COACH-style) evaluation of streams; a thin entry point, the same
command as ``video-gemma timed``. The library is `gemma3.evaluation.timed`."""

import sys

from gemma3.cli import main

if __name__ == "__main__":
    sys.exit(main(["timed", *sys.argv[1:]]))
