"""The student file `quantize distill` writes and `quantize export` reads: the trained weights with everything
export and the card need (architecture, labels, input size and normalisation, history, settings, teachers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edge.contract import CANONICAL_LABELS, first_line
from quantize.distill import DistillResult
from quantize.errors import QuantizeError
from quantize.student import Student, build_student, count_parameters
from quantize.teacher_formats import is_torchscript
from quantize.training import save_atomically

STUDENT_FORMAT = "edge-mood-student"


def student_meta(result: DistillResult, faces: dict[str, Any] | None = None) -> dict[str, Any]:
    """What export and the card need to know about a distilled student; `faces` is
    training_data.TrainingData.faces_record() (label source, landmark template)."""
    settings = result.settings
    return {
        "arch": settings["student"],
        "labels": list(CANONICAL_LABELS),
        "input_size": settings["input_size"],
        "channels": 1,
        "mean": [settings["mean"]],
        "std": [settings["std"]],
        "illumination": settings.get("illumination", "none"),
        "params": count_parameters(result.model),
        **(faces or {}),
    }


def save_student(path: Path, result: DistillResult, dataset: dict[str, Any], faces: dict[str, Any]) -> None:
    """The trained student with everything export and the card need (written atomically)."""
    save_atomically(
        {
            "format": STUDENT_FORMAT,
            **student_meta(result, faces),
            "state_dict": result.model.state_dict(),
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_val_top1": result.best_val_top1,
            "settings": result.settings,
            "teachers": result.teachers,
            "dataset": dataset,
            "train_faces": result.train_faces,
            "val_faces": result.val_faces,
        },
        path,
    )


def load_student(path: Path) -> tuple[Student, dict[str, Any]]:
    """(model in eval mode, metadata) from a file written by save_student."""
    if not Path(path).is_file():
        raise QuantizeError(f"student checkpoint {path} not found; create it with `quantize distill`")
    if is_torchscript(Path(path)):
        raise QuantizeError(f"{path} is a TorchScript model, not a student checkpoint written by `quantize distill`")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise QuantizeError(
            f"student checkpoint {path} is unreadable ({first_line(exc, 120)}); distill it again"
        ) from None
    if not isinstance(data, dict) or data.get("format") != STUDENT_FORMAT:
        raise QuantizeError(f"{path} is not a student checkpoint written by `quantize distill`")
    model = build_student(data["arch"], len(data["labels"]), data["channels"])
    model.load_state_dict(data["state_dict"])
    return model.eval(), data
