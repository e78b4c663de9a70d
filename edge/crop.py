"""Cut a face out of a frame the way the expression model saw faces in training.

FER2013 faces are tight, roughly eye-levelled squares. So: rotate about the eyes' midpoint until the eyes are
level (when landmarks exist), take a square of side max(w, h) * (1 + 2 * margin) around the box centre,
replicate the border where it leaves the frame, and resize to the card's size - all in one warpAffine.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge.contract import ModelCard
from edge.faces import Face

RIGHT_EYE, LEFT_EYE = 0, 1  # YuNet landmark order; the subject's right eye is on the image's left


def eye_angle(landmarks: np.ndarray | None) -> float:
    """Angle in radians of the line from the right to the left eye (0 = level, positive = clockwise on screen)."""
    if landmarks is None:
        return 0.0
    dx, dy = (float(v) for v in landmarks[LEFT_EYE] - landmarks[RIGHT_EYE])
    return math.atan2(dy, dx) if dx or dy else 0.0


def crop_face(image: np.ndarray, face: Face, card: ModelCard) -> np.ndarray:
    """The face as the card's HxW grey (uint8 HxW) or RGB (uint8 HxWx3) image; `image` is BGR or grey."""
    out_h, out_w = card.height, card.width
    x, y, w, h = face.box
    centre = np.array([x + w / 2, y + h / 2])
    side = max(max(w, h) * (1 + 2 * card.crop_margin), 1.0)
    angle = eye_angle(face.landmarks)
    cos, sin = math.cos(angle), math.sin(angle)
    rotate = np.array([[cos, sin], [-sin, cos]])  # turns the eye line onto the x axis
    scale = np.array([out_w / side, out_h / side])

    # Only the region the rotated square covers is needed; when shrinking, reduce it first with INTER_AREA
    # (warpAffine's bilinear sampling would alias), so the warp itself works at about 1:1.
    shrink = min(1.0, float(scale.min()))
    half = side / 2 * (abs(cos) + abs(sin)) + 2 + 1 / shrink
    frame_h, frame_w = image.shape[:2]
    x0, y0 = max(0, math.floor(centre[0] - half)), max(0, math.floor(centre[1] - half))
    x1, y1 = min(frame_w, math.ceil(centre[0] + half)), min(frame_h, math.ceil(centre[1] + half))
    if x1 <= x0 or y1 <= y0:  # box entirely outside the frame: sample the nearest edge
        x0, y0 = min(max(x0, 0), frame_w - 1), min(max(y0, 0), frame_h - 1)
        x1, y1 = x0 + 1, y0 + 1
    region = image[y0:y1, x0:x1]
    factor = np.array([1.0, 1.0])
    if shrink < 1.0:
        size = (max(1, round((x1 - x0) * shrink)), max(1, round((y1 - y0) * shrink)))
        factor = np.array([size[0] / (x1 - x0), size[1] / (y1 - y0)])
        region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)

    # In continuous pixel coordinates: out = S R (p - centre) + out_size / 2, with p = small / factor + origin.
    linear = (scale[:, None] * rotate) / factor[None, :]
    offset = scale * (rotate @ (np.array([x0, y0]) - centre)) + np.array([out_w, out_h]) / 2
    # Pixel indices sit half a pixel from continuous coordinates on both sides of the map.
    offset = offset + linear @ np.array([0.5, 0.5]) - 0.5
    matrix = np.hstack([linear, offset[:, None]])
    crop = cv2.warpAffine(region, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return _to_card_color(crop, card.color)


def _to_card_color(crop: np.ndarray, color: str) -> np.ndarray:
    if color == "gray":
        return crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    return cv2.cvtColor(crop, cv2.COLOR_GRAY2RGB if crop.ndim == 2 else cv2.COLOR_BGR2RGB)
