"""The model in models/ loads through the daemon's own loader and still classifies real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.classifier import ExpressionModel
from edge.contract import card_path_for, load_card
from edge.locations import default_model
from quantize.datasets import load_dataset

FER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"


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
    faces = load_dataset(FER, "test")
    top1 = float((model.predict(list(faces.images[:500])).argmax(1) == faces.labels[:500]).mean())
    card_top1 = model.card.raw["metrics"]["int8"]["top1"]
    assert top1 > card_top1 - 0.06, f"{top1:.3f} on 500 PublicTest faces, card says {card_top1:.3f}"


def test_shipped_model_fits_the_size_budget():
    """The INT8 file the daemon loads stays at most 1 MB, and its card says it kept the FP32 accuracy."""
    path = default_model()
    assert path.stat().st_size <= 1_000_000, f"{path.name} is {path.stat().st_size:,} bytes"
    metrics = load_card(card_path_for(path)).raw["metrics"]
    assert metrics["int8"]["top1"] >= metrics["fp32"]["top1"] - 0.005
