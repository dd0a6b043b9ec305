"""Long runs at tiny cost, as separate processes a test can kill: batch inference over many samples through the
project's `predict` with an instant stand-in model (the model's own memory does not change over a run; what is
measured and killed here is the inference loop's bookkeeping, files and resume).

    python tests/long_runs.py OUTPUT N [--kill_at K] [--torn] [--rss RSS.json]

``--kill_at K``: the process sends itself SIGKILL when it is asked to generate sample K (``--torn`` first
appends half a record to OUTPUT, as a kill in the middle of a write leaves it). ``--rss``: the resident set size
(MB) after every 1,000 samples, written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

from gemma3.data.sample import Sample
from gemma3.serve.inference import predict


def rss_mb() -> float:
    """This process's resident set size in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmRSS in /proc/self/status")


class EchoPredictor:
    """Answers ``answer <id>`` at once; can kill its own process at the K-th sample it is asked for."""

    def __init__(self, output: Path, kill_at: int | None, torn: bool, rss: Path | None) -> None:
        self.output, self.kill_at, self.torn, self.rss_file = output, kill_at, torn, rss
        self.seen, self.rss = 0, []

    def encode(self, sample: Sample) -> dict:
        return {"id": sample.id}

    def generate(self, feats: list[dict], **_) -> tuple[list[str], list[int]]:
        for _ in feats:
            self.seen += 1
            if self.seen == self.kill_at:
                if self.torn:
                    with self.output.open("a") as f:
                        f.write('{"id": "s')
                os.kill(os.getpid(), signal.SIGKILL)
            if self.rss_file is not None and self.seen % 1000 == 0:
                self.rss.append(round(rss_mb(), 2))
                self.rss_file.write_text(json.dumps(self.rss))
        return [f"answer {f['id']}" for f in feats], [2] * len(feats)


def samples(n: int) -> list[Sample]:
    return [Sample(f"s{i:05d}", [{"role": "user", "content": f"Question {i}?"},
                                 {"role": "assistant", "content": f"answer s{i:05d}"}]) for i in range(n)]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("output", type=Path)
    ap.add_argument("n", type=int)
    ap.add_argument("--kill_at", type=int, default=None)
    ap.add_argument("--torn", action="store_true")
    ap.add_argument("--rss", type=Path, default=None)
    args = ap.parse_args()
    predictor = EchoPredictor(args.output, args.kill_at, args.torn, args.rss)
    stats = predict(predictor, samples(args.n), args.output, batch_size=16, progress=False)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
