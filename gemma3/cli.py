"""``video-gemma``: one command with a subcommand per job, as the field's tools have (``video-gemma train ...``).

    video-gemma train --config scripts/recipes/gemma4_e4b_lora.yaml      # any training stage, either family
    video-gemma infer --model_path OUT --annotations test.json --output p.jsonl
    video-gemma eval --benchmark action_recognition --predictions p.jsonl --annotations test.json
    video-gemma stream --model_path OUT --source workout.mp4 --output runs/w.jsonl
    video-gemma demo --model_path OUT
    video-gemma export --model_path OUT --to hf|gguf|onnx --output exports/x
    video-gemma preflight --config stage.yaml --num_gpus 8 --gpu_memory 80
    video-gemma validate data/annotations/train.json --model_path OUT --max-length 2048

Each subcommand is the ``main`` of its module (``video-gemma SUB --help`` lists its options); the scripts
(``gemma3n_batch_inference.py``, ``eval/evaluate.py``, ``dataset.py validate``, ``scripts/*.sh``) and the
``python -m gemma3.<room>.<module>`` forms run the same functions. Only the core dependencies are needed to parse
any subcommand; a subcommand that needs an extra (``train``, ``demo``, ``export``, ``eval``) imports it when it
runs and says which extra to install when it is missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from gemma3.data import validate as validate_data
from gemma3.utils.errors import run_main


def validate(argv: list[str] | None = None) -> int:
    """``validate``: every bad sample of an annotation file; with ``--model_path`` lengths are counted as training
    counts them (the model family's media plugin and chat template)."""
    args = validate_data.build_parser().parse_args(argv)
    encode = None
    if args.model_path:
        # lazy: the model floor (transformers' model classes, ~7 s) only when --model_path asks for a model
        from gemma3.model.families import family_for_checkpoint

        processor, plugin, template = family_for_checkpoint(args.model_path).data_side(args.model_path)

        def encode(sample):
            return plugin.encode(sample, processor, template)

    return validate_data.print_report(args, encode)


@dataclass(frozen=True)
class Command:
    """One subcommand: what it does (one line for the listing) and where its ``main(argv)`` is
    (``module:function``, imported when the subcommand runs: importing every room takes ~15 s, too long for
    ``video-gemma --help``)."""

    help: str
    target: str

    def load(self) -> Callable:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


COMMANDS: dict[str, Command] = {
    "train": Command("train one stage (pretrain | finetune), custom or native family", "gemma3.train.train:main"),
    "infer": Command("batched, resumable generation over annotations or a video folder", "gemma3.serve.inference:main"),
    "eval": Command("score predictions on a benchmark (or run the model first)", "gemma3.evaluation.evaluate:main"),
    "timed": Command("timed feedback evaluation of streams on long videos", "gemma3.evaluation.timed:main"),
    "stream": Command("streaming feedback on a video, a growing folder, a camera or a URL", "gemma3.serve.stream:main"),
    "demo": Command("the web demo (the coach on an uploaded clip)", "gemma3.serve.demo:main"),
    "export": Command("export a trained model: merged HF folder, GGUF, ONNX", "gemma3.export.hf:main"),
    "preflight": Command("will a training run fit? memory and steps, no download", "gemma3.train.preflight:main"),
    "validate": Command("report every bad sample of an annotation file", "gemma3.cli:validate"),
    "pipeline": Command("the main job: data, pretrain, finetune, inference, evaluation", "gemma3.pipeline:main"),
    "synthesize": Command("generate the procedural action dataset", "gemma3.data.synthetic:main"),
    "prepare": Command("prepare a dataset from real clips and labels", "gemma3.data.prepare:main"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: a subcommand and its arguments (parsed by the subcommand itself)."""
    lines = "\n".join(f"  {name:<11} {c.help}" for name, c in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="video-gemma",
        description="Small video-language models for action understanding.",
        epilog=f"subcommands:\n{lines}\n\n'video-gemma SUBCOMMAND --help' lists a subcommand's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=sorted(COMMANDS), metavar="SUBCOMMAND", help="one of: " + ", ".join(COMMANDS))
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``video-gemma SUBCOMMAND ARGS``; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0 if argv else 2
    args = build_parser().parse_args(argv[:1])
    command = COMMANDS[args.command]
    prog = f"video-gemma {args.command}"
    sys.argv = [prog, *argv[1:]]  # the subcommand's own --help shows this name
    return run_main(command.load(), argv[1:], prog=prog)


if __name__ == "__main__":
    sys.exit(main())
