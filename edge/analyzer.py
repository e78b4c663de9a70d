"""One frame in, scored faces out: detect -> crop and level -> classify, timing each stage."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edge.classifier import ExpressionModel
from edge.crop import crop_face
from edge.faces import Detector, Face
from edge.stats import StageTimer


@dataclass
class ScoredFace:
    face: Face
    scores: np.ndarray  # probabilities, one per model label


class FrameAnalyzer:
    def __init__(self, detector: Detector, model: ExpressionModel, timer: StageTimer):
        self.detector = detector  # drops faces under the configured minimum size itself
        self.model = model
        self.timer = timer

    def analyze(self, image: np.ndarray) -> list[ScoredFace]:
        """Scored faces of one frame. Raises cv2.error for a frame OpenCV cannot process."""
        started = time.perf_counter()
        faces = self.detector.detect(image)
        detected = time.perf_counter()
        crops = [crop_face(image, face, self.model.card) for face in faces]
        cropped = time.perf_counter()
        scores = self.model.predict(crops)
        classified = time.perf_counter()
        self.timer.add("detect", detected - started)
        self.timer.add("crop", cropped - detected)
        self.timer.add("classify", classified - cropped)
        return [ScoredFace(face, s) for face, s in zip(faces, scores)]


def is_usable_frame(image: object) -> bool:
    """A frame worth analysing: a non-empty 8-bit grey or BGR array."""
    return (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim in (2, 3)
        and (image.ndim == 2 or image.shape[2] in (1, 3, 4))
        and image.shape[0] >= 8
        and image.shape[1] >= 8
    )
