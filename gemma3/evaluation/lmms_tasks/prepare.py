"""Write the documents of the project's lmms-eval tasks from a prepared dataset (annotations + classes.txt).

    python -m gemma3.evaluation.lmms_tasks.prepare --data_dir data/synthetic_actions [--split test] [--out data/lmms]
    python -m gemma3.evaluation.lmms_tasks.prepare --annotations ucf101:/data/ucf101:test [--out data/lmms]

- ``action.json``: ``{id, video, question, choices, answer, answer_text}`` for action recognition as multiple
  choice (``video_gemma_action_mc``) and as generation (``video_gemma_action_gen``); the class list is
  ``classes.txt``.
- ``feedback.json``: ``{id, video, question, answer}`` for exercise feedback generation (``video_gemma_feedback``).

Video paths are written absolute, so the tasks run from any directory that holds ``data/lmms``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from gemma3.constants import MEDIA_TAGS
from gemma3.data.formats import load_annotations
from gemma3.data.releases import DEFAULT_MAX_MISSING_FRACTION, parse_spec
from gemma3.evaluation.benchmarks.base import release_classes
from gemma3.evaluation.benchmarks.qevd import split_answer
from gemma3.evaluation.metrics import normalize
from gemma3.utils.errors import run_main

logger = logging.getLogger(__name__)


def _question(sample) -> str:
    text = sample.messages[0]["content"]
    text = text if isinstance(text, str) else " ".join(i.get("text", "") for i in text if i.get("type") == "text")
    for tag in MEDIA_TAGS:
        text = text.replace(tag, "")
    return text.strip()


def prepare_lmms_docs(
    data_dir: str | Path | None = None,
    out: str | Path = "data/lmms",
    split: str = "test",
    annotations: str | Path | None = None,
    classes: str | Path | None = None,
    max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION,
) -> dict[str, Path]:
    """Write ``action.json`` and ``feedback.json``; returns their paths.

    The samples: ``annotations`` (an annotation file, or a dataset release as ``FORMAT:ROOT[:SPLIT]``, e.g.
    ``ucf101:/data/ucf101:test``) or a prepared ``data_dir``'s ``annotations/<split>.json``. The class list:
    ``classes`` (one per line), else the release's own, else ``data_dir/classes.txt``; without one only the
    feedback documents are written. ``max_missing_fraction``: the share of a release's clips that may be missing
    on disk (they get no document)."""
    out = Path(out)
    if annotations is None:
        if data_dir is None:
            raise ValueError("give data_dir or annotations")
        data_dir = Path(data_dir)
        ann, media_root = data_dir / "annotations" / f"{split}.json", data_dir
        if not ann.is_file():
            raise FileNotFoundError(f"{ann}: no {split} annotations (prepare the dataset first)")
        classes_file = Path(classes) if classes else data_dir / "classes.txt"
        if not classes_file.is_file():
            raise FileNotFoundError(f"{classes_file}: no class list")
    else:
        ann, media_root = annotations, None
        if parse_spec(annotations) is None and not Path(annotations).is_file():
            raise FileNotFoundError(f"{annotations}: no such annotation file or FORMAT:ROOT[:SPLIT] release")
        classes_file = Path(classes) if classes else None
    if classes_file is not None:
        class_list = [c.strip() for c in classes_file.read_text().splitlines() if c.strip()]
    else:
        class_list = release_classes(ann) or []
    norm = [normalize(c) for c in class_list]
    action, feedback = [], []
    for s in load_annotations(ann, media_root=media_root, max_missing_fraction=max_missing_fraction):
        if len(s.media) != 1 or s.reference is None:
            raise ValueError(f"{ann}: sample {s.id}: needs exactly one video or image and a reference reply")
        media = s.media[0]
        paths = [media.path] if isinstance(media.path, str) else list(media.path)
        resolved = [str(Path(str(p)).resolve()) for p in paths]
        doc = {"id": s.id, media.kind: resolved[0] if len(resolved) == 1 else resolved, "question": _question(s)}
        if class_list:
            label = split_answer(s.reference)[0]
            if normalize(label) not in norm:
                raise ValueError(f"{ann}: sample {s.id}: answer {label!r} is not in the class list")
            action.append({**doc, "choices": class_list, "answer": norm.index(normalize(label)), "answer_text": label})
        feedback.append({**doc, "answer": s.reference})
    out.mkdir(parents=True, exist_ok=True)
    paths = {"feedback": out / "feedback.json"}
    if class_list:
        paths["action"] = out / "action.json"
        paths["action"].write_text(json.dumps(action, indent=1))
    paths["feedback"].write_text(json.dumps(feedback, indent=1))
    logger.info("%d documents -> %s", len(feedback), ", ".join(str(p) for p in paths.values()))
    return paths


def main(argv: list[str] | None = None) -> dict[str, Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data_dir", help="prepared dataset (annotations/<split>.json, classes.txt)")
    src.add_argument("--annotations", help="annotation file, or a release as FORMAT:ROOT[:SPLIT]")
    ap.add_argument("--classes", default=None, help="class list, one per line (default: the release's own)")
    ap.add_argument("--split", default="test", help="with --data_dir: which annotations/<split>.json")
    ap.add_argument("--max_missing_fraction", type=float, default=DEFAULT_MAX_MISSING_FRACTION,
                    help="with a release: the share of its clips that may be missing on disk")  # fmt: skip
    ap.add_argument("--out", default="data/lmms", help="where the task YAMLs look (relative to the run directory)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return prepare_lmms_docs(args.data_dir, args.out, args.split, args.annotations, args.classes,
                             args.max_missing_fraction)  # fmt: skip


if __name__ == "__main__":
    sys.exit(run_main(main))
