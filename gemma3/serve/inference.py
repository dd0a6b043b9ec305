"""Batched generation over an annotation file or a folder of videos, for every model family.

The library behind ``python gemma3n_batch_inference.py`` (a thin entry point that calls `main`):

    python gemma3n_batch_inference.py --model_path outputs/finetune --annotations data/test.json \
        --media_root data --output predictions.jsonl --batch_size 8

`load_predictor` loads any model folder through its family record (`gemma3.model.families`) with the frame processing
saved beside it (`gemma3.data.processing`); `predict` runs a predictor over samples into a resumable JSONL file.

Predictions are appended to a JSONL file one batch at a time (``id``, ``prediction``, ``reference``, timing);
a restarted run skips the ids already written, so a killed run loses at most the batch in flight. A sample whose
media cannot be read is written with an ``error`` field and an empty prediction (scored as wrong, never dropped).

Under ``torchrun --nproc_per_node N`` each process (one GPU each, ``LOCAL_RANK``, or a CPU process) takes every Nth
sample into its own resumable shard, and the last to finish merges them into ``--output``, each id once
(`predict_sharded`, `gemma3.serve.prediction_files`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import torch

import gemma3.model  # noqa: F401  (registers video_gemma with the Auto classes)
from gemma3.constants import DEFAULT_PROMPT, IGNORE_INDEX, VIDEO_EXTENSIONS, VIDEO_TAG
from gemma3.data.formats import Media, Sample, is_release_spec, load_annotations
from gemma3.data.plugins import append_prompt_text
from gemma3.data.processing import resolve_processing
from gemma3.data.releases import DEFAULT_MAX_MISSING_FRACTION
from gemma3.model.families import family_for_checkpoint
from gemma3.model.fast_head import HEADS
from gemma3.model.fast_linears import WEIGHTS
from gemma3.model.feature_cache import FeatureCache
from gemma3.serve.decoding import (
    DECODERS,
    Decoder,
    GenerateDecoder,
    GenerationConfig,
    choose_decoder,
    prepare_for_decoding,
)
from gemma3.serve.prediction_files import (
    append_records,
    distributed_world,
    done_ids,
    drop_failed,
    drop_torn_tail,
    finished_ids,
    merge_predictions,
    output_lock,
    prediction_sources,
    read_records_by_line,
    shard_file,
    shard_folder,
)
from gemma3.utils.argtypes import positive_float, positive_int
from gemma3.utils.errors import run_main

T = TypeVar("T")
logger = logging.getLogger(__name__)


def split_reference(sample):
    """(prompt sample without the final assistant reply, that reply or None)."""
    reference = sample.reference
    messages = list(sample.messages[:-1] if reference is not None else sample.messages)
    return dataclasses.replace(sample, messages=messages), reference


class Predictor:
    """Generation through the model family's plugin: encode prompts, left-pad, decode new tokens with the
    ``decoder`` (`gemma3.serve.decoding`; `load_predictor` picks it), turn them into text.

    Args:
        model / tokenizer: the loaded model and its tokenizer (or processor).
        plugin: the family's data plugin, made with the model's processing.
        template: the chat template (the family's; the native plugins use their processor's own).
        stop_ids: token ids that end a reply (EOS and the template's end-of-turn).
        processing: the `ProcessingConfig` the plugin was made with (recorded in outputs).
        decoder: how prompts become new tokens (a `gemma3.serve.decoding.Decoder`); None: transformers'
            ``generate``. Scoring (`loglikelihood`) always runs the model's own forward and head.
    """

    def __init__(
        self,
        model,
        tokenizer,
        plugin,
        template,
        generation: GenerationConfig | None = None,
        stop_ids: list[int] | None = None,
        processing=None,
        decoder: Decoder | None = None,
    ) -> None:
        self.model = model
        self.decoder = decoder or GenerateDecoder()
        self.tokenizer = tokenizer
        self.plugin = plugin
        self.template = template
        self.generation = generation or GenerationConfig()
        self.device = next(model.parameters()).device
        tok = self.text_tokenizer
        self.stop_ids = list(stop_ids) if stop_ids else [tok.eos_token_id]
        self.processing = processing

    @property
    def text_tokenizer(self):
        return getattr(self.tokenizer, "tokenizer", self.tokenizer)  # processors wrap a tokenizer

    def encode(self, sample) -> dict[str, torch.Tensor]:
        """A generation prompt's tensors; a ``reply_prefix`` in ``sample.extra`` opens the reply (see `Sample`)."""
        feats = self.plugin.encode(sample, self.tokenizer, self.template, add_generation_prompt=True)
        prefix = (getattr(sample, "extra", None) or {}).get("reply_prefix")
        if prefix:
            feats = append_prompt_text(feats, self.text_tokenizer(prefix, add_special_tokens=False)["input_ids"])
        return feats

    @torch.no_grad()
    def generate(
        self, features: list[dict[str, torch.Tensor]], generation: GenerationConfig | None = None, streamer=None
    ) -> tuple[list[str], list[int]]:
        """Generate for encoded prompts (with ``generation`` for this call only, else the predictor's settings);
        returns decoded replies and new-token counts. ``streamer``: passed to ``generate`` (it sees the prompt ids,
        then each step's new tokens)."""
        batch = self.plugin.collate(features, padding_side="left")
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        batch.pop("labels", None)
        g = generation or self.generation
        pad = self.text_tokenizer.pad_token_id
        out = self.decoder.decode(self.model, batch, g, self.stop_ids, pad, streamer)  # [B, L + new]
        new = out[:, batch["input_ids"].shape[1] :]  # [B, new]
        stops = set(self.stop_ids) | {pad}
        counts = [int(sum(1 for t in row.tolist() if t not in stops)) for row in new]
        texts = [self.text_tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
        return texts, counts

    def encode_scored(self, sample) -> dict[str, torch.Tensor]:
        """Encode a full conversation for scoring (its final assistant reply supervised)."""
        return self.plugin.encode(sample, self.tokenizer, self.template)

    def loglikelihood(self, samples: list) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of each sample's final assistant reply (with its end-of-turn), and whether
        greedy decoding would produce exactly that reply. Samples are scored in one batch."""
        return self.loglikelihood_encoded([self.encode_scored(s) for s in samples])

    @torch.no_grad()
    def loglikelihood_encoded(self, feats: list[dict[str, torch.Tensor]]) -> list[tuple[float, bool]]:
        """`loglikelihood` of already encoded conversations (`encode_scored`)."""
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
        sums = torch.zeros(len(feats), device=token_lp.device).index_add_(0, rows, token_lp)
        all_greedy = torch.ones(len(feats), dtype=torch.long, device=token_lp.device)
        all_greedy.index_reduce_(0, rows, greedy.long(), "amin")
        return [(float(v), bool(g)) for v, g in zip(sums, all_greedy)]

    def rank_candidates(self, sample, candidates: list[str], batch_size: int = 16) -> list[float]:
        """Log-likelihood of each candidate reply to the sample's prompt (class / option ranking): the media are
        read once, the candidates scored ``batch_size`` at a time."""
        prompt, _ = split_reference(sample)
        media = [self.plugin.load_media(m) for m in prompt.media]
        scores: list[float] = []
        with self._encoders_once():
            for start in range(0, len(candidates), batch_size):
                feats = [
                    self.plugin.encode(
                        dataclasses.replace(prompt, messages=[*prompt.messages, {"role": "assistant", "content": c}]),
                        self.tokenizer, self.template, media=media,
                    )
                    for c in candidates[start : start + batch_size]
                ]  # fmt: skip
                scores += [ll for ll, _ in self.loglikelihood_encoded(feats)]
        return scores

    @contextlib.contextmanager
    def _encoders_once(self):
        """While ranking one sample's candidates: a custom model's encoders run once for its media (an in-memory
        `FeatureCache`, used only while the encoders are frozen, as they are in a loaded predictor)."""
        if not hasattr(self.model, "feature_cache") or self.model.feature_cache is not None:
            yield
            return
        self.model.feature_cache = FeatureCache(max_bytes=1 << 30)
        try:
            yield
        finally:
            self.model.feature_cache = None


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict(
    predictor: Predictor,
    samples: list,
    output: str | Path,
    batch_size: int = 8,
    progress: bool = True,
    rank: list[str] | None = None,
) -> dict:
    """Generate for every sample not yet in ``output`` and append results batch by batch.

    ``rank``: a class list; each record then also gets ``ranking``, the five classes of highest log-likelihood as
    the reply (`Predictor.rank_candidates`), best first, for top-1 / top-5 by ranking.
    Returns counts and throughput: ``done``, ``skipped_existing``, ``errors``, ``new_tokens``, ``tokens_per_s``.
    """

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    counts = Counter(str(s.id) for s in samples)
    dup = sorted(i for i, n in counts.items() if n > 1)
    if dup:
        raise ValueError(f"{len(dup)} sample ids appear more than once (e.g. {dup[:3]}); ids must be unique")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(output):
        return _predict_locked(predictor, samples, output, batch_size, progress, rank)


def predict_sharded(
    predictor: Predictor,
    samples: list,
    output: str | Path,
    batch_size: int = 8,
    progress: bool = True,
    rank: list[str] | None = None,
    world: tuple[int, int] | None = None,
) -> dict:
    """`predict` as one of several processes (``world``: (rank, world size), default torchrun's environment; see
    `gemma3.serve.prediction_files`): this process's share into its shard, then the merged ``output`` when every
    id is written. A single process with no shards folder writes ``output`` directly, as `predict` does.

    Returns `predict`'s counts for this process's share with ``rank``, ``world_size``, ``shard_total`` and
    ``merged`` (the merge's counts, or None when other processes still have samples to write)."""
    me, size = world or distributed_world()
    output = Path(output)
    if size == 1 and not shard_folder(output).exists():
        stats = predict(predictor, samples, output, batch_size, progress, rank)
        return {**stats, "rank": 0, "world_size": 1, "shard_total": len(samples), "merged": {"output": str(output)}}
    ids = [str(s.id) for s in samples]
    dup = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dup:
        raise ValueError(f"{len(dup)} sample ids appear more than once (e.g. {dup[:3]}); ids must be unique")
    mine = samples[me::size]
    shard = shard_file(output, me, size)
    elsewhere = finished_ids(p for p in prediction_sources(output) if p != shard)
    todo = [s for s in mine if str(s.id) not in elsewhere]
    logger.info("rank %d of %d: %d of the %d samples (%d written by other shards or runs) -> %s",
                me, size, len(mine), len(samples), len(mine) - len(todo), shard)  # fmt: skip
    stats = predict(predictor, todo, shard, batch_size, progress, rank)
    merged = merge_predictions(ids, output)
    if merged:
        logger.info("rank %d merged %d records into %s", me, merged["records"], output)
    return {**stats, "rank": me, "world_size": size, "shard_total": len(mine), "merged": merged}


def default_device() -> str:
    """cuda (this process's GPU, ``LOCAL_RANK``, under torchrun) when available, else cpu."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def _predict_locked(
    predictor: Predictor, samples: list, output: Path, batch_size: int, progress: bool, rank: list[str] | None
) -> dict:
    from tqdm import tqdm

    drop_torn_tail(output)  # a kill in the middle of a write: appends start on a fresh line
    lines = read_records_by_line(output)
    done = done_ids(lines)
    todo = [s for s in samples if str(s.id) not in done]
    retried = drop_failed(output, lines, {str(s.id) for s in todo})
    if retried:
        logger.info("Retrying %d samples whose earlier attempt failed", retried)
    stats = {
        "total": len(samples),
        "skipped_existing": len(samples) - len(todo),
        "done": 0,
        "errors": 0,
        "new_tokens": 0,
        "seconds": 0.0,
        "retried": retried,
    }
    if stats["skipped_existing"]:
        logger.info("Resuming: %d of %d samples already in %s", stats["skipped_existing"], len(samples), output)
    bar = tqdm(total=len(todo), desc="generate", unit="sample", disable=not progress)
    for chunk in _batches(todo, batch_size):
        records, feats, kept = [], [], []
        for sample in chunk:
            prompt, reference = split_reference(sample)
            feat, err = retried_once(lambda prompt=prompt: predictor.encode(prompt), sample.id)
            if err is None:
                feats.append(feat)
                kept.append((sample, reference))
            else:  # unreadable media etc.: recorded with its error, counted, tried again on the next run
                stats["errors"] += 1
                records.append(_failed(sample, reference, err))
        if feats:
            t0 = time.perf_counter()
            try:
                results = [(sample, reference, *out) for (sample, reference), *out in
                           zip(kept, *predictor.generate(feats))]  # fmt: skip
            except Exception as err:  # a batch that fails: each of its samples tried alone (its retry)
                logger.warning("a batch of %d failed (%s); generating its samples one by one", len(feats), err)
                results = []
                for (sample, reference), feat in zip(kept, feats):
                    try:
                        (text,), (n,) = predictor.generate([feat])
                        results.append((sample, reference, text, n))
                    except Exception as alone:
                        logger.warning("sample %s failed again alone: %s", sample.id, alone)
                        stats["errors"] += 1
                        records.append(_failed(sample, reference, alone))
            dt = time.perf_counter() - t0
            stats["seconds"] += dt
            for sample, reference, text, n in results:
                stats["new_tokens"] += n
                record = {
                    "id": sample.id,
                    "prediction": text,
                    "reference": reference,
                    "new_tokens": n,
                    "batch_seconds": round(dt, 4),
                    **_where(sample),
                }
                if rank:
                    scores = predictor.rank_candidates(sample, rank)
                    record["ranking"] = [rank[i] for i in sorted(range(len(rank)), key=lambda i: -scores[i])[:5]]
                records.append(record)
        append_records(output, records)
        stats["done"] += len(chunk)
        bar.update(len(chunk))
        bar.set_postfix(tok_s=f"{stats['new_tokens'] / max(stats['seconds'], 1e-9):.1f}")
    bar.close()
    stats["tokens_per_s"] = stats["new_tokens"] / stats["seconds"] if stats["seconds"] else 0.0
    return stats


def retried_once(attempt: Callable[[], T], sample_id) -> tuple[T | None, Exception | None]:
    """``attempt()``, and once more if it raises (a clip still being copied, a network file system's hiccup):
    (result, None), or (None, the second error)."""
    for tries in (1, 2):
        try:
            return attempt(), None
        except Exception as err:  # any failure of one sample must not stop the others
            if tries == 2:
                logger.warning("sample %s failed twice, recorded with its error: %s", sample_id, err)
                return None, err
            logger.info("sample %s failed (%s); retrying once", sample_id, err)
    raise AssertionError("unreachable")


def _failed(sample, reference, err: Exception) -> dict:
    """The record of a sample that could not be answered: its error, so a rerun retries it."""
    return {"id": sample.id, "prediction": "", "reference": reference, "error": f"{type(err).__name__}: {err}",
            **_where(sample)}  # fmt: skip


def _where(sample) -> dict:
    """The media a record was made from (``media``: paths), so records can be traced back to files."""
    paths = [m.path if isinstance(m.path, str) else list(m.path) for m in getattr(sample, "media", ())]
    return {"media": paths} if paths else {}


def samples_from_video_dir(video_dir: str | Path, prompt: str) -> list:
    """One prompt sample per video file in a folder and its subfolders; the id is the path relative to the folder
    (``sub/clip.mp4``), so clips with one name in different subfolders stay apart."""

    root = Path(video_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--video_dir {root}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{root}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    msg = [{"role": "user", "content": f"{VIDEO_TAG}\n{prompt}"}]
    return [Sample(p.relative_to(root).as_posix(), msg, (Media("video", str(p)),)) for p in files]


def load_predictor(
    model_path: str | Path,
    kind: str = "auto",
    dtype: torch.dtype = torch.float32,
    num_frames: int | None = None,
    generation: GenerationConfig | None = None,
    device: str | None = None,
    frame_sampling: str | None = None,
    fps: float | None = None,
    head: str = "auto",
    decoder: str = "auto",
    weights: str = "auto",
) -> Predictor:
    """Load any model folder (custom base / trained / adapter output, or a native VLM) through its family record,
    with the frame processing saved beside it; ``num_frames`` / ``frame_sampling`` / ``fps`` override it.
    ``head``: the output head while generating: ``exact``, ``int8``, ``int4`` or ``auto``
    (`gemma3.serve.decoding.generation_head`). ``decoder``: ``auto``, ``generate``, ``generate_static`` or
    ``static`` and ``weights``: the fast path's projections, ``fp32``, ``fp16`` or ``auto``
    (`gemma3.serve.decoding.choose_decoder`)."""

    family = family_for_checkpoint(model_path, kind)
    model, tokenizer = family.load(model_path, dtype=dtype)
    model = prepare_for_decoding(model, device, decoder, weights)  # on CPU: an adapter merged for the fp16 copies
    config = getattr(model, "config", None)
    processing = resolve_processing(
        model_path, family, model, tokenizer, num_frames=num_frames, frame_sampling=frame_sampling, fps=fps
    )
    plugin = family.plugin(model, tokenizer, processing)
    if device:
        model.to(device)
    model.eval().requires_grad_(False)  # inference only (and a frozen encoder may reuse its features)
    stop_ids = family.stop_token_ids(config, tokenizer)
    return Predictor(
        model, tokenizer, plugin, family.template(config), generation, stop_ids, processing,
        decoder=choose_decoder(model, decoder, head, weights),
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="trained output folder, saved custom model, or native VLM")
    p.add_argument("--model_family", default="auto", choices=["auto", "custom", "native"])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--annotations",
        help="annotation file (LLaVA-style JSON/JSONL or HF messages), or a dataset "
        "release as FORMAT:ROOT[:SPLIT] (e.g. kinetics400:/data/k400:val)",
    )
    src.add_argument("--video_dir", help="folder of videos, each asked --prompt")
    p.add_argument("--media_root", default=None, help="media root for annotation paths")
    p.add_argument("--max_missing_fraction", type=float, default=DEFAULT_MAX_MISSING_FRACTION,
                   help="refuse a FORMAT:ROOT[:SPLIT] release missing more of its clips than this")  # fmt: skip
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--output", required=True, help="predictions JSONL (appended; existing ids are skipped)")
    p.add_argument("--batch_size", type=positive_int, default=8)
    p.add_argument("--num_frames", type=positive_int, default=None, help="override the model's saved frame count")
    p.add_argument("--frame_sampling", default=None, choices=["uniform", "fps"], help="override the saved sampling")
    p.add_argument("--fps", type=positive_float, default=None, help="frames per second for --frame_sampling fps")
    p.add_argument("--max_new_tokens", type=positive_int, default=64)
    p.add_argument("--do_sample", action="store_true")
    p.add_argument("--temperature", type=positive_float, default=1.0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--num_beams", type=positive_int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--head", default="auto", choices=["auto", *HEADS],
                   help="output head while generating: int4 (or int8) rows with the best 32 logits recomputed "
                   "exactly (CPU; auto picks int4 there where its kernel builds), or exact")  # fmt: skip
    p.add_argument("--decoder", default="auto", choices=list(DECODERS),
                   help="decoding: static (preallocated cache, one kernel call per layer, fp16 projections, int4 head; "
                   "greedy Gemma 3 on CPU, auto picks it there), generate (transformers' generate) or "
                   "generate_static (generate with its static cache)")  # fmt: skip
    p.add_argument("--weights", default="auto", choices=["auto", *WEIGHTS],
                   help="decoder weights of the static decoder's steps: fp16 copies (fbgemm, fp32 activations; CPU, "
                   "auto picks it there) or the model's fp32")  # fmt: skip
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N samples")
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("annotations", "media_root"):
        value = getattr(args, flag)
        if value and not Path(value).exists() and not is_release_spec(value):
            parser.error(f"--{flag} {value}: no such file or folder")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = args.device or default_device()
    gen = GenerationConfig(
        args.max_new_tokens, args.do_sample, args.temperature, args.top_p, args.top_k, args.num_beams
    )
    predictor = load_predictor(
        args.model_path,
        args.model_family,
        getattr(torch, args.dtype),
        args.num_frames,
        gen,
        device,
        frame_sampling=args.frame_sampling,
        fps=args.fps,
        head=args.head,
        decoder=args.decoder,
        weights=args.weights,
    )
    if args.annotations:
        samples = load_annotations(args.annotations, args.media_root, max_missing_fraction=args.max_missing_fraction)
    else:
        samples = samples_from_video_dir(args.video_dir, args.prompt)
    if args.limit:
        samples = samples[: args.limit]
    stats = predict_sharded(predictor, samples, args.output, batch_size=args.batch_size)
    if stats["merged"] is None:
        logger.info("rank %d done (%s); another process merges %s", stats["rank"], json.dumps(stats), args.output)
    else:
        logger.info("Done: %s", json.dumps(stats))
    return stats


if __name__ == "__main__":
    sys.exit(run_main(main))
