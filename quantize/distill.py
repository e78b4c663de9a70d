"""Knowledge distillation from a teacher ensemble into a student: the training loop.

The student learns from the data set's targets (its labels, or the distributions of a label source such as
annotator votes: quantize.label_sources) and from the teachers' soft targets (quantize.teacher_targets, with
their cached logits) through quantize.distill_loss. Each face is augmented (quantize.student_augment, which
also reports the mirror so the mirror's teacher targets can be picked) and then prepared as the daemon prepares
a crop (quantize.student_input), one batch ahead on a second thread. With logit adjustment the loss sees the
logits plus tau * log(prior), the prior being the training targets' class shares. With an EMA decay the
student that is validated and kept is a moving average of the trained one's weights (torch's AveragedModel),
often better on held-out faces than the last steps' weights; its BatchNorm statistics are measured afresh
for the averaged weights after every epoch (an average of statistics would carry those of the first steps).
With mixup each batch's faces are blended pairwise, with their targets (quantize.mixup).

Validation: a stratified share of the training faces (never the test split) picks the best epoch. With
val_fraction 0 every training face is trained on and the last epoch is kept (for a final run, once the
settings are chosen). A checkpoint is written atomically after every epoch, and running the same
distillation again resumes it (quantize.distill_checkpoint).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from edge.contract import CANONICAL_LABELS
from quantize.datasets import FaceSet, stratified_split
from quantize.distill_checkpoint import Checkpoint, Progress, run_identity
from quantize.distill_config import DistillConfig, autocast_dtype
from quantize.distill_loss import class_weights, distillation_loss
from quantize.errors import QuantizeError
from quantize.mixup import mix_batch, mixing_rng
from quantize.student import Student, build_student
from quantize.student_augment import StudentAugmentation
from quantize.student_input import normalise, prepare_faces
from quantize.teacher_targets import TeacherGroup, batch_targets, training_targets
from quantize.teachers import Teacher
from quantize.training import make_optimizer, optimizer_step, to_memory_format, warmup_cosine

VALIDATION_BATCH = 512
BATCHNORM_FACES = 8192  # training faces, as the daemon prepares them, that set the weight average's statistics


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
    teacher_faces: list[FaceSet] | None = None,
) -> DistillResult:
    """Train a student on `train_faces` (cfg.val_fraction is split off) from `teachers` [(teacher, sha256)].

    `teacher_faces` holds, for each teacher, the same faces in the same order as that teacher is to see them,
    when the student's differ (quantize.training_data.teacher_views): a teacher answers best on the framing it
    was trained on. Without teachers this is plain supervised training (alpha
    treated as 1), a baseline for the report. With `work_dir`, a checkpoint is saved there every epoch and a
    matching one is resumed."""
    cfg.check()
    settings = cfg.resolved()
    records = [teacher.record(sha256) for teacher, sha256 in teachers]
    views = teacher_faces if teacher_faces is not None else [train_faces] * len(teachers)
    if cfg.val_fraction > 0:
        # The split depends on the labels and the seed only, so every view splits alike.
        fit, val = stratified_split(train_faces, cfg.val_fraction, cfg.seed)
        teacher_fit = [stratified_split(view, cfg.val_fraction, cfg.seed)[0] for view in views]
    else:
        fit, val, teacher_fit = train_faces, None, views
    dev = torch.device(device)
    dtype = autocast_dtype(cfg.precision, dev)  # an unsupported precision fails before the teachers run
    groups = training_targets(teachers, teacher_fit, cfg, cache_dir, log)
    run = _Run(cfg, settings, fit, val, dev, dtype, alpha=cfg.alpha if teachers else 1.0)
    checkpoint = Checkpoint(work_dir, run_identity(settings, records, train_faces), run.parts())
    state = checkpoint.resume(validating=val is not None, log=log)

    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if state.finished:
            break
        started = time.monotonic()
        entry = run.train_epoch(epoch, groups, progress)
        if not math.isfinite(entry["loss"]):  # nothing after this epoch could be kept: stop before saving it
            raise QuantizeError(
                f"training diverged in epoch {epoch} (loss {entry['loss']}); lower --lr (this run: "
                f"{settings['lr']:g}) or check the teachers, and run again"
            )
        if val is not None:
            entry.update(run.validate())
        entry["seconds"] = round(time.monotonic() - started, 1)
        log(_keep_epoch(state, entry, run.kept, cfg.epochs, validating=val is not None))
        state.epoch = epoch
        state.finished = epoch == cfg.epochs or (cfg.patience > 0 and epoch - state.best_epoch >= cfg.patience)
        checkpoint.save(state)

    best = build_student(cfg.student)
    best.load_state_dict(state.best_state if state.best_state is not None else run.kept.state_dict())
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


def _keep_epoch(state: Progress, entry: dict[str, Any], model: nn.Module, epochs: int, validating: bool) -> str:
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
    """The student, its optimizer, schedule and gradient scaler, and the faces it learns from."""

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
        self.average = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay)) if cfg.ema_decay > 0 else None
        )
        self.optimizer = make_optimizer(self.model, cfg.optimizer, settings["lr"], settings["weight_decay"])
        self.steps_per_epoch = max(len(fit) // cfg.batch_size, 1)
        warmup, total = int(cfg.warmup_epochs * self.steps_per_epoch), self.steps_per_epoch * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: warmup_cosine(s, warmup, total))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.augmentation = StudentAugmentation(cfg.augment)
        self.fit_images = fit.images
        distributions = fit.target_distributions()
        self.fit_labels = torch.from_numpy(fit.labels).to(device)
        # A label source's distributions are learnt as they are; plain labels stay class indices.
        self.fit_targets = torch.from_numpy(distributions).to(device) if fit.targets is not None else self.fit_labels
        prior = np.clip(distributions.mean(axis=0), 1e-6, None)
        self.log_prior = torch.from_numpy(np.log(prior).astype(np.float32)).to(device)
        if self.average is not None:
            some = np.random.default_rng(cfg.seed).permutation(len(fit))[:BATCHNORM_FACES]
            prepared = prepare_faces(fit.images[np.sort(some)], cfg.input_size, cfg.illumination)
            self.batchnorm_images = torch.from_numpy(prepared).unsqueeze(1).to(device)
        if val is not None:
            prepared = prepare_faces(val.images, cfg.input_size, cfg.illumination)
            self.val_images = torch.from_numpy(prepared).unsqueeze(1).to(device)
            self.val_labels = torch.from_numpy(val.target_distributions().argmax(axis=1)).to(device)
        weights = class_weights(distributions, cfg.class_balance)
        self.weights = weights.to(device) if weights is not None else None

    @property
    def kept(self) -> nn.Module:
        """The student that is validated and written: the weight average when there is one."""
        return self.average.module if self.average is not None else self.model

    def parts(self) -> dict[str, Any]:
        """The objects a checkpoint saves and restores."""
        parts = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}
        return parts | ({"average": self.average} if self.average is not None else {})

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)

    def _batch(self, idx: np.ndarray, seed: list[int]) -> tuple[np.ndarray, Tensor, Tensor]:
        """(the augmented uint8 faces, as online teachers see them; the student's input from them as pixel/255
        (B, 1, S, S); which faces are mirrored) for the training faces `idx`."""
        rng = np.random.default_rng(seed)
        faces, mirrored = zip(*(self.augmentation(self.fit_images[i], rng) for i in idx))
        augmented = np.stack(faces)
        prepared = prepare_faces(augmented, self.cfg.input_size, self.cfg.illumination)
        x = torch.from_numpy(prepared).unsqueeze(1).to(self.device, torch.float32) / 255
        return augmented, x, torch.tensor(mirrored, dtype=torch.bool, device=self.device)

    def _batches(self, order: np.ndarray, epoch: int) -> Iterator[tuple[np.ndarray, Tensor, Tensor]]:
        """The epoch's batches, each prepared on a second thread while the one before trains."""
        size = self.cfg.batch_size
        with ThreadPoolExecutor(max_workers=1) as worker:
            pending = worker.submit(self._batch, order[:size], [self.cfg.seed, epoch, 0])
            for step in range(self.steps_per_epoch):
                batch = pending.result()
                if step + 1 < self.steps_per_epoch:
                    following = order[(step + 1) * size : (step + 2) * size]
                    pending = worker.submit(self._batch, following, [self.cfg.seed, epoch, step + 1])
                yield batch

    def train_epoch(self, epoch: int, groups: list[TeacherGroup], show_progress: bool) -> dict[str, Any]:
        """One pass over the training faces in an order fixed by seed and epoch (so a resumed run repeats it)."""
        cfg, model, steps = self.cfg, self.model, self.steps_per_epoch
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.fit_labels), generator=gen)[: steps * cfg.batch_size].numpy()
        sums = {"loss": 0.0, "hard": 0.0, "soft": 0.0, "correct": 0, "seen": 0}
        bar = _progress_bar(steps, f"epoch {epoch}/{cfg.epochs}", show_progress)
        for step, (augmented, x, flip) in enumerate(self._batches(order, epoch)):
            idx = torch.from_numpy(order[step * cfg.batch_size : (step + 1) * cfg.batch_size]).to(self.device)
            targets = batch_targets(groups, idx, flip, augmented, cfg) if groups else []
            labels = self.fit_targets[idx]
            if cfg.mixup > 0:
                rng = mixing_rng(cfg.seed, epoch, step)
                x, labels, targets = mix_batch(x, labels, targets, cfg.mixup, len(CANONICAL_LABELS), rng)
            with self._autocast():
                logits = model(normalise(x, cfg.mean, cfg.std)).float()
            loss, hard, soft = distillation_loss(
                logits + cfg.logit_adjust * self.log_prior if cfg.logit_adjust else logits,
                labels,
                targets,
                alpha=self.alpha,
                temperature=cfg.temperature,
                weights=self.weights,
                label_smoothing=cfg.label_smoothing,
            )
            optimizer_step(loss, self.optimizer, self.scaler)
            self.scheduler.step()
            if self.average is not None:
                self.average.update_parameters(model)
            sums["loss"] += loss.item() * len(idx)
            sums["hard"] += hard.item() * len(idx)
            sums["soft"] += soft.item() * len(idx)
            sums["correct"] += int((logits.argmax(1) == self.fit_labels[idx]).sum())
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
        if self.average is not None:
            # update_bn runs the student in training mode, where dropout draws from the random stream; a forked
            # stream keeps training the same with and without the average.
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices, device_type=self.device.type), torch.no_grad(), self._autocast():
                update_bn(self._normalised(self.batchnorm_images), self.average.module)
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
        """Cross-entropy, top-1, balanced accuracy and per-class recall on the validation faces, against their
        targets' most likely class (the label, without a label source)."""
        model = self.kept
        model.eval()
        predictions, losses = [], []
        with torch.no_grad(), self._autocast():
            for i, x in enumerate(self._normalised(self.val_images)):
                logits = model(x).float()
                labels = self.val_labels[i * VALIDATION_BATCH : (i + 1) * VALIDATION_BATCH]
                losses.append(F.cross_entropy(logits, labels, reduction="sum").item())
                predictions.append(logits.argmax(1))
        pred = torch.cat(predictions).cpu().numpy()
        truth = self.val_labels.cpu().numpy()
        recall = {
            CANONICAL_LABELS[c]: round(float((pred[truth == c] == c).mean()), 4)
            for c in range(len(CANONICAL_LABELS))
            if (truth == c).any()
        }
        return {
            "val_loss": sum(losses) / len(truth),
            "val_top1": float((pred == truth).mean()),
            "val_balanced": float(np.mean(list(recall.values()))),
            "val_recall": recall,
        }

    def _normalised(self, images: Tensor) -> Iterator[Tensor]:
        """Prepared uint8 faces (N, 1, S, S) in batches, normalised as the model's input."""
        for i in range(0, len(images), VALIDATION_BATCH):
            yield normalise(images[i : i + VALIDATION_BATCH].float() / 255, self.cfg.mean, self.cfg.std)


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on the terminal, None when not wanted."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
