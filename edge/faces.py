"""Face detection: YuNet (cv2.FaceDetectorYN) when its ONNX file is available, Haar cascade otherwise.

Both detect on a copy scaled down to `detect_width` (never up) and report boxes and landmarks in
full-frame pixels, clipped to the frame. A caller that knows how big the faces in view are may pass a
narrower width for one call (`adaptive_detect_width`); a narrower copy is cheaper to search.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import cv2.data  # named, or the type checker does not see it (cv2's stubs leave it out)
import numpy as np

from edge.boxes import Box, clipped
from edge.config import read_denied
from edge.errors import ConfigError, ModelError
from edge.locations import YUNET_GLOB

logger = logging.getLogger(__name__)

HAAR_FILE = "haarcascade_frontalface_default.xml"
YUNET_NMS_THRESHOLD = 0.3
PROBE_SIDE = 32  # pixels of the image YuNet is tried on at load
YUNET_TOP_K = 500
HAAR_SCALE_FACTOR = 1.1
HAAR_MIN_NEIGHBORS = 5
HAAR_WINDOW_PX = 24  # the cascade's trained window; smaller faces are invisible to it
# YuNet scores a face under about 40 px wide (at detection scale) below its usual 0.7 threshold; an adapted
# width keeps the smallest face in view at least this wide, with room for it to turn or step back.
ADAPTIVE_FACE_PX = 56
WIDTH_STEP_PX = 32  # adapted widths are multiples of this, so the detector's input size changes rarely


@dataclass
class Face:
    box: Box  # x, y, w, h in full-frame pixels
    score: float
    # YuNet's five points (right eye, left eye, nose tip, right and left mouth corner) as (5, 2) x, y; Haar: None
    landmarks: np.ndarray | None = None


class Detector(Protocol):
    name: str
    detect_width: int

    def detect(self, image: np.ndarray, width: int | None = None) -> list[Face]:
        """Faces in a BGR (HxWx3) or grey (HxW) uint8 frame, searched at `width` (default `detect_width`)."""

    def at_width(self, detect_width: int) -> Detector:
        """The same kind of detector, working at another width and keeping faces of any size."""


def adaptive_detect_width(smallest_face_px: float, frame_width: int, detect_width: int) -> int:
    """The narrowest width (a multiple of WIDTH_STEP_PX, at most `detect_width`) at which a face of
    `smallest_face_px` full-frame pixels is still ADAPTIVE_FACE_PX wide."""
    needed = frame_width * ADAPTIVE_FACE_PX / max(smallest_face_px, 1.0)
    stepped = WIDTH_STEP_PX * math.ceil(needed / WIDTH_STEP_PX)
    return max(WIDTH_STEP_PX, min(detect_width, stepped))


def _downscale(image: np.ndarray, detect_width: int) -> tuple[np.ndarray, float]:
    """A copy at most `detect_width` wide (aspect kept) and the factor applied; small frames stay as they are."""
    width = image.shape[1]
    if width <= detect_width:
        return image, 1.0
    scale = detect_width / width
    height = max(1, round(image.shape[0] * scale))
    return cv2.resize(image, (detect_width, height), interpolation=cv2.INTER_AREA), scale


class YuNetFileError(ModelError):
    """A YuNet file that is missing or that OpenCV cannot run as YuNet. `cause` says what is wrong without a
    fix, which depends on who chose the file: the installer fetched it, or a user named it (in the config, on
    the quantize command line)."""

    def __init__(self, cause: str, fix: str) -> None:
        self.cause = cause
        super().__init__(f"{cause}; {fix}")


class YuNetDetector:
    name = "yunet"

    def __init__(
        self, model_path: Path, detect_width: int = 320, score_threshold: float = 0.7, min_face_px: int = 24
    ) -> None:
        try:
            # OpenCV loads any ONNX model and fails only when it runs one that is not YuNet: run it once now, on
            # a tiny image (at detect_width a large square would cost seconds and gigabytes).
            self._net = cv2.FaceDetectorYN.create(
                str(model_path), "", (PROBE_SIDE, PROBE_SIDE), score_threshold, YUNET_NMS_THRESHOLD, YUNET_TOP_K
            )
            self._net.detect(np.zeros((PROBE_SIDE, PROBE_SIDE, 3), np.uint8))
            self._net.setInputSize((detect_width, detect_width))
        except cv2.error:
            raise YuNetFileError(
                f"YuNet model {model_path} is not a YuNet face detector ONNX (corrupt or truncated download, or "
                f"another model)",
                "delete it and re-run the installer, which fetches it again",
            ) from None
        self._input_size = (detect_width, detect_width)
        self.model_path = model_path
        self.detect_width = detect_width
        self.score_threshold = score_threshold
        self.min_face_px = min_face_px

    def at_width(self, detect_width: int) -> YuNetDetector:
        return YuNetDetector(self.model_path, detect_width, self.score_threshold, min_face_px=1)

    def detect(self, image: np.ndarray, width: int | None = None) -> list[Face]:
        small, scale = _downscale(image, width or self.detect_width)
        if small.ndim == 2:  # YuNet takes 3 channels; converting the small copy is cheap
            small = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
        size = (small.shape[1], small.shape[0])
        if size != self._input_size:
            self._net.setInputSize(size)
            self._input_size = size
        _, rows = self._net.detect(small)
        if rows is None:
            return []
        frame_h, frame_w = image.shape[:2]
        faces = []
        for row in rows:
            x, y, w, h = (float(v) / scale for v in row[:4])
            if max(w, h) < self.min_face_px:
                continue
            faces.append(
                Face(
                    box=clipped((x, y, w, h), frame_w, frame_h),
                    score=float(row[14]),
                    landmarks=(row[4:14] / np.float32(scale)).reshape(5, 2),
                )
            )
        return faces


class HaarDetector:
    """OpenCV's frontal-face cascade. It gives no confidence, so every face scores 1.0."""

    name = "haar"

    def __init__(self, detect_width: int = 320, min_face_px: int = 24) -> None:
        self._cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / HAAR_FILE))
        if self._cascade.empty():
            raise ModelError(
                f"Haar cascade {HAAR_FILE} is missing from this OpenCV install; "
                f"reinstall opencv-python-headless (version 4.x) or use the YuNet detector"
            )
        self.detect_width = detect_width
        self.min_face_px = min_face_px

    def at_width(self, detect_width: int) -> HaarDetector:
        return HaarDetector(detect_width, min_face_px=1)

    def detect(self, image: np.ndarray, width: int | None = None) -> list[Face]:
        small, scale = _downscale(image, width or self.detect_width)
        grey = small if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        grey = cv2.equalizeHist(grey)  # the cascade is sensitive to contrast; this is its usual companion
        min_side = max(HAAR_WINDOW_PX, round(self.min_face_px * scale))
        rects = self._cascade.detectMultiScale(
            grey, HAAR_SCALE_FACTOR, HAAR_MIN_NEIGHBORS, minSize=(min_side, min_side)
        )
        frame_h, frame_w = image.shape[:2]
        faces = []
        for rect in rects:
            x, y, w, h = (float(v) / scale for v in rect)
            faces.append(Face(box=clipped((x, y, w, h), frame_w, frame_h), score=1.0))
        return faces


