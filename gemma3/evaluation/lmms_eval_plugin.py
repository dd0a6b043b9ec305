"""lmms-eval model ``video_gemma``: lmms-eval's tasks on the project's models (custom and native Gemma VLMs).

After ``pip install -e .`` lmms-eval finds the model through the ``lmms_eval.models`` entry point
(`gemma3.evaluation.lmms_manifest`), so its own command line works unchanged:

    python -m lmms_eval --model video_gemma --model_args pretrained=outputs/qevd_pipeline/finetune \
        --tasks video_gemma_action_mc --include_path gemma3/evaluation/lmms_tasks --batch_size 8 \
        --output_path outputs/lmms

``python -m gemma3.evaluation.lmms_eval_plugin`` takes the same arguments and adds one thing: lmms-eval 0.7.3 logs every
failure (model or task not found, a missing checkpoint, unreadable media) and still exits 0; this launcher exits 1
when lmms-eval logged an evaluation error, so scripts and CI see the failure.

Requests, as lmms-eval's "simple" models receive them:

- ``generate_until``: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``; the generation kwargs
  (``max_new_tokens``, ``temperature``, ``do_sample``, ``top_p``, ``top_k``, ``num_beams``, ``until``) apply to that
  request only (requests are grouped by them, never carried over to the next).
- ``generate_until_multi_round``: ``(context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)``; each
  round's context comes from the task's ``doc_to_text(doc, previous_output=..., round_idx=..., ...)``.
- ``loglikelihood``: ``(context, continuation, doc_to_visual, doc_id, task, split)`` or the two-argument
  ``(context, continuation)`` of unconditional (mutual-information) requests. The value returned is the negative
  log-likelihood of the continuation (lower is better): lmms-eval's ``multiple_choice`` picks ``argmin`` over
  choices, the convention of its own models.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from gemma3.constants import IMAGE_EXTENSIONS, IMAGE_TAG, VIDEO_TAG
from gemma3.data.formats import Media, Sample
from gemma3.serve.inference import GenerationConfig, load_predictor

logger = logging.getLogger(__name__)

try:  # lmms-eval is an optional extra (requirements-lmms-eval.txt); the class also works without it
    from lmms_eval.api.instance import GenerationResult
    from lmms_eval.api.model import lmms as _Base
except ImportError:  # pragma: no cover - exercised only where lmms-eval is missing
    _Base, GenerationResult = object, None

GEN_KEYS = ("max_new_tokens", "temperature", "do_sample", "top_p", "top_k", "num_beams")


def _batch_size(value) -> int:
    """lmms-eval passes ``--batch_size`` as an int (default 1) or a string ("4", "auto")."""
    if isinstance(value, str) and not value.isdigit():
        logger.warning("batch_size=%r: automatic batch sizes are not supported; using 1", value)
        return 1
    size = int(value)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {value!r}")
    return size


def generation_for(gen_kwargs: dict | None, default):
    """A `GenerationConfig` for one request's generation kwargs (the defaults for anything not given)."""
    import dataclasses

    g = dict(gen_kwargs or {})
    temperature = float(g.get("temperature", default.temperature) or 0.0)
    # Sampling only when the request asks for it (do_sample, or a positive temperature); greedy otherwise.
    if "do_sample" in g:
        do_sample = bool(g["do_sample"])
    else:
        do_sample = temperature > 0 if "temperature" in g else default.do_sample
    return dataclasses.replace(
        default,
        max_new_tokens=int(g.get("max_new_tokens", g.get("max_gen_toks", default.max_new_tokens))),
        do_sample=do_sample,
        temperature=temperature if do_sample else 1.0,
        top_p=float(g.get("top_p", default.top_p) or 1.0),
        top_k=int(g.get("top_k", default.top_k) or 0),
        num_beams=int(g.get("num_beams", default.num_beams) or 1),
    )


def cut_at(text: str, until: Sequence[str] | str | None) -> str:
    """The text up to the first stop string (lmms-eval's ``until``)."""
    for stop in [until] if isinstance(until, str) else list(until or []):
        if stop and stop in text:
            text = text.split(stop)[0]
    return text


