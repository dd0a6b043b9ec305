"""Video question-answering releases: MVBench, NExT-QA, Perception Test (multiple choice) and LLaVA-Video-178K
(training conversations), read from their release layouts with each benchmark's published prompt.

- ``mvbench``: ``ROOT/json/<task>.json`` (``video``, ``question``, ``candidates``, ``answer`` = the correct
  candidate's text, ``start`` / ``end``) and the official task table of ``video_chat2/mvbench.ipynb`` (json file,
  video folder, video or frame folder, whether start / end bound the clip); clips under ``ROOT/video/<folder>`` or
  ``ROOT/<folder>``. The split is a task name (``all``: every task). The prompt is the notebook's: its system text,
  ``Question: ...\\nOptions:\\n(A) ...`` and ``Only give the best option.``; the reply ``(C) <answer>``, which
  inference opens with the notebook's ``Best option:(`` (``extra["reply_prefix"]``).
- ``nextqa``: ``ROOT/nextqa/{train,val,test}.csv`` (``video,frame_count,width,height,question,answer,qid,type,
  a0..a4``; ``answer`` indexes a0-a4) with ``map_vid_vidorID.json`` -> ``ROOT/NExTVideo/<folder>/<vidorid>.mp4``
  (or the flat ``NExTVideo/<video>.mp4`` re-packaging); the question and ``A. ...`` options as lmms-eval words them,
  the reply ``<letter>. <option>``.
- ``perceptiontest``: ``ROOT/mc_question_{train,valid,test}.json`` (a dict keyed by video id: ``metadata`` and the
  ``mc_question`` list of ``id, question, options, answer_id, area, reasoning, tag``), clips
  ``ROOT/videos/<video_id>.mp4``; lmms-eval's prompt (``A. ...`` options and "Answer with the option's letter from
  the given choices directly."), the reply the letter.
- ``llava_video``: LLaVA-Video-178K's ``*_processed.json`` conversations (LLaVA style, the video tag is
  ``<image>``) under ``ROOT/<subset>/``; the split is the subset folder (``0_30_s_academic_v0_1`` ...) or one JSON
  file's stem; clips resolve against the subset folder, then ROOT.

Every record keeps what scoring needs in ``Sample.extra`` (task, options, the answer letter, question type).
"""

from __future__ import annotations

import csv
import json
import string
from pathlib import Path

from gemma3.data.records import parse_record, read_records
from gemma3.data.releases.base import ReleaseError, ReleaseReader, ReleaseRecord, register_release, unique_ids
from gemma3.data.sample import Sample

LETTERS = string.ascii_uppercase

# video_chat2/mvbench.ipynb's data_list: task -> (json file, video folder, data type, whether start/end bound it)
MVBENCH_TASKS: dict[str, tuple[str, str, str, bool]] = {
    "action_sequence": ("action_sequence.json", "star/Charades_v1_480/", "video", True),
    "action_prediction": ("action_prediction.json", "star/Charades_v1_480/", "video", True),
    "action_antonym": ("action_antonym.json", "ssv2_video/", "video", False),
    "fine_grained_action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos/", "video", False),
    "unexpected_action": ("unexpected_action.json", "FunQA_test/test/", "video", False),
    "object_existence": ("object_existence.json", "clevrer/video_validation/", "video", False),
    "object_interaction": ("object_interaction.json", "star/Charades_v1_480/", "video", True),
    "object_shuffle": ("object_shuffle.json", "perception/videos/", "video", False),
    "moving_direction": ("moving_direction.json", "clevrer/video_validation/", "video", False),
    "action_localization": ("action_localization.json", "sta/sta_video/", "video", True),
    "scene_transition": ("scene_transition.json", "scene_qa/video/", "video", False),
    "action_count": ("action_count.json", "perception/videos/", "video", False),
    "moving_count": ("moving_count.json", "clevrer/video_validation/", "video", False),
    "moving_attribute": ("moving_attribute.json", "clevrer/video_validation/", "video", False),
    "state_change": ("state_change.json", "perception/videos/", "video", False),
    "fine_grained_pose": ("fine_grained_pose.json", "nturgbd/", "video", False),
    "character_order": ("character_order.json", "perception/videos/", "video", False),
    "egocentric_navigation": ("egocentric_navigation.json", "vlnqa/", "video", False),
    "episodic_reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq/", "frame", True),
    "counterfactual_inference": ("counterfactual_inference.json", "clevrer/video_validation/", "video", False),
}
MVBENCH_SYSTEM = (
    "Carefully watch the video and pay attention to the cause and sequence of events, the detail and movement of "
    "objects, and the action and pose of persons. Based on your observations, select the best option that "
    "accurately addresses the question."
)
MVBENCH_REPLY_PREFIX = "Best option:("  # the notebook's answer_prompt: inference opens the reply with it
PERCEPTION_SUFFIX = "Answer with the option's letter from the given choices directly."


