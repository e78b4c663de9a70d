"""What the bench's stand-ins for an ExpressionModel (fer_package.FerPackageModel, teacher_model.TeacherModel)
share: a card for square grey crops, and a crop made such a face the way ExpressionModel.preprocess makes it."""

from __future__ import annotations

import cv2
import numpy as np

from edge.contract import CANONICAL_LABELS, ModelCard


def grey_card(
    name: str, side: int, mean: float, std: float, align_template: tuple[tuple[float, float], ...] | None = None
) -> ModelCard:
    """A card for a model of `side` x `side` grey faces in FER2013's label order, cut from the detector's box
    without margin (the shipped model's framing) or aligned to `align_template`."""
    return ModelCard(
        labels=list(CANONICAL_LABELS),
        channels=1,
        height=side,
        width=side,
        color="gray",
        mean=[mean],
        std=[std],
        crop_margin=0.0,
        name=name,
        align_template=align_template,
    )


def grey_face(crop: np.ndarray, side: int) -> np.ndarray:
    """A crop (uint8, grey or RGB as crop_face hands it over) as a `side` x `side` grey face, resized as
    ExpressionModel.preprocess resizes (area when shrinking)."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if crop.ndim == 3 else crop
    if grey.shape != (side, side):
        shrinking = max(grey.shape) > side
        grey = cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return grey