class VideoGemmaLMMS(_Base):
    """lmms-eval "simple" model over `gemma3.serve.inference.Predictor` (any model family).

    Args (from ``--model_args``; ``batch_size`` / ``device`` come from lmms-eval's own flags):
        pretrained: model folder (training output, saved custom model, or native Gemma VLM).
        num_frames: override the frames per video saved with the model.
        max_new_tokens: default generation length when a task gives none.
        dtype: ``float32`` or ``bfloat16``.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int = 64,
        num_frames: int | str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        max_batch_size: int | None = None,
        predictor=None,
        **kwargs,
    ) -> None:
        if _Base is not object:
            super().__init__()
        import torch

        if kwargs:
            logger.warning("video_gemma: ignoring unknown model_args %s", sorted(kwargs))
        if predictor is None:
            if not pretrained:
                raise ValueError("video_gemma needs --model_args pretrained=MODEL_DIR")
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            predictor = load_predictor(
                pretrained, dtype=getattr(torch, dtype), num_frames=int(num_frames) if num_frames else None,
                device=device,
            )  # fmt: skip
        self.predictor = predictor
        self.default_generation = GenerationConfig(max_new_tokens=int(max_new_tokens))
        self.batch_size_per_gpu = _batch_size(batch_size)
        self.task_dict = getattr(self, "task_dict", None) or {}

    # ---------------------------------------------------------------- inputs
    def _doc(self, task: str, split: str, doc_id: int):
        return self.task_dict[task][split][doc_id]

    def _media(self, visuals: list, tmp: Path, where: str) -> list:
        """`dataset.Media` items of lmms-eval visuals: paths (video or image), PIL images (written to ``tmp``), or
        a list of frames (paths or PIL images) that form one video."""

        media = []
        for k, v in enumerate(visuals or []):
            if isinstance(v, (list, tuple)):  # frames of one video
                frames = [self._frame_path(f, tmp, f"{where}_{k}_{j}") for j, f in enumerate(v)]
                media.append(Media("video", tuple(frames)))
            elif isinstance(v, (str, Path)):
                kind = "image" if str(v).lower().endswith(IMAGE_EXTENSIONS) else "video"
                media.append(Media(kind, str(v)))
            elif hasattr(v, "save"):  # a PIL image
                media.append(Media("image", self._frame_path(v, tmp, f"{where}_{k}")))
            else:
                raise TypeError(f"{where}: unsupported visual of type {type(v).__name__}")
        return media

    @staticmethod
    def _frame_path(frame, tmp: Path, name: str) -> str:
        if isinstance(frame, (str, Path)):
            return str(frame)
        path = tmp / (name.replace("/", "_") + ".png")
        frame.convert("RGB").save(path)
        return str(path)

    def _sample(self, where: str, context: str, visuals: list, tmp: Path, reply: str | None = None):
        """A `dataset.Sample`: media tags before the context (unless it places them), then the reply."""

        media = self._media(visuals, tmp, where)
        text = context
        if media and not any(t in context for t in (VIDEO_TAG, IMAGE_TAG)):
            text = "".join(f"{VIDEO_TAG if m.kind == 'video' else IMAGE_TAG}\n" for m in media) + context
        messages = [{"role": "user", "content": text}]
        if reply is not None:
            messages.append({"role": "assistant", "content": reply})
        return Sample(where, messages, tuple(media))

    def _encode(self, where: str, context: str, visuals: list, reply: str | None = None, generation: bool = False):
        """Encode one request; temporary image files live only while their frames are read."""
        with tempfile.TemporaryDirectory(prefix="video_gemma_lmms_") as tmp:
            sample = self._sample(where, context, visuals, Path(tmp), reply)
            try:
                return self.predictor.encode(sample) if generation else self.predictor.encode_scored(sample)
            except Exception as err:
                raise RuntimeError(f"video_gemma: {where}: {err}") from err

    # ---------------------------------------------------------------- requests
    def generate_until(self, requests) -> list:
        from tqdm import tqdm

        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            gen_kwargs = {k: v for k, v in (req.args[1] or {}).items() if k != "until"}
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="video_gemma generate", disable=len(requests) < 2)
        for idxs in groups.values():
            generation = generation_for(requests[idxs[0]].args[1], self.default_generation)
            for start in range(0, len(idxs), self.batch_size_per_gpu):
                chunk = idxs[start : start + self.batch_size_per_gpu]
                feats = []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    visuals = doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual else []
                    feats.append(self._encode(f"{task}/{split}/{doc_id}", context, visuals, generation=True))
                texts, _ = self.predictor.generate(feats, generation=generation)
                for i, text in zip(chunk, texts):
                    out[i] = cut_at(text, (requests[i].args[1] or {}).get("until"))
                bar.update(len(chunk))
        bar.close()
        return out

    def generate_until_multi_round(self, requests) -> list:
        """One list of replies per request, one reply per round (lmms-eval passes lists through as rounds)."""
        out = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = req.args
            doc = self._doc(task, split, doc_id)
            visuals = doc_to_visual(doc) if doc_to_visual else []
            generation = generation_for(gen_kwargs, self.default_generation)
            replies: list[str] = []
            info = None
            for round_idx in range(64):  # a task that never signals the end is cut off
                if round_idx:
                    visuals, context, done, _, info = doc_to_text(
                        doc, previous_output=list(replies), round_idx=round_idx, previous_round_info=info
                    )
                    if done:
                        break
                feats = self._encode(f"{task}/{split}/{doc_id}/round{round_idx}", context, visuals, generation=True)
                text = self.predictor.generate([feats], generation=generation)[0][0]
                replies.append(cut_at(text, (gen_kwargs or {}).get("until")))
            out.append(replies)
        return out

    def loglikelihood(self, requests) -> list:
        """``(negative log-likelihood, is_greedy)`` per request, lower = more likely (lmms-eval's convention)."""
        scored = []
        for i, req in enumerate(requests):
            args = req.args
            if len(args) == 2:  # unconditional request (acc_mutual_info): no document, no visuals
                (context, continuation), visuals, where = args, [], f"unconditional/{i}"
            else:
                context, continuation, doc_to_visual, doc_id, task, split = args
                doc = self._doc(task, split, doc_id)
                if callable(continuation):  # output_type: loglikelihood passes doc_to_target
                    continuation = continuation(doc)
                visuals = doc_to_visual(doc) if doc_to_visual else []
                where = f"{task}/{split}/{doc_id}"
            scored.append(self._encode(where, context, visuals, reply=str(continuation).strip()))
        results = []
        for start in range(0, len(scored), self.batch_size_per_gpu):
            chunk = scored[start : start + self.batch_size_per_gpu]
            results += self.predictor.loglikelihood_encoded(chunk)
        return [self._wrap((-ll, greedy)) for ll, greedy in results]

    @staticmethod
    def _wrap(pair: tuple[float, bool]):
        """Work around lmms-eval 0.7.3's ``lmms_eval.api.instance.unwrap_generation_output``: it turns any model
        output that is not a string into ``str(output)``, so a ``(float, bool)`` pair reaches ``multiple_choice``'s
        ``process_results`` as the string "(-1.2, False)" and every multiple-choice task crashes (the built-in
        ``dummy`` model too). A `GenerationResult` is passed through unchanged, tuple and all."""
        value = (float(pair[0]), bool(pair[1]))
        return GenerationResult(text=value) if GenerationResult is not None else value


def run_cli(argv: list[str] | None = None, cli: Callable[[], None] | None = None) -> int:
    """Run lmms-eval's command line; 1 when it logged an evaluation error (it exits 0 on every failure)."""
    import sys

    try:
        from loguru import logger as loguru_logger
    except ImportError as err:
        raise SystemExit(f"lmms-eval is not installed ({err}); see docs/evaluation.md for the install lines") from err
    if cli is None:
        from lmms_eval.__main__ import cli_evaluate as cli
    errors: list[str] = []
    sink = loguru_logger.add(lambda m: errors.append(str(m).strip()), level="ERROR")
    old_argv = sys.argv
    if argv is not None:
        sys.argv = [old_argv[0], *argv]
    try:
        cli()
    finally:
        sys.argv = old_argv
        loguru_logger.remove(sink)
    if errors:
        logger.error("lmms-eval reported %d error(s); first: %s", len(errors), errors[0][:500])
        return 1
    return 0


def main() -> None:
    """``python -m gemma3.evaluation.lmms_eval_plugin`` = ``python -m lmms_eval`` with a non-zero exit on failure."""
    raise SystemExit(run_cli())


if __name__ == "__main__":
    main()
