"""How a grey face becomes the student's input: resized to the student's side the way the daemon resizes a
crop, its grey levels normalised as the card will say (edge.illumination, the daemon's own function), scaled
to 0..1 and normalised with the mean and std the card records.

Training (quantize.distill), the export's parity check, INT8 calibration and the daemon
(edge.classifier.ExpressionModel.preprocess) all go through these same steps. Alignment happens before, on the
data set's faces (quantize.face_align), as the daemon's crop does; augmentation (quantize.student_augment)
happens before the illumination step, as a camera's changes come before the daemon's.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from edge.illumination import normalise_illumination


def resize_faces(images: np.ndarray, size: int) -> np.ndarray:
    """Faces at the student's size, resized as the daemon does (INTER_AREA shrinking, INTER_LINEAR enlarging)."""
    if images.shape[1:] == (size, size):
        return images
    method = cv2.INTER_AREA if images.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, (size, size), interpolation=method) for im in images])


def prepare_faces(images: np.ndarray, size: int, illumination: str) -> np.ndarray:
    """uint8 faces (N, size, size) as the model sees them before scaling: resized, then grey levels normalised."""
    resized = resize_faces(images, size)
    if illumination == "none":
        return resized
    return np.stack([normalise_illumination(face, illumination) for face in resized])


def normalise(x01: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Student input from prepared faces (N, 1, H, W) holding pixel/255, in the channels-last layout it trains in."""
    return ((x01 - mean) / std).contiguous(memory_format=torch.channels_last)


def student_inputs(images: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """float32 (N, 1, H, W) inputs of uint8 faces (N, h, w) for a student described by `meta` (student_file)."""
    prepared = prepare_faces(images, meta["input_size"], meta.get("illumination", "none"))
    x = prepared.astype(np.float32)[:, None] / 255.0
    return ((x - meta["mean"][0]) / meta["std"][0]).astype(np.float32)
