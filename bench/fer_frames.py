"""FER2013 faces staged as camera frames, shared by the benches that run the daemon's path on them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from quantize.datasets import DEFAULT_VAL_FRACTION, load_dataset, stratified_split

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FER = SHARED / "data" / "fer2013" / "fer2013.csv.gz"
YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"
FRAME = (640, 480)
FACE_SIDE = 160  # pixels the 48x48 face is enlarged to, before padding with its own border
BACKGROUND = 120
EDGE_GAP = 10  # pixels between a face placed left or right and the frame's border
# The Training faces `quantize build` holds out to pick the epoch (its default --val-fraction and --seed 0):
# the shipped student never trained on them, so they can choose settings without touching PublicTest.
HOLDOUT = "Holdout"
SPLITS = ("Training", HOLDOUT, "PublicTest")


def balanced_sample(split: str, per_class: int, seed: int, shuffle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Up to `per_class` faces of each class of one split (a class with fewer gives all it has), grouped by
    class, or in random order with `shuffle`."""
    if split == HOLDOUT:
        faces = stratified_split(load_dataset(FER, "Training"), DEFAULT_VAL_FRACTION, 0)[1]
    else:
        faces = load_dataset(FER, split)
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(faces.labels == c))[:per_class] for c in range(7)])
    if shuffle:
        chosen = rng.permutation(chosen)
    return faces.images[chosen], faces.labels[chosen]


def empty_frame() -> np.ndarray:
    return np.full((FRAME[1], FRAME[0], 3), BACKGROUND, np.uint8)


def face_frame(face: np.ndarray, place: str = "centre") -> np.ndarray:
    """A BGR frame with the face enlarged (its border replicated around it) at the centre, left or right."""
    big = cv2.resize(face, (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_CUBIC)
    pad = FACE_SIDE // 3
    big = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    frame = np.full((FRAME[1], FRAME[0]), BACKGROUND, np.uint8)
    y = (FRAME[1] - big.shape[0]) // 2
    x = {"centre": (FRAME[0] - big.shape[1]) // 2, "left": EDGE_GAP, "right": FRAME[0] - big.shape[1] - EDGE_GAP}[place]
    frame[y : y + big.shape[0], x : x + big.shape[1]] = big
    return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
