"""How a grey face becomes the student's input: resized to the student's side the way the daemon resizes a
crop, scaled to 0..1 and normalised with the mean and std the card records.

Training (quantize.distill), the export's parity check and the daemon (edge.classifier.ExpressionModel.preprocess)
must agree on this. A step that changes the face before the student sees it (alignment, contrast
equalisation) belongs here, and in the daemon's preprocess the same way. Training-time augmentation is
quantize.augment, which resizes inside its warp instead.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch


def resize_faces(images: np.ndarray, size: int) -> np.ndarray:
    """Faces at the student's size, resized as the daemon does (INTER_AREA shrinking, INTER_LINEAR enlarging)."""
    if images.shape[1:] == (size, size):
        return images
    method = cv2.INTER_AREA if images.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, (size, size), interpolation=method) for im in images])


def normalise(x01: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Student input from resized faces (N, 1, H, W) holding pixel/255, in the channels-last layout it trains in."""
    return ((x01 - mean) / std).contiguous(memory_format=torch.channels_last)


def student_inputs(images: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """float32 (N, 1, H, W) inputs of uint8 faces (N, h, w) for a student described by `meta` (student_file)."""
    x = resize_faces(images, meta["input_size"]).astype(np.float32)[:, None] / 255.0
    return ((x - meta["mean"][0]) / meta["std"][0]).astype(np.float32)
