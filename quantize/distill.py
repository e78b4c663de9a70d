"""Knowledge distillation from a teacher ensemble into a student: the training loop.

The student learns from the hard labels and from the teachers' soft targets (quantize.teacher_targets, with
their cached logits) through quantize.distill_loss. Faces reach it as quantize.student_input prepares them,
augmented by quantize.augment: up to 10% shift, +-15% zoom, +-10 degrees, brightness and contrast, and a
mirror done here so that the mirror's teacher targets can be picked; random erasing is off (too strong a
change for targets computed on the clean face).

Validation: a stratified share of the training faces (never the test split) picks the best epoch. With
val_fraction 0 every training face is trained on and the last epoch is kept (for a final run, once the
settings are chosen). A checkpoint is written atomically after every epoch, and running the same
distillation again resumes it (quantize.distill_checkpoint).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from edge.contract import CANONICAL_LABELS
from quantize.augment import Augmentation
from quantize.datasets import FaceSet, stratified_split
from quantize.distill_checkpoint import Checkpoint, Progress, run_fingerprint
from quantize.distill_config import DistillConfig, autocast_dtype
from quantize.distill_loss import class_weights, distillation_loss
from quantize.student import Student, build_student
from quantize.student_input import normalise, resize_faces
from quantize.teacher_targets import TeacherGroup, batch_targets, training_targets
from quantize.teachers import Teacher
from quantize.training import make_optimizer, optimizer_step, to_memory_format, warmup_cosine

# The teachers' batch augmentation, minus its mirror (done here, so the mirror's teacher targets can be
# picked) and minus random erasing.
AUGMENTATION = Augmentation(flip=False, erase_p=0.0)
FLIP_P = 0.5
VALIDATION_BATCH = 512


@dataclass
class DistillResult:
    model: Student  # best validation epoch (the last one without validation), eval mode, fp32, on the CPU
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_top1: float | None  # None without validation faces
    settings: dict[str, Any]
    teachers: list[dict[str, Any]]
    train_faces: int
    val_faces: int


def distill(
    train_faces: FaceSet,
    teachers: list[tuple[Teacher, str]],
    cfg: DistillConfig,
    *,
    work_dir: Path | None = None,
    cache_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DistillResult:
    """Train a student on `train_faces` (cfg.val_fraction is split off) from `teachers` [(teacher, sha256)].

    Without teachers this is plain supervised training (alpha treated as 1), a baseline for the report.
    With `work_dir`, a checkpoint is saved there every epoch and a matching one is resumed."""
    cfg.check()
    settings = cfg.resolved()
    records = [teacher.record(sha256) for teacher, sha256 in teachers]
    if cfg.val_fraction > 0:
        fit, val = stratified_split(train_faces, cfg.val_fraction, cfg.seed)
    else:
        fit, val = train_faces, None
    dev = torch.device(device)
    dtype = autocast_dtype(cfg.precision, dev)  # an unsupported precision fails before the teachers run
    groups = training_targets(teachers, fit, cfg, cache_dir, log)
    run = _Run(cfg, settings, fit, val, dev, dtype, alpha=cfg.alpha if teachers else 1.0)
    checkpoint = Checkpoint(work_dir, run_fingerprint(settings, records, train_faces), run.parts())
    state = checkpoint.resume(validating=val is not None, log=log)

    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if state.finished:
            break
        started = time.monotonic()
        entry = run.train_epoch(epoch, groups, progress)
        if val is not None:
            entry.update(run.validate())
        entry["seconds"] = round(time.monotonic() - started, 1)
        log(_keep_epoch(state, entry, run.model, cfg.epochs, validating=val is not None))
        state.epoch = epoch
        state.finished = epoch == cfg.epochs or (cfg.patience > 0 and epoch - state.best_epoch >= cfg.patience)
        checkpoint.save(state)

    best = build_student(cfg.student)
    best.load_state_dict(state.best_state if state.best_state is not None else run.model.state_dict())
    best.eval()
    return DistillResult(
        best,
        state.history,
        state.best_epoch,
        state.best_top1 if val is not None else None,
        settings,
        records,
        len(fit),
        len(val) if val is not None else 0,
    )


def _keep_epoch(state: Progress, entry: dict[str, Any], model: Student, epochs: int, validating: bool) -> str:
    """Add an epoch to the history, keep the student's weights if it is the best yet, and say so in a log line."""
    epoch = entry["epoch"]
    state.history.append(entry)
    line = f"epoch {epoch}/{epochs} {entry['seconds']:.0f}s loss {entry['loss']:.3f} train {entry['train_top1']:.3f}"
    if not validating:
        state.best_epoch = epoch  # the final state is kept, as the loop ends
        return line
    if entry["val_top1"] > state.best_top1:
        state.best_top1, state.best_epoch = entry["val_top1"], epoch
        state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    recall = entry["val_recall"]
    return line + (
        f" val {entry['val_top1']:.4f} (recall disgust {recall.get('disgust', 0):.2f}, "
        f"fear {recall.get('fear', 0):.2f}){' best' if state.best_epoch == epoch else ''}"
    )


