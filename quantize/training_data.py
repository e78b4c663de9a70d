"""The first link of the chain: a data set's splits as the student will learn from them, with their label
source (the data set's own labels, or annotator votes: quantize.label_sources) and, when asked, aligned the way
the daemon aligns a camera's faces (quantize.face_align)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.faces import find_yunet
from edge.locations import model_dirs
from quantize.datasets import FaceSet, load_dataset
from quantize.errors import QuantizeError
from quantize.face_align import align_faces, detect_landmarks, landmark_template
from quantize.label_sources import own_labels_record, with_vote_targets

if TYPE_CHECKING:
    from quantize.teachers import Teacher


def default_cache_dir() -> Path:
    """Where landmarks and teachers' answers are cached between runs."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-mood" / "teachers"


@dataclass
class FaceOptions:
    votes: Path | None = None  # a FER+ vote file for a FER2013-layout CSV
    votes_weight: float = 1.0  # share of the votes in each face's target, the rest its own label
    align: bool = False  # align faces to their median landmarks, and have the daemon do the same
    yunet: Path | None = None  # YuNet ONNX for the landmarks (default: the daemon's own)


@dataclass
class TrainingData:
    train: FaceSet
    eval: FaceSet | None
    # The same faces as the data set holds them (the student's above may be aligned), from which each teacher
    # gets its own view (teacher_views).
    original_train: FaceSet
    original_eval: FaceSet | None
    labels: dict[str, Any]  # the card's record of the label source
    align_template: list[list[float]] | None  # landmark template as fractions of the face side, when aligned
    alignment: dict[str, Any] | None  # the card's record of the alignment

    def faces_record(self) -> dict[str, Any]:
        """What the student file and the card keep of the label source and the alignment."""
        return {"labels_source": self.labels, "align_template": self.align_template, "alignment": self.alignment}


def load_training_data(
    data: Path,
    eval_split: str | None,
    opts: FaceOptions,
    cache_dir: Path | None,
    log: Callable[[str], None],
    *,
    skip_corrupt: bool = False,
    eval_hint: str | None = None,
) -> TrainingData:
    """The training split (and `eval_split`, if given) with targets and alignment as `opts` asks; `eval_hint`
    is what a missing `eval_split` is told, in the command's own words."""
    train = load_dataset(data, "train", skip_corrupt=skip_corrupt)
    try:
        eval_faces = load_dataset(data, eval_split, skip_corrupt=skip_corrupt) if eval_split else None
    except QuantizeError as exc:  # e.g. Training/Validation where FER2013 has PublicTest
        hint = eval_hint or f"--eval-split {eval_split}: the faces accuracy is measured on"
        raise QuantizeError(f"{exc} ({hint})") from None
    if eval_faces is not None and _same_faces(train, eval_faces):
        raise QuantizeError(
            f"{data}: the {eval_split!r} split is the training faces, so accuracy measured on it would say nothing; "
            "give a CSV with a Usage column (Training / PublicTest) or a folder with train/ and test/"
        )
    labels = own_labels_record(train)
    if opts.votes is not None:
        train, labels = with_vote_targets(train, opts.votes, opts.votes_weight)
        log(
            f"labels: votes from {opts.votes.name} for {labels['faces_with_votes']} of {len(train)} training faces, "
            f"weight {opts.votes_weight:g}"
        )
    if not opts.align:
        return TrainingData(train, eval_faces, train, eval_faces, labels, None, None)
    originals = (train, eval_faces)
    yunet = _yunet(opts.yunet)
    train_points = detect_landmarks(train, yunet, cache_dir, log)
    template = landmark_template(train_points, train.images.shape[1])
    train = align_faces(train, train_points, template)
    if eval_faces is not None:
        eval_faces = align_faces(eval_faces, detect_landmarks(eval_faces, yunet, cache_dir, log), template)
    alignment = {"detector": yunet.name, "template": template, "found": _found_share(train_points)}
    return TrainingData(train, eval_faces, *originals, labels, template, alignment)


def framed_for_card(
    faces: FaceSet, card: dict[str, Any], yunet: Path | None, cache_dir: Path | None, log: Callable[[str], None]
) -> FaceSet:
    """`faces` framed the way the model of `card` learnt its faces: aligned to the card's template when it has
    one (as the build aligned its evaluation faces), else as they are."""
    return _framed(faces, (card.get("crop") or {}).get("align_template"), yunet, cache_dir, log)


def teacher_views(
    faces: FaceSet,
    teachers: list[Teacher],
    yunet: Path | None,
    cache_dir: Path | None,
    log: Callable[[str], None],
) -> list[FaceSet]:
    """Each teacher's view of `faces` (the data set's own framing): aligned to the teacher's template when it
    learnt aligned faces (a model built by `quantize`), else as they are. A teacher answers best on the
    framing it was trained on, whatever the student's. Teachers sharing a template share one aligned copy."""
    framed: dict[str, FaceSet] = {}
    views = []
    for teacher in teachers:
        key = repr(teacher.align_template)
        if key not in framed:
            framed[key] = _framed(faces, teacher.align_template, yunet, cache_dir, log)
        views.append(framed[key])
    return views


def training_teacher_views(
    data: TrainingData,
    teachers: list[Teacher],
    online: bool,
    yunet: Path | None,
    cache_dir: Path | None,
    log: Callable[[str], None],
) -> list[FaceSet]:
    """Each teacher's view of the training faces (teacher_views), checked first, before any teacher runs, for
    online teachers (check_online_framing)."""
    if online:
        check_online_framing(teachers, data.align_template)
    return teacher_views(data.original_train, teachers, yunet, cache_dir, log)


def check_online_framing(teachers: list[Teacher], student_template: list[list[float]] | None) -> None:
    """Online teachers see the student's augmented faces: refuse a teacher that learnt another framing."""
    for teacher in teachers:
        if teacher.align_template is not None and teacher.align_template != student_template:
            raise QuantizeError(
                f"teacher {teacher.name} learnt faces aligned to its own template, and --online-teacher shows "
                "teachers the student's faces, which are framed otherwise; leave out --online-teacher (its "
                "cached answers are on faces aligned for it), or --align with the same training data"
            )


def _framed(
    faces: FaceSet,
    template: list[list[float]] | None,
    yunet: Path | None,
    cache_dir: Path | None,
    log: Callable[[str], None],
) -> FaceSet:
    if not template:
        return faces
    return align_faces(faces, detect_landmarks(faces, _yunet(yunet), cache_dir, log), template)


def _found_share(points: Any) -> float:
    return round(float((points[:, 0, 0] == points[:, 0, 0]).mean()), 4)  # NaN != NaN where none was found


def _yunet(path: Path | None) -> Path:
    if path is not None:
        if not path.is_file():
            raise QuantizeError(f"YuNet model {path} not found; give the path of face_detection_yunet_*.onnx")
        return path
    found = find_yunet(model_dirs())
    if found is None:
        raise QuantizeError(
            "aligning faces needs the YuNet face detector for landmarks and none was found in the daemon's model "
            "folders; "
            "give its path with --yunet (face_detection_yunet_2023mar.onnx from the OpenCV Zoo)"
        )
    return found


def _same_faces(train: FaceSet, other: FaceSet) -> bool:
    """Whether `other` is the training split itself (a file without Usage, or a folder without split
    subfolders, holds one split only)."""
    return len(train) == len(other) and np.array_equal(train.images, other.images)
