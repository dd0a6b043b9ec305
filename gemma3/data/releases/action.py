"""Action-recognition releases: Kinetics-400/600/700, Something-Something v2, UCF101, HMDB51 (and Oxford-IIIT Pet,
the seeds' image-classification benchmark). Each reads the files its official loader reads:

- Kinetics (CVDF download, cvdfoundation/kinetics-dataset): ``ROOT/annotations/{split}.csv`` with
  ``label,youtube_id,time_start,time_end,split[,is_cc]`` (labels quoted when they hold spaces; test CSVs may have
  no label), clips ``ROOT/{split}/{youtube_id}_{start:06d}_{end:06d}.mp4``; or torchvision's per-class folders
  ``ROOT/{split}/{label}/*.mp4`` (torchvision writes labels with ``_`` for spaces, without ``'()``).
- Something-Something v2: ``labels.json`` ({template: index}), ``train.json`` / ``validation.json`` ({id, label,
  template, placeholders}) at ROOT or under ``ROOT/labels/`` (or the older ``something-something-v2-*.json``
  names), clips ``ROOT/20bn-something-something-v2/{id}.webm``; the class is the template with its brackets
  removed, as pytorchvideo, SlowFast and mmaction2 derive it.
- UCF101: ``ROOT/ucfTrainTestlist/{classInd,trainlistNN,testlistNN}.txt`` (CRLF lines; test lists carry no
  label), clips ``ROOT/UCF-101/{Class}/v_{Class}_gXX_cYY.avi``, the class from the list path's folder (so the
  release's ``HandstandPushups/v_HandStandPushups_*`` file names resolve as listed).
- HMDB51: ``{class}_test_split{N}.txt`` lists (``video.avi TAG``, 1 train, 2 test, 0 unused) in
  ``ROOT/testTrainMulti_7030_splits/`` (or ROOT), clips ``ROOT/{hmdb51_org/}{class}/{video}.avi``.
- Oxford-IIIT Pet: ``ROOT/annotations/{trainval,test}.txt`` (``Image CLASS-ID SPECIES BREED-ID``), images
  ``ROOT/images/{Image}.jpg``, the breed from the file name as torchvision names it ("American Pit Bull Terrier").

Split names are the releases' own: ``train`` / ``val`` / ``test`` (Kinetics), ``train`` / ``validation`` (SSv2),
``train`` / ``test`` for fold 1 and ``train2`` ... ``test3`` for the others (UCF101, HMDB51), ``trainval`` / ``test``
(Oxford-IIIT Pet). The reply is the class in words: Kinetics' and SSv2's as released, UCF101's CamelCase and
HMDB51's snake_case split into lower-case words, the pet breeds as torchvision titles them.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from gemma3.data.releases.base import ReleaseError, ReleaseReader, ReleaseRecord, register_release, unique_ids


def _camel_words(name: str) -> str:
    """``ApplyEyeMakeup`` -> ``apply eye makeup`` (UCF101's class names as words; ``YoYo`` -> ``yo yo``)."""
    return " ".join(w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name))


def _fold_split(split: str) -> tuple[str, int]:
    """``train`` / ``test`` -> fold 1; ``train2`` / ``test3`` -> that fold."""
    kind, fold = split.rstrip("123"), int(split[len(split.rstrip("123")) :] or 1)
    return kind, fold


@register_release
class Kinetics(ReleaseReader):
    """Kinetics-400 / 600 / 700: the CVDF download layout, or torchvision's per-class folders."""

    names = ("kinetics400", "kinetics600", "kinetics700")
    splits = ("val", "train", "test")

    def _csv_rows(self) -> list[dict] | None:
        path = self.root / "annotations" / f"{self.split}.csv"
        if not path.exists():
            return None
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        for key in ("youtube_id", "time_start", "time_end"):
            if rows and key not in rows[0]:
                raise ReleaseError(f"{self}: {path} has no {key!r} column (header: {list(rows[0])})")
        return [{**r, "_source": f"{path}:{i + 2}"} for i, r in enumerate(rows)]

    def records(self) -> list[ReleaseRecord]:
        folder = self.root / self.split
        rows = self._csv_rows()
        if rows is None:
            return self._class_folder_records(self.require(folder, "the split's clip folder"))
        out = []
        for r in rows:
            name = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}.mp4"
            label = (r.get("label") or "").strip() or None
            clip = folder / name
            if not clip.exists() and label:  # per-class folders under the split, raw or as torchvision names them
                for sub in (label, _torchvision_folder(label)):
                    if (folder / sub / name).exists():
                        clip = folder / sub / name
                        break
            out.append(ReleaseRecord(name[:-4], str(clip), label=label, source=r["_source"]))
        return unique_ids(out, str(self))

    def _class_folder_records(self, folder: Path) -> list[ReleaseRecord]:
        out = []
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            label = class_dir.name.replace("_", " ")
            for clip in sorted(class_dir.glob("*.mp4")):
                out.append(ReleaseRecord(clip.stem, str(clip), label=label, source=str(clip)))
        if not out:
            raise ReleaseError(f"{self}: no annotations/{self.split}.csv and no {folder}/<class>/*.mp4 clips")
        return out

    def classes(self) -> list[str]:
        return sorted({r.label for r in self.records() if r.label})


def _torchvision_folder(label: str) -> str:
    """The folder torchvision's Kinetics moves a clip into: spaces -> ``_``, ``'`` ``(`` ``)`` removed."""
    return label.replace(" ", "_").replace("'", "").replace("(", "").replace(")", "")


