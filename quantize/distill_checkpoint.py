"""Resuming a distillation. After every epoch the whole training state is written atomically to
<work dir>/distill.ckpt together with what identifies the run: the settings, the teachers as loaded (labels,
input, output...), the faces and their targets. Running the same distillation again resumes from it. A run
that differs starts afresh and keeps the other run's checkpoint one step back, as distill.previous.ckpt, so
that a rerun with one option mistyped does not throw away hours of training: the other run's own command
finds it there and resumes it."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from quantize.datasets import FaceSet
from quantize.digest import faces_fingerprint
from quantize.training import save_atomically

CHECKPOINT_NAME = "distill.ckpt"
PREVIOUS_NAME = "distill.previous.ckpt"  # the checkpoint of the run before, kept one step back


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


def run_identity(settings: dict[str, Any], teachers: list[dict[str, Any]], faces: FaceSet) -> dict[str, Any]:
    """What decides a distillation's result: settings, teachers, training faces and their targets.

    Each teacher counts with its whole record (file, labels, input, output, template), not its file alone: a
    rerun with a teacher's labels or preprocessing fixed must not resume the run that read it wrongly. The
    targets are those of the label source (votes and their weight), the labels alone without one."""
    return {
        "settings": json.loads(json.dumps(settings, sort_keys=True, default=str)),
        "teachers": teachers,
        "faces": faces_fingerprint(faces.images, faces.labels),
        "targets": None if faces.targets is None else hashlib.sha256(faces.targets.tobytes()).hexdigest(),
    }


def fingerprint(identity: dict[str, Any]) -> str:
    text = json.dumps(
        [identity["settings"], identity["teachers"], identity["faces"], identity["targets"]],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def differences(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's run and this one, in words for the log."""
    if saved is None:  # written before checkpoints kept their identity
        return ["other settings, data or teachers"]
    changed = [
        f"{key} {saved['settings'].get(key)!r} -> {value!r}"
        for key, value in now["settings"].items()
        if saved["settings"].get(key) != value
    ]
    names = lambda teachers: [t["file"] for t in teachers]  # noqa: E731
    if names(saved["teachers"]) != names(now["teachers"]):
        changed.append(f"teachers {names(saved['teachers']) or 'none'} -> {names(now['teachers']) or 'none'}")
    elif saved["teachers"] != now["teachers"]:
        changed.append("a teacher's file or spec")
    if saved["faces"] != now["faces"]:
        changed.append("the training faces")
    if saved["targets"] != now["targets"]:
        changed.append("the label source (--votes or its weight)")
    return changed


class Checkpoint:
    """The checkpoint of one distillation in `work_dir` (none without one). `parts` names the objects whose
    state it saves and restores: the student, its optimizer, scheduler and gradient scaler."""

    def __init__(self, work_dir: Path | None, identity: dict[str, Any], parts: dict[str, Any]) -> None:
        self.path = work_dir / CHECKPOINT_NAME if work_dir else None
        self.previous = work_dir / PREVIOUS_NAME if work_dir else None
        self.identity = identity
        self.fingerprint = fingerprint(identity)
        self.parts = parts

    def resume(self, validating: bool, log: Callable[[str], None]) -> Progress:
        """The progress of this run's checkpoint, with `parts` restored to its state; a fresh start without one."""
        if self.path is None or self.previous is None:
            return Progress()
        _finish_swap(self.path, self.previous)
        state = _load(self.path)
        if state is None or state.get("fingerprint") != self.fingerprint:
            kept = _load(self.previous)
            if kept is not None and kept.get("fingerprint") == self.fingerprint:
                other = f"; the other run's {self.path.name} takes its place" if self.path.is_file() else ""
                _swap(self.path, self.previous)
                log(f"this run's checkpoint was kept as {self.previous.name}{other}")
                state = kept
            elif state is not None:
                changed = differences(state.get("identity"), self.identity)
                dropped = (
                    f"; the one kept there before, of a third run (epoch {kept['epoch']}), is deleted"
                    if kept is not None
                    else ""
                )
                os.replace(self.path, self.previous)
                log(
                    f"{self.path} is of another run ({'; '.join(changed[:4])}): kept as {self.previous.name}, "
                    f"where that run's own command resumes it{dropped}; starting afresh"
                )
                return Progress()
            else:
                if self.path.is_file():
                    log(f"cannot read {self.path} (damaged); starting afresh")
                return Progress()
        for name, part in self.parts.items():
            part.load_state_dict(state[name])
        if "torch_rng" in state:  # checkpoints written before it was kept resume with other dropout masks
            torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
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
                "identity": self.identity,
                # Dropout draws from torch's global generator: its state, so that a resumed run goes on as
                # the uninterrupted one would.
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                **{name: part.state_dict() for name, part in self.parts.items()},
                **{key: getattr(progress, key) for key in PROGRESS_KEYS},
            },
            self.path,
        )


def _spare(path: Path) -> Path:
    return path.with_name(path.name + ".swap")


def _swap(path: Path, previous: Path) -> None:
    """Exchange the two checkpoints (`path` may be missing) through a spare name; each rename is atomic, and
    _finish_swap puts a file a crash left under the spare name where it belongs."""
    if path.exists():
        os.replace(path, _spare(path))
    os.replace(previous, path)
    _finish_swap(path, previous)


def _finish_swap(path: Path, previous: Path) -> None:
    """The spare of an exchange goes where a checkpoint is missing: `previous` normally, `path` after a crash
    between the first two renames."""
    spare = _spare(path)
    missing = next((name for name in (previous, path) if not name.exists()), None)
    if spare.exists() and missing is not None:
        os.replace(spare, missing)


def _load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`; None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged checkpoint only costs a fresh start
        return None
