"""A teacher of the offline tool (a .pt checkpoint, TorchScript or ONNX file with its spec, as `quantize` loads
it: quantize.teachers) as a model the bench can score, so that the big networks a student learns from are judged
on the same table as the student.

TeacherModel offers what the bench asks of an ExpressionModel (`card`, `predict(crops)` -> probabilities in
FER2013 order). The daemon's FrameAnalyzer cuts 48x48 grey crops with crop_face and the card below: aligned to
the teacher's landmark template when its spec has one, else cut from the detector's box without margin (the
framing of FER2013's faces and of the shipped model). The teacher then reads each crop as distillation shows it
faces (its own resize, channels, normalisation and grey levels), averaged with its mirror image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from grey_crops import grey_card, grey_face

from edge.contract import CANONICAL_LABELS
from quantize.errors import QuantizeError

if TYPE_CHECKING:
    from quantize.teachers import Teacher

SIDE = 48  # teachers take the data set's 48x48 grey faces and resize them themselves


class TeacherModel:
    """Use `TeacherModel.load(path)`; `predict(crops)` returns (N, 7) float32 probabilities."""

    def __init__(self, teacher: Teacher) -> None:
        self._teacher = teacher
        template = teacher.align_template
        self.card = grey_card(
            teacher.name,
            SIDE,
            mean=0.0,
            std=1.0,
            align_template=tuple((x, y) for x, y in template) if template else None,
        )
        self.labels = list(CANONICAL_LABELS)
        self.model_id = f"teacher {teacher.describe()}"
        self.precision = "fp32"
        self.path = teacher.path

    @classmethod
    def load(cls, path: Path) -> TeacherModel:
        """The teacher at `path` with its spec, or SystemExit with the tool's one-line reason."""
        from quantize.teachers import load_teacher  # torch: only where a teacher is asked for

        try:
            return cls(load_teacher(path))
        except QuantizeError as exc:
            raise SystemExit(f"--teacher: {exc}") from None

    def predict(self, crops: list[np.ndarray]) -> np.ndarray:
        """Probabilities (N, 7) float32; a class the teacher lacks gets 0."""
        if not crops:
            return np.zeros((0, len(self.labels)), np.float32)
        faces = np.stack([grey_face(crop, SIDE) for crop in crops])
        logits = self._teacher.logits(faces, flip_tta=True)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        own = exp / exp.sum(axis=1, keepdims=True)
        scores = np.zeros((len(crops), len(self.labels)), np.float32)
        scores[:, self._teacher.label_index] = own
        return scores