class _Run:
    """The student, its optimizer, schedule and gradient scaler, and the faces on the training device."""

    def __init__(
        self,
        cfg: DistillConfig,
        settings: dict[str, Any],
        fit: FaceSet,
        val: FaceSet | None,
        device: torch.device,
        dtype: torch.dtype | None,
        alpha: float,
    ) -> None:
        self.cfg, self.device, self.dtype, self.alpha = cfg, device, dtype, alpha
        torch.manual_seed(cfg.seed)
        self.model = to_memory_format(build_student(cfg.student).to(device), torch.channels_last)
        self.optimizer = make_optimizer(self.model, cfg.optimizer, settings["lr"], settings["weight_decay"])
        self.steps_per_epoch = max(len(fit) // cfg.batch_size, 1)
        warmup, total = int(cfg.warmup_epochs * self.steps_per_epoch), self.steps_per_epoch * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: warmup_cosine(s, warmup, total))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        # Augmentation resizes inside its warp; without it, faces are resized once like the daemon does.
        images = fit.images if cfg.augment else resize_faces(fit.images, cfg.input_size)
        self.fit_images = torch.from_numpy(images).to(device)
        self.fit_labels = torch.from_numpy(fit.labels).to(device)
        if val is not None:
            self.val_images = torch.from_numpy(resize_faces(val.images, cfg.input_size)).unsqueeze(1).to(device)
            self.val_labels = torch.from_numpy(val.labels).to(device)
        weights = class_weights(fit.labels, cfg.class_balance)
        self.weights = weights.to(device) if weights is not None else None

    def parts(self) -> dict[str, Any]:
        """The objects a checkpoint saves and restores."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)

    def _batch(self, idx: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """(faces as pixel/255 (B, 1, S, S), which of them are mirrored) for the training faces `idx`."""
        cfg = self.cfg
        if not cfg.augment:
            unflipped = torch.zeros(len(idx), dtype=torch.bool, device=self.device)
            return self.fit_images[idx].unsqueeze(1).float() / 255, unflipped
        flip = (torch.rand(len(idx), generator=gen) < FLIP_P).to(self.device)
        faces = torch.where(flip.view(-1, 1, 1), self.fit_images[idx].flip(-1), self.fit_images[idx])
        return AUGMENTATION(faces, (cfg.input_size, cfg.input_size), gen), flip

    def train_epoch(self, epoch: int, groups: list[TeacherGroup], show_progress: bool) -> dict[str, Any]:
        """One pass over the training faces in an order fixed by seed and epoch (so a resumed run repeats it)."""
        cfg, model, steps = self.cfg, self.model, self.steps_per_epoch
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.fit_labels), generator=gen)[: steps * cfg.batch_size].to(self.device)
        sums = {"loss": 0.0, "hard": 0.0, "soft": 0.0, "correct": 0, "seen": 0}
        bar = _progress_bar(steps, f"epoch {epoch}/{cfg.epochs}", show_progress)
        for step in range(steps):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            y = self.fit_labels[idx]
            x, flip = self._batch(idx, gen)
            targets = batch_targets(groups, idx, flip, x, cfg) if groups else []
            with self._autocast():
                logits = model(normalise(x, cfg.mean, cfg.std)).float()
            loss, hard, soft = distillation_loss(
                logits,
                y,
                targets,
                alpha=self.alpha,
                temperature=cfg.temperature,
                weights=self.weights,
                label_smoothing=cfg.label_smoothing,
            )
            optimizer_step(loss, self.optimizer, self.scaler)
            self.scheduler.step()
            sums["loss"] += loss.item() * len(idx)
            sums["hard"] += hard.item() * len(idx)
            sums["soft"] += soft.item() * len(idx)
            sums["correct"] += int((logits.argmax(1) == y).sum())
            sums["seen"] += len(idx)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{sums['loss'] / sums['seen']:.3f}",
                    acc=f"{sums['correct'] / sums['seen']:.3f}",
                    refresh=False,
                )
        if bar is not None:
            bar.close()
        seen = sums["seen"]
        return {
            "epoch": epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": sums["loss"] / seen,
            "hard_loss": sums["hard"] / seen,
            "soft_loss": sums["soft"] / seen,
            "train_top1": sums["correct"] / seen,
        }

    def validate(self) -> dict[str, Any]:
        """Cross-entropy, top-1 and per-class recall on the validation faces."""
        model, cfg = self.model, self.cfg
        model.eval()
        predictions, losses = [], []
        with torch.no_grad(), self._autocast():
            for i in range(0, len(self.val_images), VALIDATION_BATCH):
                x = normalise(self.val_images[i : i + VALIDATION_BATCH].float() / 255, cfg.mean, cfg.std)
                logits = model(x).float()
                labels = self.val_labels[i : i + VALIDATION_BATCH]
                losses.append(F.cross_entropy(logits, labels, reduction="sum").item())
                predictions.append(logits.argmax(1))
        pred = torch.cat(predictions).cpu().numpy()
        truth = self.val_labels.cpu().numpy()
        recall = {
            CANONICAL_LABELS[c]: round(float((pred[truth == c] == c).mean()), 4)
            for c in range(len(CANONICAL_LABELS))
            if (truth == c).any()
        }
        return {"val_loss": sum(losses) / len(truth), "val_top1": float((pred == truth).mean()), "val_recall": recall}


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on the terminal, None when not wanted."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