def mvbench_question(question: str, candidates: list[str]) -> str:
    """The notebook's ``qa_template`` question with the ``Only give the best option.`` instruction."""
    options = "".join(f"({LETTERS[i]}) {c}\n" for i, c in enumerate(candidates))
    return f"Question: {question}\nOptions:\n{options}".rstrip() + "\nOnly give the best option."


@register_release
class MVBench(ReleaseReader):
    """MVBench's 20 tasks (200 questions each in the release)."""

    names = ("mvbench",)
    splits = ("all", *MVBENCH_TASKS)

    def _folder(self, prefix: str) -> Path:
        for base in (self.root / "video", self.root):
            if (base / prefix).exists():
                return base / prefix
        return self.root / "video" / prefix

    def records(self) -> list[ReleaseRecord]:
        tasks = list(MVBENCH_TASKS) if self.split == "all" else [self.split]
        out = []
        for task in tasks:
            file, prefix, kind, bound = MVBENCH_TASKS[task]
            path = self.require(self.root / "json" / file, f"json/{file}")
            folder = self._folder(prefix)
            for i, rec in enumerate(json.loads(path.read_text())):
                where = f"{path}[{i}]"
                candidates = list(rec.get("candidates") or [])
                if rec.get("answer") not in candidates:
                    raise ReleaseError(f"{where}: answer {rec.get('answer')!r} is not one of its candidates")
                letter = LETTERS[candidates.index(rec["answer"])]
                extra = {"task": task, "candidates": candidates, "answer_letter": letter, "data_type": kind,
                         "reply_prefix": MVBENCH_REPLY_PREFIX}  # fmt: skip
                if bound:
                    extra.update(start=rec.get("start"), end=rec.get("end"))
                out.append(ReleaseRecord(
                    f"{task}/{i}", str(folder / rec["video"]), label=f"({letter}) {rec['answer']}",
                    question=mvbench_question(rec["question"], candidates), system=MVBENCH_SYSTEM, source=where,
                    extra=extra,
                ))  # fmt: skip
        return unique_ids(out, str(self))


def letter_options(options: list[str], style: str = "{L}. {o}") -> str:
    return "\n".join(style.format(L=LETTERS[i], o=o.strip()) for i, o in enumerate(options))


@register_release
class NExTQA(ReleaseReader):
    """NExT-QA multiple choice (5 options)."""

    names = ("nextqa",)
    splits = ("val", "test", "train")

    def _csv(self) -> Path:
        for path in (self.root / "nextqa" / f"{self.split}.csv", self.root / f"{self.split}.csv"):
            if path.exists():
                return path
        raise ReleaseError(f"{self}: {self.split}.csv not found in {self.root / 'nextqa'} or {self.root}")

    def records(self) -> list[ReleaseRecord]:
        path = self._csv()
        mapping_file = path.parent / "map_vid_vidorID.json"
        mapping = json.loads(mapping_file.read_text()) if mapping_file.exists() else {}
        videos = self.root / "NExTVideo"
        out = []
        with path.open(newline="") as f:
            for n, row in enumerate(csv.DictReader(f), 2):
                where = f"{path}:{n}"
                options = [row.get(f"a{i}", "") for i in range(5)]
                try:
                    answer = int(row["answer"])
                except (KeyError, ValueError) as err:
                    raise ReleaseError(f"{where}: 'answer' must index a0-a4 ({err})") from err
                vid = row["video"]
                clip = videos / f"{mapping[vid]}.mp4" if vid in mapping else videos / f"{vid}.mp4"
                question = f"{row['question'].strip()}\n{letter_options(options)}"
                out.append(ReleaseRecord(
                    f"{vid}_{row['qid']}", str(clip), label=f"{LETTERS[answer]}. {options[answer].strip()}",
                    question=question, source=where,
                    extra={"options": options, "answer_letter": LETTERS[answer], "type": row.get("type")},
                ))  # fmt: skip
        return unique_ids(out, str(self))


