"""Score predictions on a benchmark: prints a table, writes metrics.json and a PNG.

    python eval/evaluate.py --benchmark action_recognition --predictions preds.jsonl --classes classes.txt
    python eval/evaluate.py --benchmark mcq --predictions preds.jsonl --annotations mvbench.json
    python eval/evaluate.py --benchmark qevd --model_path outputs/finetune --annotations test.json --media_root data

Given ``--model_path`` (and ``--annotations``) it first runs batched inference (resumable) itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eval.benchmarks import get_benchmark
from eval.benchmarks.base import read_predictions, references_from_annotations


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
) -> dict:
    """Score a predictions file (or list) and write ``metrics.json`` + a PNG into ``output_dir``."""
    preds = read_predictions(predictions) if not isinstance(predictions, list) else predictions
    refs = references_from_annotations(annotations) if annotations else None
    kwargs = {}
    if benchmark in ("action_recognition", "image_classification"):
        kwargs["classes"] = load_classes(classes)
        kwargs["synonyms"] = json.loads(Path(synonyms).read_text()) if synonyms else None
    if embedder is None and use_embeddings:
        from eval.metrics import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    kwargs["embedder"] = embedder
    bench = get_benchmark(benchmark, **kwargs)
    results = bench.score(preds, refs)
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
    **kw,
) -> dict:
    """Generate predictions with batched inference (resumable; the model's saved frame processing unless
    ``num_frames`` overrides it), then score them."""
    import torch

    from dataset import load_annotations
    from gemma3.inference import GenerationConfig, load_predictor, predict

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    preds = out / "predictions.jsonl"
    predictor = load_predictor(
        model_path,
        dtype=getattr(torch, dtype),
        num_frames=num_frames,
        generation=GenerationConfig(max_new_tokens=max_new_tokens),
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    predict(predictor, load_annotations(annotations, media_root=media_root), preds, batch_size=batch_size)
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
    ap.add_argument("--annotations", default=None)
    ap.add_argument("--classes", default=None, help="txt (one per line) or JSON list")
    ap.add_argument("--synonyms", default=None, help="JSON map class -> [synonyms]")
    ap.add_argument("--embeddings", action="store_true", help="MiniLM similarity (matching / QEVD cosine)")
    ap.add_argument("--output_dir", default="outputs/eval")
    ap.add_argument("--model_path", default=None, help="run inference first with this model")
    ap.add_argument("--media_root", default=None)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--num_frames", type=int, default=None, help="override the model's saved frames per video")
    args = ap.parse_args(argv)
    common = dict(classes=args.classes, synonyms=args.synonyms, use_embeddings=args.embeddings)
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
            **common,
        )
    elif args.predictions:
        results = evaluate(args.benchmark, args.predictions, args.annotations, output_dir=args.output_dir, **common)
    else:
        ap.error("give --predictions, or --model_path with --annotations")
    print(format_table(results))
    print(f"metrics: {Path(args.output_dir) / 'metrics.json'}")
    return results


if __name__ == "__main__":
    main()
