"""Knowledge distillation from a teacher ensemble into a student, with cached teacher outputs.

Loss = alpha * CE(student, hard label) + (1 - alpha) * T^2 * KD, with KD as follows. Teachers are grouped by
the classes they know. Within a group the temperature-softened probabilities softmax(z / T) are averaged;
the student's logits are restricted to the group's classes and renormalised (softmax over that subset at T),
and the group contributes KL(teacher average || student subset), weighted by its share of the teachers. A
six-class teacher thus says nothing about the class it lacks, instead of claiming it has probability 0.

Teacher logits are computed once per (teacher file, teacher input settings, training faces) for each face
and its mirror image, and cached as .npz. When augmentation mirrors a face, the mirror's logits are the
target (with `teacher_flip_average`, both views get the average of the two: the teachers' flip-averaged
answer, the more accurate one). The other augmentations (quantize.augment: up to 10% shift, +-15% zoom, +-10
degrees, brightness and contrast; random erasing off) are mild, so the clean face's logits remain a good
target. `online_teacher` runs the teachers on every augmented batch instead (nothing cached): exact targets, for
cheap teachers only.

Validation: a stratified share of the training faces (never the test split) picks the best epoch. With
val_fraction 0 every training face is trained on and the last epoch is kept (for a final run, once the
settings are chosen). A checkpoint is written atomically after every epoch; running the same distillation
again resumes it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantize.augment import Augmentation
from quantize.datasets import DEFAULT_VAL_FRACTION, FaceSet, stratified_split
from quantize.digest import faces_fingerprint
from quantize.errors import QuantizeError
from quantize.labels import CANONICAL_LABELS
from quantize.outputs import write_atomically
from quantize.student import STUDENTS, Student, build_student, count_parameters
from quantize.teachers import Teacher

CACHE_VERSION = 1
CHECKPOINT_NAME = "distill.ckpt"
STUDENT_FORMAT = "edge-mood-student"
CLASS_BALANCE = ("none", "sqrt", "inverse")
OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class DistillConfig:
    student: str = "s"
    input_size: int = 48
    epochs: int = 40
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float | None = None  # default: 3e-3 for AdamW, 0.05 for SGD
    weight_decay: float | None = None  # default: 0.05 for AdamW, 5e-4 for SGD
    warmup_epochs: float = 1.0
    temperature: float = 4.0
    alpha: float = 0.3  # weight of the hard-label loss; 1 - alpha goes to the teachers
    label_smoothing: float = 0.0
    class_balance: str = "sqrt"  # hard-loss class weights: none, sqrt (1/sqrt(count)) or inverse (1/count)
    val_fraction: float = DEFAULT_VAL_FRACTION  # 0: no hold-out, the last epoch is kept
    patience: int = 0  # stop after this many epochs without a better validation top-1; 0 = never
    seed: int = 0
    augment: bool = True
    online_teacher: bool = False
    teacher_flip_average: bool = False  # targets: each teacher's probabilities averaged over face and mirror
    precision: str = "auto"  # autocast: bf16 where the CPU has it, fp16/bf16 on CUDA
    mean: float = 0.5
    std: float = 0.5

    def check(self) -> None:
        """Raise QuantizeError naming the first option out of range."""
        rules = [
            (self.student in STUDENTS, f"student {self.student!r} unknown; choose one of {', '.join(STUDENTS)}"),
            (self.input_size >= 32, f"input size {self.input_size} too small; use 48 or 64"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 2, "batch size must be at least 2"),
            (self.optimizer in OPTIMIZERS, f"optimizer {self.optimizer!r} unknown; use {' or '.join(OPTIMIZERS)}"),
            (self.temperature > 0, "temperature must be positive"),
            (0.0 <= self.alpha <= 1.0, f"alpha {self.alpha} must lie between 0 and 1"),
            (0.0 <= self.label_smoothing < 1.0, "label smoothing must lie in [0, 1)"),
            (
                self.class_balance in CLASS_BALANCE,
                f"class balance {self.class_balance!r} unknown; use {', '.join(CLASS_BALANCE)}",
            ),
            (0.0 <= self.val_fraction < 0.5, f"validation fraction {self.val_fraction} must lie in [0, 0.5)"),
            (
                self.patience == 0 or self.val_fraction > 0,
                "patience needs validation faces; set --val-fraction above 0 or --patience 0",
            ),
            (self.precision in PRECISIONS, f"precision {self.precision!r} unknown; use {', '.join(PRECISIONS)}"),
            (self.std > 0, "std must be positive"),
        ]
        for ok, message in rules:
            if not ok:
                raise QuantizeError(message)

    def resolved(self) -> dict[str, Any]:
        """Settings with the optimizer defaults filled in (what the card records)."""
        out = asdict(self)
        out["lr"] = self.lr if self.lr is not None else (3e-3 if self.optimizer == "adamw" else 0.05)
        out["weight_decay"] = (
            self.weight_decay if self.weight_decay is not None else (0.05 if self.optimizer == "adamw" else 5e-4)
        )
        return out


# The teachers' batch augmentation (quantize.augment), minus its mirror (done here, so the mirror's teacher
# logits can be picked) and minus random erasing (too strong a change for targets computed on the clean face).
AUGMENTATION = Augmentation(flip=False, erase_p=0.0)
FLIP_P = 0.5


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


@dataclass
class _Targets:
    """Soft targets of one group of teachers sharing a class set."""

    classes: list[int]  # canonical indices, the group's output order
    weight: float  # the group's share of the teachers
    teachers: list[Teacher]
    clean: Tensor | None = None  # (N, len(classes)) averaged probabilities at temperature T; None when online
    mirror: Tensor | None = None


# ---------------------------------------------------------------- teacher outputs


def teacher_record(teacher: Teacher, sha256: str) -> dict[str, Any]:
    """How a teacher is listed in the student checkpoint, card and report."""
    return {
        "name": teacher.name,
        "file": teacher.path.name,
        "sha256": sha256,
        "arch": teacher.arch,
        "backend": teacher.backend,
        "params": teacher.num_params,
        "labels": list(teacher.labels),
        "input": teacher.preprocessing.to_dict(),
    }


def teacher_logits(
    teacher: Teacher,
    sha256: str,
    faces: FaceSet,
    cache_dir: Path | None,
    batch_size: int = 256,
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, np.ndarray]:
    """(clean, mirror) logits of `teacher` on `faces` and on their mirror images, cached on disk."""
    key_text = json.dumps(
        [
            CACHE_VERSION,
            sha256,
            teacher.labels,
            teacher.preprocessing.to_dict(),
            teacher.backend,
            faces_fingerprint(faces.images, faces.labels),
        ]
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    cache_file = cache_dir / f"{teacher.path.stem}-{key}.npz" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        try:
            with np.load(cache_file) as z:
                clean, mirror = z["clean"], z["mirror"]
            if clean.shape == mirror.shape == (len(faces), len(teacher.labels)):
                return clean, mirror
        except (OSError, ValueError, KeyError):
            pass  # damaged cache file: compute again and overwrite it
    log(f"teacher {teacher.describe()}: computing logits for {len(faces)} faces and their mirror images")
    start = time.monotonic()
    clean = teacher.logits(faces.images, batch_size)
    mirror = teacher.logits(np.ascontiguousarray(faces.images[:, :, ::-1]), batch_size)
    log(f"teacher {teacher.name}: {time.monotonic() - start:.0f} s")
    if cache_file is not None:
        _save_npz(cache_file, clean=clean, mirror=mirror)
    return clean, mirror


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    write_atomically(path, lambda f: np.savez(f, **arrays))


def _soft_targets(
    teachers: list[Teacher],
    logits: list[tuple[np.ndarray, np.ndarray]] | None,
    temperature: float,
    flip_average: bool = False,
) -> list[_Targets]:
    """Teachers grouped by class set, with each group's averaged (clean, mirror) probabilities when cached."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, teacher in enumerate(teachers):
        groups.setdefault(tuple(teacher.label_index), []).append(i)
    targets = []
    for classes, members in groups.items():
        group = _Targets(list(classes), len(members) / len(teachers), [teachers[i] for i in members])
        if logits is not None:
            group.clean, group.mirror = (
                torch.stack(
                    [torch.softmax(torch.from_numpy(logits[i][which]).float() / temperature, dim=1) for i in members]
                ).mean(0)
                for which in (0, 1)
            )
            if flip_average:
                group.clean = group.mirror = (group.clean + group.mirror) / 2
        targets.append(group)
    return targets