@register_release
class SomethingSomethingV2(ReleaseReader):
    """Something-Something v2 (174 template classes)."""

    names = ("ssv2",)
    splits = ("validation", "train", "test")
    prompt = "What is being done with the objects in this video? Answer with the action template."

    def _label_file(self, stem: str) -> Path:
        for path in (self.root / f"{stem}.json", self.root / "labels" / f"{stem}.json",
                     self.root / f"something-something-v2-{stem}.json"):  # fmt: skip
            if path.exists():
                return path
        raise ReleaseError(f"{self}: {stem}.json not found in {self.root} or {self.root / 'labels'}")

    def templates(self) -> dict[str, int]:
        return {k: int(v) for k, v in json.loads(self._label_file("labels").read_text()).items()}

    def classes(self) -> list[str]:
        return [t for t, _ in sorted(self.templates().items(), key=lambda kv: kv[1])]

    def records(self) -> list[ReleaseRecord]:
        path = self._label_file(self.split)
        templates = self.templates()
        videos = self.root / "20bn-something-something-v2"
        out = []
        for i, rec in enumerate(json.loads(path.read_text())):
            label = None
            if "template" in rec:  # the test split lists ids only
                label = rec["template"].replace("[", "").replace("]", "")
                if label not in templates:
                    raise ReleaseError(f"{path}[{i}] (id {rec['id']}): template {label!r} is not in labels.json")
            vid = str(rec["id"])
            out.append(ReleaseRecord(vid, str(videos / f"{vid}.webm"), label=label, source=f"{path}[{i}]"))
        return unique_ids(out, str(self))


@register_release
class UCF101(ReleaseReader):
    """UCF101, folds 1-3."""

    names = ("ucf101",)
    splits = ("test", "train", "test2", "train2", "test3", "train3")

    def _lists(self) -> Path:
        return self.require(self.root / "ucfTrainTestlist", "the ucfTrainTestlist folder")

    def classes(self) -> list[str]:
        path = self.require(self._lists() / "classInd.txt", "classInd.txt")
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        return [_camel_words(name) for _, name in sorted(rows, key=lambda r: int(r[0]))]

    def records(self) -> list[ReleaseRecord]:
        kind, fold = _fold_split(self.split)
        path = self.require(self._lists() / f"{kind}list{fold:02d}.txt", f"the fold-{fold} {kind} list")
        videos = self.root / "UCF-101"
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            rel = line.split()[0]
            folder, _, file = rel.partition("/")
            if not file:
                raise ReleaseError(f"{path}:{n}: expected Class/v_Class_gXX_cYY.avi, got {rel!r}")
            out.append(ReleaseRecord(Path(file).stem, str(videos / folder / file), label=_camel_words(folder),
                                     source=f"{path}:{n}"))  # fmt: skip
        return unique_ids(out, str(self))


@register_release
class HMDB51(ReleaseReader):
    """HMDB51, splits 1-3 (tag 1 train, 2 test)."""

    names = ("hmdb51",)
    splits = ("test", "train", "test2", "train2", "test3", "train3")

    def _split_files(self, fold: int) -> list[Path]:
        for folder in (self.root / "testTrainMulti_7030_splits", self.root / "splits", self.root):
            files = sorted(folder.glob(f"*_test_split{fold}.txt"))
            if files:
                return files
        raise ReleaseError(f"{self}: no *_test_split{fold}.txt files under {self.root}")

    def _video_root(self) -> Path:
        return self.root / "hmdb51_org" if (self.root / "hmdb51_org").is_dir() else self.root

    def classes(self) -> list[str]:
        _, fold = _fold_split(self.split)
        return sorted({f.name[: -len(f"_test_split{fold}.txt")].replace("_", " ") for f in self._split_files(fold)})

    def records(self) -> list[ReleaseRecord]:
        kind, fold = _fold_split(self.split)
        tag = {"train": 1, "test": 2}[kind]
        videos = self._video_root()
        out = []
        for path in self._split_files(fold):
            cls = path.name[: -len(f"_test_split{fold}.txt")]
            for n, line in enumerate(path.read_text().splitlines(), 1):
                parts = line.split()
                if len(parts) != 2 or not parts[1].isdigit():
                    if line.strip():
                        raise ReleaseError(f"{path}:{n}: expected 'video.avi TAG', got {line.strip()!r}")
                    continue
                if int(parts[1]) == tag:
                    out.append(ReleaseRecord(Path(parts[0]).stem, str(videos / cls / parts[0]),
                                             label=cls.replace("_", " "), source=f"{path}:{n}"))  # fmt: skip
        return unique_ids(out, str(self))


@register_release
class OxfordPets(ReleaseReader):
    """Oxford-IIIT Pet (37 breeds), images."""

    names = ("oxford_pets",)
    splits = ("test", "trainval")
    prompt = "Which pet breed is this?"

    def _rows(self) -> list[tuple[str, int, str]]:
        path = self.require(self.root / "annotations" / f"{self.split}.txt", f"annotations/{self.split}.txt")
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                raise ReleaseError(f"{path}:{n}: expected 'Image CLASS-ID SPECIES BREED-ID', got {line.strip()!r}")
            out.append((parts[0], int(parts[1]), f"{path}:{n}"))
        return out

    @staticmethod
    def breed(image_id: str) -> str:
        """``american_pit_bull_terrier_10`` -> ``American Pit Bull Terrier`` (torchvision's class names)."""
        return " ".join(part.title() for part in image_id.rsplit("_", 1)[0].split("_"))

    def classes(self) -> list[str]:
        by_id = {cid: self.breed(image) for image, cid, _ in self._rows()}
        return [by_id[c] for c in sorted(by_id)]

    def records(self) -> list[ReleaseRecord]:
        images = self.root / "images"
        return unique_ids((ReleaseRecord(image, str(images / f"{image}.jpg"), kind="image", label=self.breed(image),
                                         source=where) for image, _, where in self._rows()), str(self))  # fmt: skip
