"""What the student sees in training: each face varied the way cameras and rooms vary it, one face at a time
with OpenCV on the CPU (a thread prepares the next batch while torch trains on this one).

Levels:
- "basic": mirror, rotation (+-10 degrees), scale (+-10%), shift (+-8%), brightness and contrast;
- "camera": basic, plus what a camera in a room adds to a face: exposure (gamma), a small or far face (lower
  resolution), focus and motion blur, sensor noise, JPEG compression, and something in front of the face (a
  hand, a microphone, glasses' rims: a grey block);
- "none": the faces as they are.

Grey levels are normalised after augmentation (edge.illumination, as the card says), exactly as the daemon
normalises a crop, so exposure and contrast changes teach the model only what normalisation leaves of them.
Training faces are grey already, so a colour camera's grey conversion is not simulated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

AUGMENT_LEVELS = ("none", "basic", "camera")


@dataclass(frozen=True)
class StudentAugmentation:
    level: str = "camera"
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.08  # +- fraction of the side
    mirror_p: float = 0.5

    def __call__(self, face: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """(augmented uint8 face of the same size, whether it was mirrored)."""
        if self.level == "none":
            return face, False
        mirrored = bool(rng.random() < self.mirror_p)
        image = self._geometry(face[:, ::-1] if mirrored else face, rng)
        if self.level == "camera":
            return self._camera(image, rng), mirrored
        return _brightness_contrast(image, rng, contrast=(0.75, 1.25), brightness=51.0), mirrored

    def _geometry(self, face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        height, width = face.shape
        matrix = cv2.getRotationMatrix2D(
            (width / 2, height / 2), rng.uniform(-self.rotate_deg, self.rotate_deg), rng.uniform(*self.scale)
        )
        matrix[:, 2] = matrix[:, 2] + rng.uniform(-self.shift, self.shift, 2) * (width, height)
        return cv2.warpAffine(
            np.ascontiguousarray(face), matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )

    def _camera(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        side = image.shape[0]
        if rng.random() < 0.5:  # exposure
            gamma = math.exp(rng.uniform(-0.5, 0.5))
            image = cv2.LUT(image, (255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8))
        image = _brightness_contrast(image, rng, contrast=(0.6, 1.2), brightness=30.0)
        if rng.random() < 0.3:  # a small or far face, enlarged back to the crop's size
            small = max(8, int(side * rng.uniform(0.35, 0.8)))
            image = cv2.resize(cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA), (side, side))
        if rng.random() < 0.3:  # focus or motion
            image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.3))
        if rng.random() < 0.3:  # sensor noise in dim light
            noise = rng.normal(0.0, rng.uniform(2.0, 10.0), image.shape)
            image = np.clip(image + noise, 0, 255).astype(np.uint8)
        if rng.random() < 0.3:  # a compressed stream
            _, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.uniform(25, 85))])
            image = np.asarray(cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE), np.uint8)
        if rng.random() < 0.25:  # something in front of the face
            h, w = (int(rng.uniform(0.15, 0.45) * side) for _ in range(2))
            y, x = int(rng.integers(0, side - h)), int(rng.integers(0, side - w))
            image = image.copy()
            image[y : y + h, x : x + w] = int(rng.integers(0, 256))
        return image


def _brightness_contrast(
    image: np.ndarray, rng: np.random.Generator, contrast: tuple[float, float], brightness: float
) -> np.ndarray:
    mean = float(image.mean())
    gain = rng.uniform(*contrast)
    offset = rng.uniform(-brightness, brightness)
    return np.clip((image.astype(np.float32) - mean) * gain + mean + offset, 0, 255).astype(np.uint8)