def find_yunet(search_dirs: list[Path]) -> Path | None:
    """The newest-named YuNet ONNX file in the first folder that has one."""
    for folder in search_dirs:
        found = sorted(Path(folder).expanduser().glob(YUNET_GLOB))
        if found:
            return found[-1]
    return None


def make_detector(
    kind: str = "auto",
    yunet_path: Path | None = None,
    search_dirs: list[Path] | None = None,
    detect_width: int = 320,
    score_threshold: float = 0.7,
    min_face_px: int = 24,
) -> Detector:
    """YuNet if kind is "yunet", or "auto" and a model is given or found in search_dirs; Haar otherwise."""
    if kind not in ("auto", "yunet", "haar"):
        raise ConfigError(f"detector kind {kind!r} is unknown; use auto, yunet or haar")
    if detect_width < 32:
        raise ConfigError(f"detector detect_width {detect_width} is too small; use 320 (or more for small faces)")
    search_dirs = list(search_dirs or [])
    path: Path | None = None
    if kind != "haar":
        if yunet_path is not None:
            path = Path(yunet_path).expanduser()
            if not path.is_file():
                raise YuNetFileError(
                    f"YuNet model {path} not found",
                    "fix the path or re-run the installer, which fetches face_detection_yunet_2023mar.onnx",
                )
        else:
            path = find_yunet(search_dirs)
            if path is None and kind == "yunet":
                where = ", ".join(str(d) for d in search_dirs) or "no folders given"
                raise ModelError(
                    f"no YuNet model ({YUNET_GLOB}) found in {where}; give its path or re-run "
                    f"the installer, which fetches face_detection_yunet_2023mar.onnx"
                )
    if path is not None and (why := read_denied(path)):
        raise ModelError(f"YuNet model {path} {why}")
    if path is not None:
        detector: Detector = YuNetDetector(path, detect_width, score_threshold, min_face_px)
        logger.info("face detector: YuNet %s at %d px width", path, detect_width)
    else:
        detector = HaarDetector(detect_width, min_face_px)
        logger.info(
            "face detector: Haar cascade at %d px width (no YuNet model found%s)",
            detect_width,
            f" in {', '.join(map(str, search_dirs))}" if search_dirs else "",
        )
    return detector
