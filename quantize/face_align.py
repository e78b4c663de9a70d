"""Training faces aligned the way the daemon aligns a camera's faces: YuNet's five landmarks mapped onto one
template by the similarity transform of edge.crop, with the same warp.

The template is the training faces' own median landmark positions, made left-right symmetric (faces are also
learnt mirrored), so aligning moves each face only as far as it strays from the data set's usual framing, and
a live crop aligned to it is framed like the faces the model learnt from. A face YuNet does not find stays as
it is: it is already framed like the others on average.

YuNet runs on each 48x48 face enlarged three times with its border replicated around it (it finds few faces at
48 pixels); the landmarks are cached on disk per detector file and faces.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from edge.contract import LANDMARKS, ModelError, file_sha256
from edge.crop import similarity_transform, warp_face
from edge.faces import YuNetDetector
from quantize.datasets import FaceSet
from quantize.digest import faces_fingerprint
from quantize.errors import QuantizeError
from quantize.outputs import read_cache, write_cache

ENLARGE = 3
BORDER = 24  # pixels of replicated border around the enlarged face, so the detector sees its edges
SCORE_THRESHOLD = 0.5  # lower than the daemon's 0.7: these faces are known to be faces
# Which landmark a point becomes in the mirror image: the eyes swap, and so do the mouth corners.
MIRROR_ORDER = (1, 0, 2, 4, 3)
CACHE_VERSION = "1"


def _yunet_detector(yunet: Path, side: int) -> YuNetDetector:
    """YuNet at `side` pixels; a file that is not YuNet is one line naming --yunet."""
    try:
        return YuNetDetector(yunet, detect_width=side, score_threshold=SCORE_THRESHOLD, min_face_px=8)
    except ModelError:
        # The daemon's own message says to re-run its installer; this file is the user's own choice.
        raise QuantizeError(
            f"YuNet model {yunet} is not a YuNet face detector ONNX; give --yunet the path of "
            "face_detection_yunet_2023mar.onnx from the OpenCV Zoo (`edge models fetch` downloads it and prints "
            "its path)"
        ) from None


def detect_landmarks(
    faces: FaceSet, yunet: Path, cache_dir: Path | None, log: Callable[[str], None] = print
) -> np.ndarray:
    """(N, 5, 2) float32 landmarks in the faces' pixels (continuous coordinates); NaN where YuNet found none."""
    key = hashlib.sha256(
        f"{CACHE_VERSION}|{file_sha256(yunet)}|{faces_fingerprint(faces.images, faces.labels)}".encode()
    ).hexdigest()[:24]
    cache_file = cache_dir / f"landmarks-{key}.npz" if cache_dir else None
    cached = read_cache(cache_file, ("points",))
    if cached is not None and cached[0].shape == (len(faces), LANDMARKS, 2):
        return cached[0]
    side = faces.images.shape[1] * ENLARGE + 2 * BORDER
    detector = _yunet_detector(yunet, side)
    points = np.full((len(faces), LANDMARKS, 2), np.nan, np.float32)
    for i, face in enumerate(faces.images):
        big = cv2.resize(face, None, fx=ENLARGE, fy=ENLARGE, interpolation=cv2.INTER_CUBIC)
        found = detector.detect(cv2.copyMakeBorder(big, BORDER, BORDER, BORDER, BORDER, cv2.BORDER_REPLICATE))
        if found:
            largest = max(found, key=lambda f: f.box[2] * f.box[3])
            if largest.landmarks is not None:
                points[i] = (largest.landmarks - BORDER) / ENLARGE
    found_share = float(np.isfinite(points[:, 0, 0]).mean())
    log(f"landmarks: YuNet found {found_share * 100:.1f}% of {len(faces)} {faces.split} faces")
    if cache_file is not None:
        write_cache(cache_file, lambda f: np.savez(f, points=points), "the landmarks", log)
    return points


def landmark_template(landmarks: np.ndarray, size: int) -> list[list[float]]:
    """The median landmarks of the faces YuNet found, averaged with their mirror image, as fractions of `size`."""
    found = landmarks[np.isfinite(landmarks[:, 0, 0])]
    if len(found) == 0:
        raise QuantizeError("YuNet found no face among the training faces, so there is nothing to align them to")
    median = np.median(found, axis=0) / size
    mirrored = median[list(MIRROR_ORDER)] * np.array([-1.0, 1.0]) + np.array([1.0, 0.0])
    return [[round(float(x), 4), round(float(y), 4)] for x, y in (median + mirrored) / 2]


def align_faces(faces: FaceSet, landmarks: np.ndarray, template: list[list[float]]) -> FaceSet:
    """`faces` warped so their landmarks lie on `template` (fractions of the face side); faces without
    landmarks are kept as they are."""
    height, width = faces.images.shape[1:]
    targets = np.asarray(template, np.float64) * np.array([width, height])
    aligned = faces.images.copy()
    for i in np.flatnonzero(np.isfinite(landmarks[:, 0, 0])):
        aligned[i] = warp_face(faces.images[i], similarity_transform(landmarks[i], targets), width, height)
    return replace(faces, images=aligned)
