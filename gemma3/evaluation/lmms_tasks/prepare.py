"""Write the documents of the project's lmms-eval tasks from a prepared dataset (annotations + classes.txt).

    python -m gemma3.evaluation.lmms_tasks.prepare --data_dir data/synthetic_actions [--split test] [--out data/lmms]

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
from pathlib import Path

from gemma3.constants import MEDIA_TAGS
from gemma3.data.formats import load_annotations
from gemma3.evaluation.benchmarks.qevd import split_answer
from gemma3.evaluation.metrics import normalize

logger = logging.getLogger(__name__)


def _question(sample) -> str:
    text = sample.messages[0]["content"]
    text = text if isinstance(text, str) else " ".join(i.get("text", "") for i in text if i.get("type") == "text")
    for tag in MEDIA_TAGS:
        text = text.replace(tag, "")
    return text.strip()


def prepare_lmms_docs(data_dir: str | Path, out: str | Path = "data/lmms", split: str = "test") -> dict[str, Path]:
    """Write ``action.json`` and ``feedback.json`` for ``split``; returns their paths."""

    data_dir, out = Path(data_dir), Path(out)
    ann = data_dir / "annotations" / f"{split}.json"
    classes_file = data_dir / "classes.txt"
    if not ann.is_file():
        raise FileNotFoundError(f"{ann}: no {split} annotations (prepare the dataset first)")
    if not classes_file.is_file():
        raise FileNotFoundError(f"{classes_file}: no class list")
    classes = [c.strip() for c in classes_file.read_text().splitlines() if c.strip()]
    norm = [normalize(c) for c in classes]
    action, feedback = [], []
    for s in load_annotations(ann, media_root=data_dir):
        if len(s.media) != 1 or s.media[0].kind != "video" or s.reference is None:
            raise ValueError(f"{ann}: sample {s.id}: needs exactly one video and a reference reply")
        video = str(Path(str(s.media[0].path)).resolve())
        label = split_answer(s.reference)[0]
        if normalize(label) not in norm:
            raise ValueError(f"{ann}: sample {s.id}: answer {label!r} is not in {classes_file}")
        q = _question(s)
        action.append(
            {"id": s.id, "video": video, "question": q, "choices": classes, "answer": norm.index(normalize(label)),
             "answer_text": label}
        )  # fmt: skip
        feedback.append({"id": s.id, "video": video, "question": q, "answer": s.reference})
    out.mkdir(parents=True, exist_ok=True)
    paths = {"action": out / "action.json", "feedback": out / "feedback.json"}
    paths["action"].write_text(json.dumps(action, indent=1))
    paths["feedback"].write_text(json.dumps(feedback, indent=1))
    logger.info("%d documents -> %s", len(action), ", ".join(str(p) for p in paths.values()))
    return paths


def main(argv: list[str] | None = None) -> dict[str, Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", required=True, help="prepared dataset (annotations/<split>.json, classes.txt)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", default="data/lmms", help="where the task YAMLs look (relative to the run directory)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return prepare_lmms_docs(args.data_dir, args.out, args.split)


if __name__ == "__main__":
    main()
