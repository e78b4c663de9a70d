"""Grey-level normalisation of a face crop, the same in training (`quantize`) and in the daemon.

FER2013's faces look histogram-equalised, while a camera's crop keeps the light of its room. A model trained
with a normalisation named in its card (`input.illumination`) gets every face normalised the same way before
it sees it, whatever the camera and light:
- "equalize": global histogram equalisation (cv2.equalizeHist): every face spreads over the full grey range;
- "clahe": contrast-limited adaptive equalisation over a 4x4 grid of tiles (clip limit 2), which also evens
  out light that falls on one side of the face;
- "none": the crop as it is.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.contract import ILLUMINATIONS

CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILES = (4, 4)


def normalise_illumination(face: np.ndarray, method: str) -> np.ndarray:
    """The uint8 grey face (H, W) with its grey levels normalised by `method` (one of contract.ILLUMINATIONS)."""
    if method == "none":
        return face
    if method == "equalize":
        return cv2.equalizeHist(face)
    if method == "clahe":
        # A CLAHE object holds state between calls, so one per call keeps threads apart; it costs microseconds.
        return cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILES).apply(face)
    raise ValueError(f"illumination {method!r} unknown; use one of {', '.join(ILLUMINATIONS)}")
