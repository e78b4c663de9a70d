"""Cut a face out of a frame the way the expression model saw faces in training.

Two ways, chosen by the model card:
- aligned (the card has `crop.align_template` and the detector gave landmarks): the similarity transform
  (rotation, uniform scale, shift) that best maps the face's five landmarks onto the template's, so eyes, nose
  and mouth land where they sat in the training faces. `quantize build --align` aligns its training faces with
  this same function and writes the template into the card.
- from the box (no template, or Haar's box without landmarks): level the eyes when landmarks exist, take a
  square of side max(w, h) * (1 + 2 * margin) around the box centre.

Either way one warpAffine replicates the border where the crop leaves the frame and resizes to the card's size.
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


def similarity_transform(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The 2x3 rotation + uniform scale + shift that maps `points` (N, 2) onto `targets` (N, 2) with the least
    squared error (Umeyama's closed form, without reflection)."""
    src, dst = np.asarray(points, np.float64), np.asarray(targets, np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    u, singular, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    sign = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ sign @ vt
    variance = float((src_c**2).sum(axis=1).mean())
    scale = float(np.trace(np.diag(singular) @ sign)) / variance if variance > 0 else 1.0
    shift = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, shift[:, None]])


def template_points(card: ModelCard) -> np.ndarray | None:
    """The card's landmark template in the model input's pixels (continuous coordinates), or None."""
    if card.align_template is None:
        return None
    return np.asarray(card.align_template, np.float64) * np.array([card.width, card.height])


def box_transform(face: Face, card: ModelCard) -> np.ndarray:
    """2x3 map from frame to crop for a square around the box centre, eyes levelled when landmarks exist."""
    x, y, w, h = face.box
    centre = np.array([x + w / 2, y + h / 2])
    side = max(max(w, h) * (1 + 2 * card.crop_margin), 1.0)
    angle = eye_angle(face.landmarks)
    cos, sin = math.cos(angle), math.sin(angle)
    linear = np.array([card.width / side, card.height / side])[:, None] * np.array([[cos, sin], [-sin, cos]])
    offset = np.array([card.width, card.height]) / 2 - linear @ centre
    return np.hstack([linear, offset[:, None]])


def face_transform(face: Face, card: ModelCard) -> np.ndarray:
    """The 2x3 map (continuous pixel coordinates) from the frame to the model's input for this face."""
    template = template_points(card)
    if template is not None and face.landmarks is not None:
        return similarity_transform(face.landmarks, template)
    return box_transform(face, card)


def warp_face(image: np.ndarray, transform: np.ndarray, width: int, height: int) -> np.ndarray:
    """The width x height crop that `transform` (frame -> crop, continuous coordinates) cuts out of `image`."""
    linear, offset = transform[:, :2], transform[:, 2]
    # Only the region the crop covers is needed; when shrinking, reduce it first with INTER_AREA (warpAffine's
    # bilinear sampling would alias), so the warp itself works at about 1:1.
    scale = math.sqrt(abs(float(np.linalg.det(linear))))
    shrink = min(1.0, scale)
    inverse = np.linalg.inv(linear)
    corners = (inverse @ (np.array([[0, 0], [width, 0], [0, height], [width, height]]) - offset).T).T
    pad = 2 + 1 / shrink
    frame_h, frame_w = image.shape[:2]
    x0, y0 = max(0, math.floor(corners[:, 0].min() - pad)), max(0, math.floor(corners[:, 1].min() - pad))
    x1 = min(frame_w, math.ceil(corners[:, 0].max() + pad))
    y1 = min(frame_h, math.ceil(corners[:, 1].max() + pad))
    if x1 <= x0 or y1 <= y0:  # crop entirely outside the frame: sample the nearest edge
        x0, y0 = min(max(x0, 0), frame_w - 1), min(max(y0, 0), frame_h - 1)
        x1, y1 = x0 + 1, y0 + 1
    region = image[y0:y1, x0:x1]
    factor = np.array([1.0, 1.0])
    if shrink < 1.0:
        size = (max(1, round((x1 - x0) * shrink)), max(1, round((y1 - y0) * shrink)))
        factor = np.array([size[0] / (x1 - x0), size[1] / (y1 - y0)])
        region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)

    # A point of the reduced region is p = small / factor + origin in the frame.
    region_linear = linear / factor[None, :]
    region_offset = linear @ np.array([x0, y0]) + offset
    # Pixel indices sit half a pixel from continuous coordinates on both sides of the map.
    region_offset = region_offset + region_linear @ np.array([0.5, 0.5]) - 0.5
    matrix = np.hstack([region_linear, region_offset[:, None]])
    return cv2.warpAffine(region, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def crop_face(image: np.ndarray, face: Face, card: ModelCard) -> np.ndarray:
    """The face as the card's HxW grey (uint8 HxW) or RGB (uint8 HxWx3) image; `image` is BGR or grey."""
    crop = warp_face(image, face_transform(face, card), card.width, card.height)
    return _to_card_color(crop, card.color)


def _to_card_color(crop: np.ndarray, color: str) -> np.ndarray:
    if color == "gray":
        return crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    return cv2.cvtColor(crop, cv2.COLOR_GRAY2RGB if crop.ndim == 2 else cv2.COLOR_BGR2RGB)
