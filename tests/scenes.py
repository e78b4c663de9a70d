"""Test videos built from real faces: a scripted scene of frames with or without a face.

The face is a real one cut from `../shared/data/photos/12_angry_men.jpg` by YuNet at full resolution.
Each scene segment sets the face's brightness, which drives the tiny test model's prediction (bright ->
"happy", dark -> "sad"; see tests/tiny_model.py), so a segment list is a known expression sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PHOTO = SHARED / "data" / "photos" / "12_angry_men.jpg"
YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"
FRAME_SIZE = (640, 480)
FACE_SIDE = 180


@dataclass(frozen=True)
class Segment:
    frames: int
    brightness: float | None  # None: no face in these frames; else a gain on the face's pixels


@lru_cache(maxsize=1)
def real_face() -> np.ndarray:
    """The largest face of the photo with some margin, as a FACE_SIDE-square BGR patch."""
    image = cv2.imread(str(PHOTO))
    detector = cv2.FaceDetectorYN.create(str(YUNET), "", (image.shape[1], image.shape[0]), 0.8)
    _, faces = detector.detect(image)
    x, y, w, h = max(faces[:, :4].tolist(), key=lambda b: b[2] * b[3])
    side = int(max(w, h) * 1.6)
    cx, cy = int(x + w / 2), int(y + h / 2)
    patch = image[max(0, cy - side // 2) : cy + side // 2, max(0, cx - side // 2) : cx + side // 2]
    return cv2.resize(patch, (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_CUBIC)


def render(segment_brightness: float | None, frame_number: int) -> np.ndarray:
    """One 640x480 frame: a textured wall, and the face (if any) drifting slowly to the right."""
    rng = np.random.default_rng(frame_number)
    frame = np.full((FRAME_SIZE[1], FRAME_SIZE[0], 3), 110, np.uint8)
    frame += rng.integers(0, 12, frame.shape, dtype=np.uint8)
    if segment_brightness is not None:
        face = np.clip(real_face().astype(np.float32) * segment_brightness, 0, 255).astype(np.uint8)
        x, y = 200 + (frame_number % 40), 140
        frame[y : y + FACE_SIDE, x : x + FACE_SIDE] = face
    return frame


def frame_with_faces(*corners: tuple[int, int], side: int = 180) -> np.ndarray:
    """A 640x480 wall with the real face pasted, `side` px square, at each (x, y) top-left corner."""
    frame = np.full((480, 640, 3), 110, np.uint8)
    face = cv2.resize(real_face(), (side, side), interpolation=cv2.INTER_AREA)
    for x, y in corners:
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(640, x + side), min(480, y + side)
        frame[y0:y1, x0:x1] = face[y0 - y : y1 - y, x0 - x : x1 - x]
    return frame


def write_video(path: Path, segments: list[Segment], fps: float = 10.0) -> int:
    """Write the scene as an MJPG .avi; returns the number of frames."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, FRAME_SIZE)
    count = 0
    for segment in segments:
        for _ in range(segment.frames):
            writer.write(render(segment.brightness, count))
            count += 1
    writer.release()
    return count


def write_images(folder: Path, segments: list[Segment]) -> int:
    """The same scene as a folder of numbered JPEGs."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for segment in segments:
        for _ in range(segment.frames):
            cv2.imwrite(str(folder / f"frame_{count:05d}.jpg"), render(segment.brightness, count))
            count += 1
    return count
