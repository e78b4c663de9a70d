"""Resuming a distillation. After every epoch the whole training state is written atomically to
<work dir>/distill.ckpt together with a fingerprint of the settings, the teachers as loaded (labels, input,
output...), the faces and their targets; running the same distillation again resumes from it, while a
checkpoint with another fingerprint is ignored (and replaced after the next epoch)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from quantize.datasets import FaceSet
from quantize.digest import faces_fingerprint
from quantize.training import save_atomically

CHECKPOINT_NAME = "distill.ckpt"


@dataclass
class Progress:
    """What the loop carries from epoch to epoch, and what a checkpoint keeps besides the training objects."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None  # the student's weights at the best validation epoch
    best_epoch: int = 0
    best_top1: float = -1.0
    epoch: int = 0  # the last finished epoch
    finished: bool = False


PROGRESS_KEYS = tuple(f.name for f in fields(Progress))


def run_fingerprint(settings: dict[str, Any], teachers: list[dict[str, Any]], faces: FaceSet) -> str:
    """Hex sha256 of what decides a distillation's result: settings, teachers, training faces and their targets.

    Each teacher counts with its whole record (file, labels, input, output, template), not its file alone: a
    rerun with a teacher's labels or preprocessing fixed must not resume the run that read it wrongly. The
    targets are those of the label source (votes and their weight), the labels alone without one."""
    targets = None if faces.targets is None else hashlib.sha256(faces.targets.tobytes()).hexdigest()
    text = json.dumps(
        [settings, teachers, faces_fingerprint(faces.images, faces.labels), targets],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


class Checkpoint:
    """The checkpoint of one distillation in `work_dir` (none without one). `parts` names the objects whose
    state it saves and restores: the student, its optimizer, scheduler and gradient scaler."""

    def __init__(self, work_dir: Path | None, fingerprint: str, parts: dict[str, Any]) -> None:
        self.path = work_dir / CHECKPOINT_NAME if work_dir else None
        self.fingerprint = fingerprint
        self.parts = parts

    def resume(self, validating: bool, log: Callable[[str], None]) -> Progress:
        """The progress of a matching checkpoint, with `parts` restored to its state; a fresh start otherwise."""
        if self.path is None or not self.path.is_file():
            return Progress()
        state = _load(self.path)
        if state is None or state.get("fingerprint") != self.fingerprint:
            log(f"{self.path} belongs to other settings, data or teachers; starting afresh")
            return Progress()
        for name, part in self.parts.items():
            part.load_state_dict(state[name])
        progress = Progress(**{key: state[key] for key in PROGRESS_KEYS})
        best = f" (best val top-1 {progress.best_top1:.4f} at epoch {progress.best_epoch})" if validating else ""
        log(f"resuming {self.path} after epoch {progress.epoch}{best}")
        return progress

    def save(self, progress: Progress) -> None:
        if self.path is None:
            return
        save_atomically(
            {
                "fingerprint": self.fingerprint,
                **{name: part.state_dict() for name, part in self.parts.items()},
                **{key: getattr(progress, key) for key in PROGRESS_KEYS},
            },
            self.path,
        )


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged checkpoint only costs a fresh start
        return None