@register_release
class PerceptionTest(ReleaseReader):
    """Perception Test multiple-choice video QA (3 options)."""

    names = ("perceptiontest",)
    splits = ("valid", "train", "test")

    def records(self) -> list[ReleaseRecord]:
        name = f"mc_question_{self.split}.json"
        path = next((p for p in (self.root / name, self.root / "annotations" / name) if p.exists()), None)
        if path is None:
            raise ReleaseError(f"{self}: {name} not found in {self.root} or {self.root / 'annotations'}")
        out = []
        for video_id, entry in json.loads(path.read_text()).items():
            vid = (entry.get("metadata") or {}).get("video_id", video_id)
            for q in entry.get("mc_question") or []:
                options = list(q["options"])
                answer = q.get("answer_id")
                letter = None if answer is None else LETTERS[int(answer)]
                question = f"{q['question']}\n{letter_options(options)}\n{PERCEPTION_SUFFIX}"
                out.append(ReleaseRecord(
                    f"{vid}/{q['id']}", str(self.root / "videos" / f"{vid}.mp4"), label=letter, question=question,
                    source=f"{path}[{video_id}]",
                    extra={"options": options, "answer_letter": letter, "area": q.get("area"),
                           "reasoning": q.get("reasoning")},
                ))  # fmt: skip
        return unique_ids(out, str(self))


@register_release
class LLaVAVideo(ReleaseReader):
    """LLaVA-Video-178K conversations (training data): ``<image>`` is the video tag."""

    names = ("llava_video",)
    splits = ("all",)

    def valid_split(self, split: str) -> bool:
        return True  # ``all``, a subset folder or a JSON file's stem (checked when the files are listed)

    def _files(self) -> list[Path]:
        if self.split == "all":
            files = sorted(self.root.glob("*/*_processed.json"))
        elif (self.root / self.split).is_dir():
            files = sorted((self.root / self.split).glob("*_processed.json"))
        else:
            files = sorted(self.root.glob(f"**/{self.split}.json"))
        if not files:
            raise ReleaseError(f"{self}: no *_processed.json files for {self.split!r} under {self.root}")
        return files

    def records(self) -> list[ReleaseRecord]:
        out = []
        for path in self._files():
            for i, rec in enumerate(read_records(path)):
                where = f"{path}:{i}"
                video = rec.get("video")
                if not video:
                    raise ReleaseError(f"{where}: record has no 'video'")
                clip = path.parent / video if (path.parent / video).exists() else self.root / video
                out.append(ReleaseRecord(str(rec.get("id", f"{path.stem}/{i}")), str(clip), source=where,
                                         extra={"record": rec}))  # fmt: skip
        return unique_ids(out, str(self))

    def to_sample(self, r: ReleaseRecord) -> Sample:
        rec = dict(r.extra["record"])
        convs = [dict(t) for t in rec.get("conversations") or []]
        for turn in convs:  # LLaVA-Video's video tag is <image>
            if isinstance(turn.get("value"), str):
                turn["value"] = turn["value"].replace("<image>", "<video>")
        rec.update(conversations=convs, video=r.media)
        rec.pop("image", None)
        return parse_record(rec, r.source)
