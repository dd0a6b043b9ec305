"""QEVD releases (Qualcomm's exercise videos with form feedback): the short clips of QEVD-FIT-300K and the long
coaching sessions of QEVD-FIT-COACH, in the layouts the official FitCoach code reads.

- ``qevd_fit_300k``: ``ROOT/fine_grained_labels.json``, a list of ``{video_path: "./00000009.mp4", labels:
  ["elbow plank - stopping early"], labels_descriptive: [...], split: "train" | "test"}``; clips beside it, in
  ``ROOT/short_clips/``, or in the raw ``QEVD-FIT-300k-Part-N/`` folders. The reply is what a coach says: the
  descriptive labels (``"<exercise> - <feedback sentence>"``), else the labels (``"<exercise> - <variation>"``),
  ``; ``-joined when a clip has several; ``Sample.extra`` keeps both lists (form accuracy compares ``labels``).
- ``qevd_fit_coach``: one sample per long video of ``ROOT/QEVD-FIT-COACH/feedbacks_long_range.json`` (split
  ``train``) or ``ROOT/QEVD-FIT-COACH-Benchmark/feedbacks_long_range.json`` (split ``benchmark``): records with
  ``long_range_video_file``, ``video_timestamps`` (a per-frame ``*_timestamps.npy``, UNIX nanoseconds), ``feedbacks``
  (one string per frame), ``feedback_timestamps`` and ``is_transition`` (one per feedback span). The spans are where
  the per-frame string changes, as FitCoach's ``get_feedback_span`` builds them; each event's time is its
  timestamp minus the video's first frame time on the same clock (``npy[0] / 1e9 + 28800``, FitCoach's
  ``load_video_timestamps``), in seconds from the video start. The events travel in ``Sample.extra["events"]``
  (``t``, ``text``, ``is_transition``), the exercise segments FitCoach's default evaluation scores in
  ``Sample.extra["segments"]``; the reply lists the non-transition feedback in time order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from gemma3.data.releases.base import ReleaseError, ReleaseReader, ReleaseRecord, register_release, unique_ids
from gemma3.data.sample import Media, Sample

COACH_PROMPT = "Watch this workout and give live feedback on the exercise and the form."
CLOCK_OFFSET_S = 28800.0  # FitCoach's load_video_timestamps: the npy clock + 8 h is the feedback timestamps' clock


@register_release
class QEVDFit300K(ReleaseReader):
    """QEVD-FIT-300K short clips with their fine-grained labels."""

    names = ("qevd_fit_300k",)
    splits = ("test", "train")
    reply_sentences: ClassVar[bool] = True  # the coach's sentence as the reply (else the label)
    prompt = "What exercise is being performed, and what does the form show? Answer as '<exercise> - <feedback>'."

    def _clip(self, video_path: str) -> Path:
        rel = Path(video_path)
        candidates = [self.root / rel, self.root / "short_clips" / rel.name]
        candidates += sorted(self.root.glob(f"QEVD-FIT-300k-Part-*/**/{rel.name}"))[:1]
        return next((c for c in candidates if c.exists()), candidates[0])

    def records(self) -> list[ReleaseRecord]:
        path = self.require(self.root / "fine_grained_labels.json", "fine_grained_labels.json")
        out = []
        for i, rec in enumerate(json.loads(path.read_text())):
            where = f"{path}[{i}]"
            if not isinstance(rec, dict) or "video_path" not in rec:
                raise ReleaseError(f"{where}: record has no 'video_path'")
            if rec.get("split") != self.split:
                continue
            labels, descriptive = _strings(rec.get("labels")), _strings(rec.get("labels_descriptive"))
            clip = self._clip(rec["video_path"])
            extra = {"labels": labels, "labels_descriptive": descriptive}
            reply = "; ".join((descriptive if self.reply_sentences else []) or labels) or None
            out.append(ReleaseRecord(clip.stem, str(clip), label=reply, source=where, extra=extra))
        return unique_ids(out, str(self))

    def known_splits(self) -> list[str]:
        """The ``split`` values the labels file holds (the release's own split names); the documented ``train`` /
        ``test`` while the file is not there (`records` then says it is missing)."""
        path = self.root / "fine_grained_labels.json"
        if not path.exists():
            return list(self.splits)
        try:
            records = json.loads(path.read_text())
            return sorted({str(r["split"]) for r in records if isinstance(r, dict) and "split" in r})
        except json.JSONDecodeError as e:
            raise ReleaseError(f"{path}: not valid JSON ({e})") from e


@register_release
class QEVDFit300KLabels(QEVDFit300K):
    """The same clips answered with their labels (``"squats - knees caving in"``) instead of the coach's sentence:
    short replies whose every token depends on the video (the main job pretrains its visual path on them)."""

    names = ("qevd_fit_300k_labels",)
    reply_sentences = False
    prompt = "Which exercise is this, and what is the form? Answer as '<exercise> - <form>'."


def _strings(value) -> list[str]:
    """A label field as a list of strings (one string, a list, or nothing)."""
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def feedback_spans(feedbacks: list[str]) -> list[tuple[str, int, int]]:
    """(text, first frame, last frame) of each run of one non-empty per-frame feedback string, in order."""
    spans, current, start = [], "", 0
    for i, text in enumerate(list(feedbacks) + [""]):  # a final "" closes a span running to the last frame
        if text != current:
            if current:
                spans.append((current, start, i - 1))
            current, start = text, i
    return spans


def coach_events(record: dict, timestamps_ns: np.ndarray, where: str) -> tuple[list[dict], list[dict]]:
    """The feedback events and exercise segments of one QEVD-FIT-COACH record, in seconds from the first frame.

    As FitCoach's ``load_fit_coach_dataset`` reads a record: "armcrosschest" is renamed "deltoid stretch" in the
    per-frame strings; the spans between two transition feedbacks are one exercise (``single_exercise`` mode),
    starting at the first frame of the first transition and ending halfway through the next one; a pair of
    transitions with no feedback between them is no segment. Segments: ``exercise``, ``start``, ``end`` (seconds)
    and ``events`` (indices of its feedback events)."""
    feedbacks = [str(f).replace("armcrosschest", "deltoid stretch") for f in record.get("feedbacks") or []]
    spans = feedback_spans(feedbacks)
    times = list(record.get("feedback_timestamps") or [])
    transitions = list(record.get("is_transition") or [False] * len(times))
    if len(spans) == len(times) + 1:  # FitCoach never flushes a span still running on the last frame
        spans = spans[:-1]
    if len(spans) != len(times) or len(transitions) != len(times):
        raise ReleaseError(
            f"{where}: {len(spans)} feedback spans, {len(times)} feedback_timestamps and {len(transitions)} "
            "is_transition entries; they must be one per span"
        )
    if spans and spans[-1][2] >= len(timestamps_ns):
        raise ReleaseError(f"{where}: feedbacks run to frame {spans[-1][2]}, the timestamps file has "
                           f"{len(timestamps_ns)} frames")  # fmt: skip
    frame_s = (np.asarray(timestamps_ns, dtype=np.float64) - float(timestamps_ns[0])) / 1e9  # [frames]
    start = float(timestamps_ns[0]) / 1e9 + CLOCK_OFFSET_S
    events = [{"t": round(float(t) - start, 3), "text": text, "is_transition": bool(tr)}
              for (text, _, _), t, tr in zip(spans, times, transitions)]  # fmt: skip
    marks = [i for i, tr in enumerate(transitions) if tr]
    segments = []
    for a, b in zip(marks, marks[1:]):
        if b - a > 1:
            name = spans[a][0].replace("First up are ", "").replace("Moving on to ", "").replace("!", "")
            end_frame = spans[b][1] + (spans[b][2] - spans[b][1]) // 2
            segments.append({"exercise": name, "start": round(float(frame_s[spans[a][1]]), 3),
                             "end": round(float(frame_s[end_frame]), 3), "events": list(range(a + 1, b))})  # fmt: skip
    return events, segments


@register_release
class QEVDFitCoach(ReleaseReader):
    """QEVD-FIT-COACH long sessions (``train``) and its benchmark (``benchmark``), one sample per video."""

    names = ("qevd_fit_coach",)
    splits = ("benchmark", "train")
    prompt = COACH_PROMPT
    FOLDERS = {"train": "QEVD-FIT-COACH", "benchmark": "QEVD-FIT-COACH-Benchmark"}

    def records(self) -> list[ReleaseRecord]:
        folder = self.root / self.FOLDERS[self.split]
        path = self.require(folder / "feedbacks_long_range.json", f"{folder.name}/feedbacks_long_range.json")
        out = []
        for i, rec in enumerate(json.loads(path.read_text())):
            where = f"{path}[{i}]"
            for key in ("long_range_video_file", "video_timestamps", "feedbacks", "feedback_timestamps"):
                if key not in rec:
                    raise ReleaseError(f"{where}: record has no {key!r}")
            video = folder / rec["long_range_video_file"]
            stamps = folder / rec["video_timestamps"]
            out.append(ReleaseRecord(video.stem, str(video), source=where, files=(str(stamps),),
                                     extra={"record": rec}))  # fmt: skip
        return unique_ids(out, str(self))

    def to_sample(self, r: ReleaseRecord) -> Sample:
        events, segments = coach_events(r.extra["record"], np.load(r.files[0]), r.source)
        spoken = [e["text"] for e in events if not e["is_transition"]]
        messages = [{"role": "user", "content": f"<video>\n{self.prompt}"}]
        if spoken:
            messages.append({"role": "assistant", "content": "\n".join(spoken)})
        return Sample(r.id, messages, (Media("video", r.media),), r.source, {"events": events, "segments": segments})
