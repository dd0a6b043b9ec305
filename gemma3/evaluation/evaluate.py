"""Score predictions on a benchmark: prints a table, writes metrics.json and a PNG.

    python eval/evaluate.py --benchmark action_recognition --predictions preds.jsonl --classes classes.txt
    python eval/evaluate.py --benchmark mcq --predictions preds.jsonl --annotations mvbench.json
    python eval/evaluate.py --benchmark qevd --model_path outputs/finetune --annotations test.json --media_root data
    python eval/evaluate.py --benchmark kinetics400 --model_path M --annotations kinetics400:ROOT:val
    python eval/evaluate.py --benchmark mvbench --model_path M --annotations mvbench:ROOT

Given ``--model_path`` (and ``--annotations``) it first runs batched inference (resumable) itself; under
``torchrun --nproc_per_node N`` the samples are sharded over the processes and the one that merges them scores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from gemma3.data.formats import load_annotations
from gemma3.data.releases import DEFAULT_MAX_MISSING_FRACTION
from gemma3.evaluation.benchmarks import get_benchmark
from gemma3.evaluation.benchmarks.base import (
    benchmark_class,
    read_predictions,
    references_from_annotations,
    release_classes,
)
from gemma3.evaluation.benchmarks.qevd import stream_predictions
from gemma3.evaluation.metrics import MiniLMEmbedder
from gemma3.serve.feedback import form_label_key
from gemma3.serve.inference import GenerationConfig, default_device, load_predictor, predict_sharded
from gemma3.serve.stream import StreamConfig, run_stream
from gemma3.utils.argtypes import positive_int
from gemma3.utils.errors import UserError, run_main

logger = logging.getLogger("gemma3.evaluation.evaluate")
SPEAK_ON = {"action": None, "form": form_label_key}  # --speak_on: the key of `gemma3.serve.feedback.feedback_events`


class CoverageError(UserError, ValueError):
    """The predictions do not cover enough of the annotated samples to give a meaningful score."""


def load_classes(path_or_list) -> list[str] | None:
    if path_or_list is None or isinstance(path_or_list, list):
        return path_or_list
    path = Path(path_or_list)
    text = path.read_text()
    if path.suffix == ".json":
        return list(json.loads(text))
    return [line.strip() for line in text.splitlines() if line.strip()]


def evaluate(
    benchmark: str,
    predictions: str | Path | list[dict],
    annotations: str | Path | None = None,
    classes=None,
    synonyms: str | Path | None = None,
    output_dir: str | Path | None = None,
    embedder=None,
    use_embeddings: bool = False,
    plot: bool = True,
    min_coverage: float = 0.99,
    options: dict | None = None,
    protocol: dict | None = None,
    max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION,
) -> dict:
    """Score a predictions file (or list) and write ``metrics.json`` + a PNG into ``output_dir``.

    The input is checked first and the findings go into the results (``input``): unreadable lines, ids written
    twice (the last record counts), records that failed, and with ``annotations`` the coverage (share of annotated
    samples that have a prediction). Below ``min_coverage`` (or with no prediction at all) it raises
    `CoverageError` instead of scoring; ``min_coverage=0`` scores whatever is there. ``options``: the benchmark's
    own settings (e.g. ``mode`` and ``bertscore_model`` of ``qevd_fit_coach``); ``protocol``: how the predictions
    were made (frames, sampling, ranking), kept in the results as ``protocol``. ``max_missing_fraction``: with a
    release spec as ``annotations``, the share of its clips that may be missing from disk (they are not scored).
    """
    check: dict = {}
    preds = read_predictions(predictions, check) if not isinstance(predictions, list) else predictions
    refs = references_from_annotations(annotations, max_missing_fraction) if annotations else None
    check["num_predictions"] = len(preds)
    check["failed_records"] = sum(1 for p in preds if p.get("error"))
    if refs is not None:
        covered = {str(p["id"]) for p in preds} & set(refs)
        check["num_references"] = len(refs)
        check["coverage"] = len(covered) / len(refs) if refs else 0.0
        check["missing_ids"] = sorted(set(refs) - covered)[:20]
        check["unknown_ids"] = sorted({str(p["id"]) for p in preds} - set(refs))[:20]
    where = predictions if not isinstance(predictions, list) else "predictions"
    for key, what in (("unreadable_lines", "unreadable lines"), ("duplicate_ids", "ids written more than once")):
        if check.get(key):
            logger.warning("%s: %d %s (e.g. %s)", where, len(check[key]), what, check[key][:5])
    if check["failed_records"]:
        n = check["failed_records"]
        logger.warning("%s: %d records failed (scored as wrong; rerun inference to retry)", where, n)
    if not preds:
        raise CoverageError(f"{where}: no predictions to score")
    if refs is not None and check["coverage"] < min_coverage:
        raise CoverageError(
            f"{where}: predictions cover {check['coverage']:.1%} of the {len(refs)} annotated samples, below "
            f"--min_coverage {min_coverage:.0%} (missing e.g. {check['missing_ids'][:5]}); finish the inference, "
            "or pass --min_coverage 0 to score what is there"
        )
    if refs is not None:
        preds = [p for p in preds if str(p["id"]) in refs]
    kwargs = {}
    if benchmark_class(benchmark).takes_classes:
        kwargs["classes"] = load_classes(classes) if classes or not annotations else release_classes(annotations)
        kwargs["synonyms"] = json.loads(Path(synonyms).read_text()) if synonyms else None
    if embedder is None and use_embeddings:
        embedder = MiniLMEmbedder()
    kwargs["embedder"] = embedder
    bench = get_benchmark(benchmark, **kwargs, **(options or {}))
    results = bench.score(preds, refs)
    results["input"] = check
    if protocol:
        results["protocol"] = protocol
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(results, indent=1))
        if plot:
            results["plot"] = str(bench.plot(results, out / f"{benchmark}.png"))
    return results


def run_model_then_evaluate(
    benchmark: str,
    model_path: str | Path,
    annotations: str | Path,
    media_root: str | Path | None,
    output_dir: str | Path,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    num_frames: int | None = None,
    dtype: str = "float32",
    ranking: bool = True,
    **kw,
) -> dict:
    """Generate predictions with batched inference (resumable; the model's saved frame processing unless
    ``num_frames`` overrides it), then score them. On a classification benchmark named like its release
    (``kinetics400`` ...) each sample's class list is also ranked by log-likelihood unless ``ranking`` is off; the
    results keep the frames, sampling and ranking used as ``protocol``."""
    import torch

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    preds = out / "predictions.jsonl"
    predictor = load_predictor(
        model_path,
        dtype=getattr(torch, dtype),
        num_frames=num_frames,
        generation=GenerationConfig(max_new_tokens=max_new_tokens),
        device=default_device(),
    )
    rank = None
    if ranking and benchmark_class(benchmark).ranks:
        rank = load_classes(kw.get("classes")) or release_classes(annotations)
        if not rank:
            raise ValueError(f"--benchmark {benchmark}: ranking needs the class list (a release spec or --classes)")
    missing = kw.get("max_missing_fraction", DEFAULT_MAX_MISSING_FRACTION)
    samples = load_annotations(annotations, media_root=media_root, max_missing_fraction=missing)
    shard = predict_sharded(predictor, samples, preds, batch_size=batch_size, rank=rank)
    if shard["merged"] is None:  # under torchrun: the process that merges the shards scores them
        logger.info("rank %d wrote its share; the process that merges the predictions scores them", shard["rank"])
        return {"benchmark": benchmark, "rank": shard["rank"], "world_size": shard["world_size"], "scored": False}
    proc = predictor.processing
    protocol = {
        "num_frames": getattr(proc, "num_frames", None),
        "frame_sampling": getattr(proc, "frame_sampling", None),
        "fps": getattr(proc, "fps", None),
        "image_size": getattr(proc, "image_size", None),
        "ranking": f"log-likelihood of each of the {len(rank)} class names as the reply" if rank else None,
        "max_new_tokens": max_new_tokens,
    }
    return evaluate(benchmark, preds, annotations=annotations, output_dir=out, protocol=protocol, **kw)


def stream_model_then_evaluate(
    benchmark: str,
    model_path: str | Path,
    annotations: str | Path,
    output_dir: str | Path,
    stream: StreamConfig | None = None,
    dtype: str = "float32",
    feedback_time: str = "end",
    min_windows: int = 1,
    key=None,
    max_new_tokens: int = 64,
    **kw,
) -> dict:
    """Stream every long video of ``annotations`` through the model (``<output_dir>/streams/<id>.jsonl``, each
    resumable), then score the feedback it emitted (timed at ``feedback_time`` of the window that settles it after
    ``min_windows`` windows; ``key``: what counts as a change, `gemma3.serve.feedback.feedback_events`)."""
    import torch

    out = Path(output_dir)
    predictor = load_predictor(model_path, dtype=getattr(torch, dtype), device=default_device(),
                               generation=GenerationConfig(max_new_tokens=max_new_tokens))  # fmt: skip
    missing = kw.get("max_missing_fraction", DEFAULT_MAX_MISSING_FRACTION)
    samples = load_annotations(annotations, max_missing_fraction=missing)
    for sample in tqdm(samples, desc="stream", unit="video"):
        run_stream(predictor, str(sample.media[0].path), out / "streams" / f"{sample.id}.jsonl", stream)
    preds = stream_predictions(out / "streams", [str(s.id) for s in samples], feedback_time, min_windows, key)
    return evaluate(benchmark, preds, annotations=annotations, output_dir=out, **kw)


def format_table(results: dict) -> str:
    rows = [(k, v) for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for k, v in (results.get("per_task") or {}).items():
        rows.append((f"task/{k}", v))
    width = max((len(k) for k, _ in rows), default=10)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", required=True)
    ap.add_argument("--predictions", default=None)
    ap.add_argument("--annotations", default=None, help="annotation file, or a release as FORMAT:ROOT[:SPLIT]")
    ap.add_argument("--classes", default=None, help="txt (one per line) or JSON list")
    ap.add_argument("--synonyms", default=None, help="JSON map class -> [synonyms]")
    ap.add_argument("--embeddings", action="store_true", help="MiniLM similarity (matching / QEVD cosine)")
    ap.add_argument("--output_dir", default="outputs/eval")
    ap.add_argument("--model_path", default=None, help="run inference first with this model")
    ap.add_argument("--media_root", default=None)
    ap.add_argument("--batch_size", type=positive_int, default=8)
    ap.add_argument("--num_frames", type=positive_int, default=None, help="override the model's saved frames")
    ap.add_argument("--no_ranking", action="store_true",
                    help="classification: generation only (ranking scores every class name per clip)")  # fmt: skip
    coach = ap.add_argument_group("long videos (qevd_fit_coach)")
    coach.add_argument("--streams", default=None, help="folder of <video id>.jsonl stream outputs to score")
    coach.add_argument("--mode", default=None, choices=["single_exercise", "full_workout"],
                       help="score each exercise segment (the official default) or whole workouts")  # fmt: skip
    coach.add_argument("--tolerance", type=float, default=None, help="matching window in seconds (default 3.0)")
    coach.add_argument("--feedback_time", default="end", choices=["end", "middle"],
                       help="a window's feedback is timed at its end (when it could be spoken) or middle")  # fmt: skip
    coach.add_argument("--window", type=float, default=4.0, help="stream window in seconds (with --model_path)")
    coach.add_argument("--stride", type=float, default=2.0, help="stream stride in seconds (with --model_path)")
    coach.add_argument("--min_windows", type=int, default=1, help="consecutive windows that settle a change")
    coach.add_argument("--speak_on", default="action", choices=list(SPEAK_ON),
                       help="what makes a stream speak: a new action, or a new form label (the coach)")  # fmt: skip
    ap.add_argument("--bertscore_model", default=None,
                    help="BERTScore model folder or cached id (default: roberta-large L17 if on disk)")  # fmt: skip
    ap.add_argument(
        "--min_coverage",
        type=float,
        default=0.99,
        help="refuse to score when predictions cover less than this share of --annotations (0: score anything)",
    )
    ap.add_argument(
        "--max_missing_fraction",
        type=float,
        default=DEFAULT_MAX_MISSING_FRACTION,
        help="with a release spec: the share of its clips that may be missing on disk (default 0.1)",
    )
    args = ap.parse_args(argv)
    if not 0 <= args.min_coverage <= 1:
        ap.error(f"--min_coverage must be in [0, 1], got {args.min_coverage}")
    if not 0 <= args.max_missing_fraction <= 1:
        ap.error(f"--max_missing_fraction must be in [0, 1], got {args.max_missing_fraction}")
    options = {k: getattr(args, k) for k in ("mode", "tolerance", "bertscore_model") if getattr(args, k) is not None}
    common = dict(
        classes=args.classes,
        synonyms=args.synonyms,
        use_embeddings=args.embeddings,
        min_coverage=args.min_coverage,
        max_missing_fraction=args.max_missing_fraction,
        options=options,
    )
    results = _run(ap, args, common)
    if results.get("scored") is False:
        print(f"rank {results['rank']} of {results['world_size']}: predictions written; another process scores them")
        return results
    print(format_table(results))
    print(f"metrics: {Path(args.output_dir) / 'metrics.json'}")
    return results


def _run(ap: argparse.ArgumentParser, args: argparse.Namespace, common: dict) -> dict:
    if benchmark_class(args.benchmark).streams:
        if not args.annotations:
            ap.error(
                f"--benchmark {args.benchmark} needs --annotations (the release, e.g. qevd_fit_coach:ROOT:benchmark)"
            )
        if args.model_path:
            stream = StreamConfig(window=args.window, stride=args.stride)
            return stream_model_then_evaluate(args.benchmark, args.model_path, args.annotations, args.output_dir,
                                              stream, feedback_time=args.feedback_time, min_windows=args.min_windows,
                                              key=SPEAK_ON[args.speak_on], **common)  # fmt: skip
        if not args.streams:
            ap.error(f"--benchmark {args.benchmark} scores stream outputs: give --streams DIR or --model_path")
        refs = references_from_annotations(args.annotations, args.max_missing_fraction)
        preds = stream_predictions(args.streams, list(refs), args.feedback_time, args.min_windows,
                                   SPEAK_ON[args.speak_on])  # fmt: skip
        return evaluate(args.benchmark, preds, args.annotations, output_dir=args.output_dir, **common)
    if args.model_path:
        if not args.annotations:
            ap.error("--model_path needs --annotations")
        results = run_model_then_evaluate(
            args.benchmark,
            args.model_path,
            args.annotations,
            args.media_root,
            args.output_dir,
            args.batch_size,
            num_frames=args.num_frames,
            ranking=not args.no_ranking,
            **common,
        )
    elif args.predictions:
        results = evaluate(args.benchmark, args.predictions, args.annotations, output_dir=args.output_dir, **common)
    else:
        ap.error("give --predictions, or --model_path with --annotations")
    return results


if __name__ == "__main__":
    sys.exit(run_main(main))
