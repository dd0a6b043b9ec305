"""lmms-eval model plugin, so lmms-eval's own video tasks run on our models.

    python eval/lmms_eval_plugin.py --model video_gemma \
        --model_args pretrained=outputs/qevd_pipeline/finetune,batch_size=8 --tasks mvbench

(the same command line as ``python -m lmms_eval``, with this model registered first).

Implements the "simple" model API: ``generate_until`` (requests ``(context, gen_kwargs, doc_to_visual, doc_id,
task, split)``) and ``loglikelihood`` (requests ``(context, doc_to_target, doc_to_visual, doc_id, task, split)``,
returning ``(log-prob, is_greedy)``) for MCQ ranking. lmms-eval is optional: without it the class still works
(its methods are plain Python), which is how the tests call it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from constants import IMAGE_TAG, VIDEO_TAG

try:  # pragma: no cover - lmms-eval is not a dependency of the project
    from lmms_eval.api.model import lmms as _Base
    from lmms_eval.api.registry import register_model
except ImportError:  # noqa: SIM105
    _Base = object

    def register_model(*_names):
        return lambda cls: cls


@register_model("video_gemma")
class VideoGemmaLMMS(_Base):
    """lmms-eval wrapper around `gemma3.inference.Predictor` (custom or native models)."""

    def __init__(
        self,
        pretrained: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int = 64,
        num_frames: int | str | None = None,
        predictor=None,
        task_dict: dict | None = None,
        **kwargs,
    ) -> None:
        if _Base is not object:
            super().__init__()
        import gemma3.inference as inf

        self.predictor = predictor or inf.load_predictor(
            pretrained,
            num_frames=int(num_frames) if num_frames else None,
            generation=inf.GenerationConfig(max_new_tokens=int(max_new_tokens)),
        )
        self.batch_size_per_gpu = int(batch_size)
        self.task_dict = task_dict or getattr(self, "task_dict", {})
        self._tmp = Path(tempfile.mkdtemp(prefix="lmms_visuals_"))

    def _sample(self, sid: str, context: str, visuals: list, reply: str | None = None):
        """A dataset.Sample from lmms-eval visuals (video paths or PIL images) and the context text."""
        from dataset import Media, Sample

        media, tags = [], []
        for k, v in enumerate(visuals or []):
            if isinstance(v, (str, Path)):
                kind = "image" if str(v).lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".webp")) else "video"
                media.append(Media(kind, str(v)))
            else:  # a PIL image: written to a temporary file for the readers
                path = self._tmp / f"{sid}_{k}.png"
                v.convert("RGB").save(path)
                media.append(Media("image", str(path)))
            tags.append(VIDEO_TAG if media[-1].kind == "video" else IMAGE_TAG)
        text = context
        if tags and not any(t in context for t in (VIDEO_TAG, IMAGE_TAG)):
            text = "\n".join(tags) + "\n" + context
        messages = [{"role": "user", "content": text}]
        if reply is not None:
            messages.append({"role": "assistant", "content": reply})
        return Sample(sid, messages, tuple(media))

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        if doc_to_visual is None:
            return []
        doc = self.task_dict[task][split][doc_id] if self.task_dict else doc_id
        return doc_to_visual(doc)

    def generate_until(self, requests) -> list[str]:
        out = []
        for start in range(0, len(requests), self.batch_size_per_gpu):
            chunk = requests[start : start + self.batch_size_per_gpu]
            feats, stops = [], []
            for i, req in enumerate(chunk):
                context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
                visuals = self._visuals(doc_to_visual, doc_id, task, split)
                feats.append(self.predictor.encode(self._sample(f"{task}_{doc_id}_{i}", context, visuals)))
                until = (gen_kwargs or {}).get("until") or []
                stops.append([until] if isinstance(until, str) else list(until))
                if gen_kwargs and "max_new_tokens" in gen_kwargs:
                    self.predictor.generation.max_new_tokens = int(gen_kwargs["max_new_tokens"])
            texts, _ = self.predictor.generate(feats)
            for text, until in zip(texts, stops):
                for s in until:
                    if s and s in text:
                        text = text.split(s)[0]
                out.append(text)
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        samples = []
        for i, req in enumerate(requests):
            context, doc_to_target, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id] if self.task_dict else None
            target = doc_to_target(doc) if callable(doc_to_target) else doc_to_target
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            samples.append(self._sample(f"{task}_{doc_id}_{i}", context, visuals, reply=str(target)))
        results = []
        for start in range(0, len(samples), max(1, self.batch_size_per_gpu)):
            results += self.predictor.loglikelihood(samples[start : start + self.batch_size_per_gpu])
        return results

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("multi-round generation is not supported by the video_gemma plugin")


def main() -> None:
    """Run lmms-eval's command line with ``video_gemma`` registered (this module is imported first; lmms-eval does
    not import model files given by ``--include_path``, which only adds task YAMLs)."""
    try:
        from lmms_eval.__main__ import cli_evaluate
    except ImportError as err:
        raise SystemExit(f"lmms-eval is not installed ({err}); pip install lmms-eval to run its tasks") from err
    cli_evaluate()


if __name__ == "__main__":
    main()