def kd_loss(student_logits: Tensor, targets: list[tuple[list[int], float, Tensor]], temperature: float) -> Tensor:
    """Sum over teacher groups of weight * T^2 * KL(group probabilities || student renormalised on its classes)."""
    total = student_logits.new_zeros(())
    for classes, weight, probs in targets:
        log_q = F.log_softmax(student_logits[:, classes] / temperature, dim=1)
        total = total + weight * F.kl_div(log_q, probs, reduction="batchmean") * temperature**2
    return total


# ---------------------------------------------------------------- data and augmentation


def resize_faces(images: np.ndarray, size: int) -> np.ndarray:
    """Faces at the student's size, resized as the daemon does (INTER_AREA shrinking, INTER_LINEAR enlarging)."""
    if images.shape[1:] == (size, size):
        return images
    method = cv2.INTER_AREA if images.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, (size, size), interpolation=method) for im in images])


def class_weights(labels: np.ndarray, mode: str) -> Tensor | None:
    """Hard-loss weights per canonical class, scaled so that the average weight of a training face is 1."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=len(CANONICAL_LABELS)).astype(np.float64)
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = counts[present] ** (-0.5 if mode == "sqrt" else -1.0)
    weights *= counts.sum() / (weights * counts).sum()
    return torch.tensor(weights, dtype=torch.float32)


# ---------------------------------------------------------------- training


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if precision == "bf16" and not supported:
        raise QuantizeError("this CPU has no bfloat16 support; use --precision fp32")
    return torch.bfloat16 if supported else None


def _fingerprint(settings: dict[str, Any], teachers: list[dict[str, Any]], faces: FaceSet) -> str:
    text = json.dumps(
        [settings, [t["sha256"] for t in teachers], faces_fingerprint(faces.images, faces.labels)],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _save_atomic(obj: Any, path: Path) -> None:
    write_atomically(path, lambda f: torch.save(obj, f))


def _evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    cfg: DistillConfig,
    device: torch.device,
    dtype: torch.dtype | None,
) -> dict[str, Any]:
    model.eval()
    predictions, losses = [], []
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for i in range(0, len(images), 512):
            x = _normalise(images[i : i + 512].float() / 255, cfg)
            logits = model(x).float()
            losses.append(F.cross_entropy(logits, labels[i : i + 512], reduction="sum").item())
            predictions.append(logits.argmax(1))
    pred = torch.cat(predictions).cpu().numpy()
    truth = labels.cpu().numpy()
    recall = {
        CANONICAL_LABELS[c]: round(float((pred[truth == c] == c).mean()), 4)
        for c in range(len(CANONICAL_LABELS))
        if (truth == c).any()
    }
    return {"val_loss": sum(losses) / len(truth), "val_top1": float((pred == truth).mean()), "val_recall": recall}


def _normalise(x: Tensor, cfg: DistillConfig) -> Tensor:
    return ((x - cfg.mean) / cfg.std).contiguous(memory_format=torch.channels_last)


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
    dev = torch.device(device)
    dtype = _autocast_dtype(cfg.precision, dev)
    records = [teacher_record(t, sha) for t, sha in teachers]
    if cfg.val_fraction > 0:
        fit, val = stratified_split(train_faces, cfg.val_fraction, cfg.seed)
    else:
        fit, val = train_faces, None
    targets: list[_Targets] = []
    if teachers:
        logits = (
            None if cfg.online_teacher else [teacher_logits(t, sha, fit, cache_dir, log=log) for t, sha in teachers]
        )
        targets = _soft_targets([t for t, _ in teachers], logits, cfg.temperature, cfg.teacher_flip_average)
    alpha = cfg.alpha if teachers else 1.0

    torch.manual_seed(cfg.seed)
    model = build_student(cfg.student).to(dev).to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": settings["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=settings["lr"])
    else:
        optimizer = torch.optim.SGD(groups, lr=settings["lr"], momentum=0.9, nesterov=True)
    steps_per_epoch = max(len(fit) // cfg.batch_size, 1)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * min(s / total_steps, 1.0))),
    )
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)

    # Augmentation resizes inside its warp; without it, faces are resized once like the daemon does.
    fit_images = torch.from_numpy(fit.images if cfg.augment else resize_faces(fit.images, cfg.input_size)).to(dev)
    fit_labels = torch.from_numpy(fit.labels).to(dev)
    if val is not None:
        val_images = torch.from_numpy(resize_faces(val.images, cfg.input_size)).unsqueeze(1).to(dev)
        val_labels = torch.from_numpy(val.labels).to(dev)
    weights = class_weights(fit.labels, cfg.class_balance)
    weights = weights.to(dev) if weights is not None else None

    fingerprint = _fingerprint(settings, records, train_faces)
    ckpt_path = work_dir / CHECKPOINT_NAME if work_dir else None
    history: list[dict[str, Any]] = []
    best_state, best_epoch, best_top1, start_epoch, finished = None, 0, -1.0, 1, False
    if ckpt_path is not None and ckpt_path.is_file():
        state = _load_checkpoint(ckpt_path)
        if state is not None and state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            history, best_state = state["history"], state["best_state"]
            best_epoch, best_top1, finished = state["best_epoch"], state["best_top1"], state["finished"]
            start_epoch = state["epoch"] + 1
            best = f" (best val top-1 {best_top1:.4f} at epoch {best_epoch})" if val is not None else ""
            log(f"resuming {ckpt_path} after epoch {state['epoch']}{best}")
        else:
            log(f"{ckpt_path} belongs to other settings, data or teachers; starting afresh")

    for epoch in range(start_epoch, cfg.epochs + 1):
        if finished:
            break
        started = time.monotonic()
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(fit), generator=gen)[: steps_per_epoch * cfg.batch_size].to(dev)
        sums = {"loss": 0.0, "hard": 0.0, "soft": 0.0, "correct": 0, "seen": 0}
        bar = _progress(steps_per_epoch, f"epoch {epoch}/{cfg.epochs}", progress)
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            y = fit_labels[idx]
            if cfg.augment:
                flip = (torch.rand(len(idx), generator=gen) < FLIP_P).to(dev)
                faces = torch.where(flip.view(-1, 1, 1), fit_images[idx].flip(-1), fit_images[idx])
                x = AUGMENTATION(faces, (cfg.input_size, cfg.input_size), gen)
            else:
                flip = torch.zeros(len(idx), dtype=torch.bool, device=dev)
                x = fit_images[idx].unsqueeze(1).float() / 255
            batch_targets = _batch_targets(targets, idx, flip, x, cfg) if targets else []
            with torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = model(_normalise(x, cfg)).float()
            hard = F.cross_entropy(logits, y, weight=weights, label_smoothing=cfg.label_smoothing)
            soft = kd_loss(logits, batch_targets, cfg.temperature) if batch_targets else hard.new_zeros(())
            loss = alpha * hard + (1 - alpha) * soft
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
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
        entry = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "loss": sums["loss"] / seen,
            "hard_loss": sums["hard"] / seen,
            "soft_loss": sums["soft"] / seen,
            "train_top1": sums["correct"] / seen,
        }
        if val is not None:
            entry.update(_evaluate(model, val_images, val_labels, cfg, dev, dtype))
        entry["seconds"] = round(time.monotonic() - started, 1)
        history.append(entry)
        line = (
            f"epoch {epoch}/{cfg.epochs} {entry['seconds']:.0f}s loss {entry['loss']:.3f} "
            f"train {entry['train_top1']:.3f}"
        )
        if val is None:
            best_epoch = epoch  # the final state is kept, as the loop ends
        else:
            if entry["val_top1"] > best_top1:
                best_top1, best_epoch = entry["val_top1"], epoch
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            recall = entry["val_recall"]
            line += (
                f" val {entry['val_top1']:.4f} (recall disgust {recall.get('disgust', 0):.2f}, "
                f"fear {recall.get('fear', 0):.2f}){' best' if best_epoch == epoch else ''}"
            )
        log(line)
        finished = epoch == cfg.epochs or (cfg.patience > 0 and epoch - best_epoch >= cfg.patience)
        if ckpt_path is not None:
            _save_atomic(
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "history": history,
                    "best_state": best_state,
                    "best_epoch": best_epoch,
                    "best_top1": best_top1,
                    "finished": finished,
                },
                ckpt_path,
            )
        if finished:
            break

    best = build_student(cfg.student)
    best.load_state_dict(best_state if best_state is not None else model.state_dict())
    best.eval()
    return DistillResult(
        best,
        history,
        best_epoch,
        best_top1 if val is not None else None,
        settings,
        records,
        len(fit),
        len(val) if val is not None else 0,
    )


def _batch_targets(
    targets: list[_Targets], idx: Tensor, flip: Tensor, x: Tensor, cfg: DistillConfig
) -> list[tuple[list[int], float, Tensor]]:
    out = []
    faces = (x.squeeze(1) * 255).round().to(torch.uint8).cpu().numpy() if cfg.online_teacher else None
    for group in targets:
        if faces is not None:
            views = [faces, np.ascontiguousarray(faces[:, :, ::-1])] if cfg.teacher_flip_average else [faces]
            probs = torch.stack(
                [
                    torch.softmax(torch.from_numpy(t.logits(view)) / cfg.temperature, 1)
                    for t in group.teachers
                    for view in views
                ]
            ).mean(0)
        else:
            cpu_idx, cpu_flip = idx.cpu(), flip.cpu().view(-1, 1)
            probs = torch.where(cpu_flip, group.mirror[cpu_idx], group.clean[cpu_idx])
        out.append((group.classes, group.weight, probs.to(x.device)))
    return out


def _progress(total: int, desc: str, enabled: bool):  # -> tqdm | None
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged checkpoint only costs a fresh start
        return None


# ---------------------------------------------------------------- student files


def student_meta(result: DistillResult) -> dict[str, Any]:
    """What export and the card need to know about a distilled student."""
    settings = result.settings
    return {
        "arch": settings["student"],
        "labels": list(CANONICAL_LABELS),
        "input_size": settings["input_size"],
        "channels": 1,
        "mean": [settings["mean"]],
        "std": [settings["std"]],
        "params": count_parameters(result.model),
    }


def save_student(path: Path, result: DistillResult, dataset: dict[str, Any]) -> None:
    """The trained student with everything export and the card need (written atomically)."""
    _save_atomic(
        {
            "format": STUDENT_FORMAT,
            **student_meta(result),
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
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise QuantizeError(
            f"student checkpoint {path} is unreadable ({str(exc).splitlines()[0][:120]}); distill it again"
        ) from None
    if not isinstance(data, dict) or data.get("format") != STUDENT_FORMAT:
        raise QuantizeError(f"{path} is not a student checkpoint written by `quantize distill`")
    model = build_student(data["arch"], len(data["labels"]), data["channels"])
    model.load_state_dict(data["state_dict"])
    return model.eval(), data
