"""Batched generation over an annotation file or a folder of videos, for the custom and the native models.

    python gemma3n_batch_inference.py --model_path outputs/finetune --annotations data/test.json \
        --media_root data --output predictions.jsonl --batch_size 8

Predictions are appended to a JSONL file one batch at a time (``id``, ``prediction``, ``reference``, timing);
a restarted run skips the ids already written, so a killed run loses at most the batch in flight. A sample whose
media cannot be read is written with an ``error`` field and an empty prediction (scored as wrong, never dropped).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch

import gemma3.model  # noqa: F401  (registers video_gemma with the Auto classes)
from constants import IGNORE_INDEX, VIDEO_EXTENSIONS, VIDEO_TAG

logger = logging.getLogger("gemma3n_batch_inference")

DEFAULT_PROMPT = "What action is being performed in this video?"
DEFAULT_NATIVE_FRAMES = 8  # frames per video for the native VLMs when --num_frames is not given


@dataclasses.dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_beams: int = 1


def split_reference(sample):
    """(prompt sample without the final assistant reply, that reply or None)."""
    reference = sample.reference
    messages = list(sample.messages[:-1] if reference is not None else sample.messages)
    return dataclasses.replace(sample, messages=messages), reference


class Predictor:
    """Generation through the model-family plugin: encode prompts, left-pad, `generate`, decode new tokens."""

    def __init__(self, model, tokenizer, plugin, template, generation: GenerationConfig | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.plugin = plugin
        self.template = template
        self.generation = generation or GenerationConfig()
        self.device = next(model.parameters()).device
        self.stop_ids = self.stop_token_ids()

    @property
    def text_tokenizer(self):
        return getattr(self.tokenizer, "tokenizer", self.tokenizer)  # processors wrap a tokenizer

    def stop_token_ids(self) -> list[int]:
        tok = self.text_tokenizer
        ids = {tok.eos_token_id}
        for s in ("<end_of_turn>", "<turn|>"):
            tid = tok.convert_tokens_to_ids(s)
            if isinstance(tid, int) and tid != tok.unk_token_id:
                ids.add(tid)
        return sorted(i for i in ids if i is not None)

    def encode(self, sample) -> dict[str, torch.Tensor]:
        return self.plugin.encode(sample, self.tokenizer, self.template, add_generation_prompt=True)

    @torch.no_grad()
    def generate(self, features: list[dict[str, torch.Tensor]]) -> tuple[list[str], list[int]]:
        """Generate for encoded prompts; returns decoded replies and new-token counts."""
        batch = self.plugin.collate(features, padding_side="left")
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        batch.pop("labels", None)
        g = self.generation
        kwargs = dict(max_new_tokens=g.max_new_tokens, do_sample=g.do_sample, num_beams=g.num_beams)
        if g.do_sample:
            kwargs.update(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
        pad = self.text_tokenizer.pad_token_id
        out = self.model.generate(**batch, **kwargs, pad_token_id=pad, eos_token_id=self.stop_ids, use_cache=True)
        new = out[:, batch["input_ids"].shape[1] :]  # [B, new]
        stops = set(self.stop_ids) | {pad}
        counts = [int(sum(1 for t in row.tolist() if t not in stops)) for row in new]
        texts = [self.text_tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
        return texts, counts

    @torch.no_grad()
    def loglikelihood(self, samples: list) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of each sample's final assistant reply (with its end-of-turn), and whether
        greedy decoding would produce exactly that reply. Samples are scored in one batch."""
        feats = [self.plugin.encode(s, self.tokenizer, self.template) for s in samples]
        batch = self.plugin.collate(feats, padding_side="right")
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        labels = batch["labels"]
        out = self.model(**batch)
        logits = out.logits
        shift = labels[:, 1:]  # [B, L-1]
        supervised = shift != IGNORE_INDEX
        if logits.dim() == 3:  # full logits [B, L, V] (native models)
            logits = logits[:, :-1][supervised]  # [S, V]
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # [S, V]; custom model returns supervised rows only
        targets = shift[supervised]
        token_lp = logprobs.gather(-1, targets[:, None]).squeeze(-1)  # [S]
        greedy = logprobs.argmax(-1) == targets
        rows = supervised.nonzero()[:, 0]  # row of each supervised position
        sums = torch.zeros(len(samples), device=token_lp.device).index_add_(0, rows, token_lp)
        all_greedy = torch.ones(len(samples), dtype=torch.long, device=token_lp.device)
        all_greedy.index_reduce_(0, rows, greedy.long(), "amin")
        return [(float(v), bool(g)) for v, g in zip(sums, all_greedy)]

    def rank_candidates(self, sample, candidates: list[str]) -> list[float]:
        """Log-likelihood of each candidate reply to the sample's prompt (for class / option ranking)."""
        prompt, _ = split_reference(sample)
        variants = [
            dataclasses.replace(prompt, messages=[*prompt.messages, {"role": "assistant", "content": c}])
            for c in candidates
        ]
        return [ll for ll, _ in self.loglikelihood(variants)]


def read_done_ids(path: Path) -> set[str]:
    """Ids already written to a predictions file (a torn last line from a kill is ignored)."""
    done: set[str] = set()
    if not path.exists():
        return done
    with path.open() as f:
        for line in f:
            try:
                done.add(str(json.loads(line)["id"]))
            except (json.JSONDecodeError, KeyError):
                continue
    return done


