"""The model in models/ loads through the daemon's own loader and still classifies real faces."""

from __future__ import annotations

import gzip
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from edge.classifier import ExpressionModel
from edge.locations import default_model

FER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"


def public_test_faces(count: int) -> tuple[list[np.ndarray], np.ndarray]:
    faces, labels = [], []
    with gzip.open(FER, "rt") as fh:
        rows = (line.rstrip("\n").split(",") for line in islice(fh, 1, None))
        for emotion, pixels, usage in rows:
            if usage == "PublicTest":
                faces.append(np.array(pixels.split(), np.uint8).reshape(48, 48))
                labels.append(int(emotion))
                if len(faces) == count:
                    break
    return faces, np.array(labels)


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_shipped_model_loads_with_its_card(precision):
    model = ExpressionModel.load(default_model(), precision=precision, threads=1)
    assert model.precision == precision
    assert model.labels == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert (model.card.channels, model.card.height, model.card.width) == (1, 48, 48)
    probs = model.predict([np.full((48, 48), 128, np.uint8)])
    assert probs.shape == (1, 7) and abs(float(probs.sum()) - 1) < 1e-4


@pytest.mark.skipif(not FER.exists(), reason="needs ../shared/data/fer2013 (the team's shared data)")
def test_shipped_model_accuracy_on_real_faces():
    """Well above chance (14%) and near the card's PublicTest figure on a 500-face sample."""
    model = ExpressionModel.load(default_model(), precision="int8", threads=1)
    faces, labels = public_test_faces(500)
    top1 = float((model.predict(faces).argmax(1) == labels).mean())
    card_top1 = model.card.raw["metrics"]["int8"]["top1"]
    assert top1 > card_top1 - 0.06, f"{top1:.3f} on 500 PublicTest faces, card says {card_top1:.3f}"
