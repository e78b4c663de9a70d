"""Following a face between full-frame detections: look for it again only in a small region around its box.

The region is a square of REGION_PX times a whole factor, centred where the face was: the factor nearest to
REGION_CONTEXT face sizes, so the region is 1.3 to 2.7 face sizes wide (more for faces under 64 px, which are
not shrunk) and a face of 64 px or more is 48-96 px wide once the region is shrunk to REGION_PX, large
enough for YuNet to score it well. A whole factor keeps the shrinking cheap. A detector working at
REGION_PX searches it: a fraction of a full-frame search, with a fresh box and fresh landmarks, so the crop
is as good as after a full detection. A face not found again, or found where another followed face is, is
for the caller to settle with a full detection; so is a face that moved out of its region between two frames.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.boxes import clipped
from edge.faces import Detector, Face
from edge.tracker import iou

REGION_PX = 128  # side of the square the region is shrunk to before detection
REGION_CONTEXT = 2.0  # the region's side in face sizes: room for the face to move between two frames
SAME_FACE_IOU = 0.3  # a face found in the region overlaps the one followed at least this much


class RegionFollower:
    """`refind(image, face)`: the face again, near where it was, or None."""

    def __init__(self, detector: Detector, min_face_px: int) -> None:
        self.detector = detector.at_width(REGION_PX)
        self.min_face_px = min_face_px

    def refind(self, image: np.ndarray, face: Face) -> Face | None:
        x, y, w, h = face.box
        factor = max(1, round(REGION_CONTEXT * max(w, h) / REGION_PX))
        side = factor * REGION_PX
        left = round(x + w / 2 - side / 2)
        top = round(y + h / 2 - side / 2)
        region = _cut(image, left, top, side)
        if factor > 1:  # a whole factor keeps INTER_AREA on its fast path
            region = cv2.resize(region, (REGION_PX, REGION_PX), interpolation=cv2.INTER_AREA)
        frame_h, frame_w = image.shape[:2]
        best, best_overlap = None, SAME_FACE_IOU
        for found in self.detector.detect(region):
            fx, fy, fw, fh = found.box
            box = clipped((left + fx * factor, top + fy * factor, fw * factor, fh * factor), frame_w, frame_h)
            overlap = iou(box, face.box)
            if max(box[2], box[3]) >= self.min_face_px and overlap >= best_overlap:
                landmarks = None
                if found.landmarks is not None:
                    landmarks = found.landmarks * np.float32(factor) + np.array([left, top], np.float32)
                best, best_overlap = Face(box, found.score, landmarks), overlap
        return best


def _cut(image: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    """The side x side square at (left, top); where it leaves the frame it is filled with black."""
    frame_h, frame_w = image.shape[:2]
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(frame_w, left + side), min(frame_h, top + side)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((side, side, *image.shape[2:]), image.dtype)
    inside = image[y0:y1, x0:x1]
    if inside.shape[:2] == (side, side):
        return inside
    return cv2.copyMakeBorder(
        inside, y0 - top, top + side - y1, x0 - left, left + side - x1, cv2.BORDER_CONSTANT, value=0
    )


def overlapping(faces: list[Face], threshold: float = SAME_FACE_IOU) -> bool:
    """Whether two of the faces are probably one: two followed faces that led to the same face."""
    return any(iou(a.box, b.box) >= threshold for i, a in enumerate(faces) for b in faces[i + 1 :])