def _append(path: Path, records: list[dict]) -> None:
    with path.open("a") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_inference(
    predictor: Predictor, samples: list, output: str | Path, batch_size: int = 8, progress: bool = True
) -> dict:
    """Generate for every sample not yet in ``output`` and append results batch by batch.

    Returns counts and throughput: ``done``, ``skipped_existing``, ``errors``, ``new_tokens``, ``tokens_per_s``.
    """
    from tqdm import tqdm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Repair a torn last line so appends start on a fresh line.
    if output.exists() and output.stat().st_size and not output.read_bytes().endswith(b"\n"):
        with output.open("a") as f:
            f.write("\n")
    done = read_done_ids(output)
    todo = [s for s in samples if str(s.id) not in done]
    stats = {
        "total": len(samples),
        "skipped_existing": len(samples) - len(todo),
        "done": 0,
        "errors": 0,
        "new_tokens": 0,
        "seconds": 0.0,
    }
    if stats["skipped_existing"]:
        logger.info("Resuming: %d of %d samples already in %s", stats["skipped_existing"], len(samples), output)
    bar = tqdm(total=len(todo), desc="generate", unit="sample", disable=not progress)
    for chunk in _batches(todo, batch_size):
        records, feats, kept = [], [], []
        for sample in chunk:
            prompt, reference = split_reference(sample)
            try:
                feats.append(predictor.encode(prompt))
                kept.append((sample, reference))
            except Exception as err:  # unreadable media etc.: recorded, counted, never fatal
                logger.warning("sample %s: %s", sample.id, err)
                stats["errors"] += 1
                records.append({"id": sample.id, "prediction": "", "reference": reference, "error": str(err)})
        if feats:
            t0 = time.perf_counter()
            texts, counts = predictor.generate(feats)
            dt = time.perf_counter() - t0
            stats["seconds"] += dt
            stats["new_tokens"] += sum(counts)
            for (sample, reference), text, n in zip(kept, texts, counts):
                records.append(
                    {
                        "id": sample.id,
                        "prediction": text,
                        "reference": reference,
                        "new_tokens": n,
                        "batch_seconds": round(dt, 4),
                    }
                )
        _append(output, records)
        stats["done"] += len(chunk)
        bar.update(len(chunk))
        bar.set_postfix(tok_s=f"{stats['new_tokens'] / max(stats['seconds'], 1e-9):.1f}")
    bar.close()
    stats["tokens_per_s"] = stats["new_tokens"] / stats["seconds"] if stats["seconds"] else 0.0
    return stats


def samples_from_video_dir(video_dir: str | Path, prompt: str) -> list:
    """One prompt sample per video file in a folder (ids are file stems)."""
    from dataset import Sample

    root = Path(video_dir)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{root}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return [Sample.from_video(str(p.relative_to(root)), f"{VIDEO_TAG}\n{prompt}", media_root=root) for p in files]


def load_predictor(
    model_path: str,
    family: str = "auto",
    dtype: torch.dtype = torch.float32,
    num_frames: int | None = None,
    generation: GenerationConfig | None = None,
    device: str | None = None,
) -> Predictor:
    """Load a custom (base, trained, or base + adapter) or native model with its plugin."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(model_path).model_type
    if family == "auto":
        family = "custom" if model_type == "video_gemma" else "native"
    if family == "custom":
        from conversation import template_for_config
        from dataset import CustomModelPlugin
        from gemma3.model.builder import load_model

        model, tokenizer = load_model(model_path, dtype=dtype)
        config = getattr(model, "config", None)
        plugin = CustomModelPlugin(config, num_frames=num_frames or config.num_frames)
        template = template_for_config(config)
    else:
        from gemma3.model import native

        model, tokenizer = native.load_native_model(model_path, dtype=dtype)
        fam = native.native_family_for_config(model.config)
        plugin = native.NativeVLMPlugin(tokenizer, fam, num_frames=num_frames or DEFAULT_NATIVE_FRAMES)
        template = None
    if device:
        model.to(device)
    model.eval()
    return Predictor(model, tokenizer, plugin, template, generation)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="trained output folder, saved custom model, or native VLM")
    p.add_argument("--model_family", default="auto", choices=["auto", "custom", "native"])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--annotations", help="annotation file (LLaVA-style JSON/JSONL or HF messages)")
    src.add_argument("--video_dir", help="folder of videos, each asked --prompt")
    p.add_argument("--media_root", default=None, help="media root for annotation paths")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--output", required=True, help="predictions JSONL (appended; existing ids are skipped)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_frames", type=int, default=None)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--do_sample", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = GenerationConfig(
        args.max_new_tokens, args.do_sample, args.temperature, args.top_p, args.top_k, args.num_beams
    )
    predictor = load_predictor(
        args.model_path, args.model_family, getattr(torch, args.dtype), args.num_frames, gen, device
    )
    if args.annotations:
        from dataset import load_annotations

        samples = load_annotations(args.annotations, media_root=args.media_root)
    else:
        samples = samples_from_video_dir(args.video_dir, args.prompt)
    if args.limit:
        samples = samples[: args.limit]
    stats = run_inference(predictor, samples, args.output, batch_size=args.batch_size)
    logger.info("Done: %s", json.dumps(stats))
    return stats


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
