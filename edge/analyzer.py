"""One frame in, scored faces out: find the faces, crop and level them, classify them, timing each stage.

By default every frame gets a full-frame detection and every face a fresh classification. A `Cadence`
spends less per frame on a steady scene: while faces are in view the full-frame detector runs every
`detect_every` frames and each face is followed in between by re-detecting it in a small region around
its last box (follow.py); each face is classified every `classify_every` frames and keeps its last scores
in between. A face that cannot be followed brings the full detection forward to the same frame, and a new
face is classified at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edge.classifier import ExpressionModel
from edge.crop import crop_face
from edge.faces import Detector, Face, adaptive_detect_width
from edge.follow import SAME_FACE_IOU, RegionFollower, overlapping
from edge.stats import StageTimer
from edge.tracker import iou


@dataclass
class ScoredFace:
    face: Face
    scores: np.ndarray  # probabilities, one per model label


@dataclass(frozen=True)
class Cadence:
    detect_every: int = 1  # full-frame detection every N frames while faces are in view (1: every frame)
    classify_every: int = 1  # classify a face every K frames, reusing its last scores in between
    adaptive_width: bool = False  # full detections while faces are in view at a width fitted to the smallest


EVERY_FRAME = Cadence()  # a full detection and a fresh classification of every face on every frame


@dataclass
class _Followed:
    face: Face
    scores: np.ndarray
    age: int  # frames since these scores were computed


class FrameAnalyzer:
    def __init__(
        self,
        detector: Detector,
        model: ExpressionModel,
        timer: StageTimer,
        cadence: Cadence = EVERY_FRAME,
        follower: RegionFollower | None = None,
    ):
        if cadence.detect_every > 1 and follower is None:
            raise ValueError("detecting every few frames needs a RegionFollower to follow faces in between")
        self.detector = detector  # drops faces under the configured minimum size itself
        self.model = model
        self.timer = timer
        self.cadence = cadence
        self.follower = follower
        self._followed: list[_Followed] = []
        self._since_detection = 0  # frames analysed since the last full-frame detection

    @property
    def following(self) -> bool:
        """Whether the last analysed frame had faces in it."""
        return bool(self._followed)

    def analyze(self, image: np.ndarray) -> list[ScoredFace]:
        """Scored faces of one frame. Raises cv2.error for a frame OpenCV cannot process."""
        pairs = self._find(image)
        cropped_at = time.perf_counter()
        due = [
            i for i, (_, before) in enumerate(pairs) if before is None or before.age + 1 >= self.cadence.classify_every
        ]
        crops = [crop_face(image, pairs[i][0], self.model.card) for i in due]
        classified_at = time.perf_counter()
        fresh = dict(zip(due, self.model.predict(crops)))
        done = time.perf_counter()
        self.timer.add("crop", classified_at - cropped_at)
        self.timer.add("classify", done - classified_at)
        self._followed = []
        for i, (face, before) in enumerate(pairs):
            if i in fresh:
                self._followed.append(_Followed(face, fresh[i], 0))
            else:
                assert before is not None  # faces without scores are always due
                self._followed.append(_Followed(face, before.scores, before.age + 1))
        return [ScoredFace(f.face, f.scores) for f in self._followed]

    def _find(self, image: np.ndarray) -> list[tuple[Face, _Followed | None]]:
        """This frame's faces, each with the followed face it continues (None for a new one)."""
        if self._followed and self._since_detection + 1 < self.cadence.detect_every:
            assert self.follower is not None
            started = time.perf_counter()
            refound = [self.follower.refind(image, f.face) for f in self._followed]
            self.timer.add("follow", time.perf_counter() - started)
            faces = [face for face in refound if face is not None]
            if len(faces) == len(refound) and not overlapping(faces):
                self._since_detection += 1
                return list(zip(faces, self._followed))
        started = time.perf_counter()
        faces = self.detector.detect(image, self._detect_width(image.shape[1]))
        self.timer.add("detect", time.perf_counter() - started)
        self._since_detection = 0
        return self._match(faces)

    def _detect_width(self, frame_width: int) -> int | None:
        if not (self.cadence.adaptive_width and self._followed):
            return None
        smallest = min(max(f.face.box[2], f.face.box[3]) for f in self._followed)
        return adaptive_detect_width(smallest, frame_width, self.detector.detect_width)

    def _match(self, faces: list[Face]) -> list[tuple[Face, _Followed | None]]:
        """Pair freshly detected faces with the followed ones they overlap most (greedy, one to one)."""
        pairs = sorted(
            ((iou(face.box, f.face.box), i, j) for i, face in enumerate(faces) for j, f in enumerate(self._followed)),
            reverse=True,
        )
        continued: dict[int, _Followed] = {}
        taken: set[int] = set()
        for overlap, i, j in pairs:
            if overlap < SAME_FACE_IOU:
                break
            if i not in continued and j not in taken:
                continued[i] = self._followed[j]
                taken.add(j)
        return [(face, continued.get(i)) for i, face in enumerate(faces)]


MIN_FRAME_SIDE = 8  # pixels; smaller is no camera picture


def unusable_frame(image: object) -> str | None:
    """Why a frame is not worth analysing (not an 8-bit grey or BGR array, or a few pixels only); None if it is."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        return "not an 8-bit image"
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        return f"not a grey or colour image (shape {image.shape})"
    if min(image.shape[:2]) < MIN_FRAME_SIDE:
        return f"{image.shape[1]}x{image.shape[0]} pixels only"
    return None
