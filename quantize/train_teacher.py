"""`quantize train-teacher`: train a torchvision-layout ResNet/DenseNet on a face-expression data set, from scratch
or (`--init`) from trained weights.

The faces and targets can be those `quantize build` gives a student (quantize.training_data): aligned by their
landmarks, grey levels normalised, FER+ votes mixed into the labels; the spec records the alignment template and
the normalisation, so that distillation shows the teacher its faces framed and lit as it learnt them.
The run keeps its weights, spec, log and resume state beside `--out` (quantize.teacher_run_files); running the
same command again resumes it. Validation is the data set's test split (PublicTest for FER2013) scored with
flip-TTA, unless --val-fraction holds out part of the training split instead.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from edge.contract import CANONICAL_LABELS
from quantize.archs import build_arch, load_weights, unwrap_checkpoint
from quantize.datasets import FaceSet, stratified_split
from quantize.errors import QuantizeError
from quantize.teacher_augment import Augmentation
from quantize.teacher_config import TrainConfig, make_autocast
from quantize.teacher_formats import read_checkpoint
from quantize.teacher_input import Preprocessing
from quantize.teacher_run_files import RunFiles
from quantize.training import make_optimizer, optimizer_step, set_threads, to_memory_format, warmup_cosine
from quantize.training_data import FaceOptions, default_cache_dir, load_training_data


@dataclass
class TrainResult:
    weights: Path
    spec: Path
    log: Path
    best_accuracy: float
    best_epoch: int
    epochs_done: int
    wall_s: float


def train_teacher(
    arch: str,
    data_path: Path | str,
    out_path: Path | str,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float | None = None,
    size: int = 96,
    channels: int = 3,
    seed: int = 0,
    device: str = "auto",
    resume: bool = True,
    **options: Any,
) -> TrainResult:
    """Train (or resume) a teacher; `options` are the other TrainConfig fields (optimizer, head, precision, ...)."""
    config = TrainConfig(
        arch=arch,
        data=str(data_path),
        out=str(out_path),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        size=size,
        channels=channels,
        seed=seed,
        device=device,
        **options,
    )
    return train_config(config, resume=resume)


def train_config(config: TrainConfig, resume: bool = True) -> TrainResult:
    """Train (or resume) per `config`; returns where the best weights and their spec went."""
    cfg = config.resolved()
    set_threads(cfg.threads)
    lr, weight_decay = cfg.lr, cfg.weight_decay
    assert lr is not None and weight_decay is not None, "resolved() fills them in"
    out = Path(cfg.out).expanduser()
    if out.suffix not in (".pt", ".pth"):
        raise QuantizeError(f"--out {out} must end in .pt or .pth (a bare state_dict is written there)")
    out.parent.mkdir(parents=True, exist_ok=True)
    files = RunFiles.beside(out)
    device = torch.device(cfg.device)
    # Settled before the data, whose landmarks may take minutes to find: whether the run resumes (with the same
    # settings) and, if it does not, whether --init's weights fit.
    state = files.load_state(cfg) if resume and files.resume.exists() else None
    torch.manual_seed(cfg.seed)
    model = build_arch(cfg.arch, len(CANONICAL_LABELS), cfg.head, in_channels=cfg.channels)
    if cfg.init and state is None:
        _start_from(model, cfg)
    model = model.to(device)
    train_set, val_set, faces_record = _load_data(cfg)
    pre = cfg.preprocessing()

    model = to_memory_format(model, torch.channels_last)
    optimizer = make_optimizer(model, cfg.optimizer, lr, weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
    start_epoch, best_acc, best_epoch, history, wall_before = 0, -1.0, 0, [], 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start_epoch, best_acc, best_epoch = state["epoch"], state["best_acc"], state["best_epoch"]
        history, wall_before = state["history"], state["wall_s"]
        print(
            f"resuming {files.resume.name} after epoch {start_epoch}/{cfg.epochs} "
            f"(best {best_acc:.4f} at epoch {best_epoch})"
        )
    files.restart_log(epochs_kept=start_epoch)

    images = torch.from_numpy(train_set.images).to(device)
    targets = torch.from_numpy(train_set.target_distributions()).to(device)
    steps = len(train_set) // cfg.batch_size
    if steps == 0:
        raise QuantizeError(
            f"{len(train_set)} training faces is less than one batch of {cfg.batch_size}; lower --batch-size"
        )

    run_started, wall, done = time.monotonic(), wall_before, start_epoch
    if start_epoch >= cfg.epochs:
        print(f"{files.resume.name} already finished all {cfg.epochs} epochs; pass --no-resume to train again")
    for epoch in range(start_epoch, cfg.epochs):
        started = time.monotonic()
        loss, train_acc = _train_epoch(model, images, targets, optimizer, scaler, cfg, epoch, lr)
        if not math.isfinite(loss):  # stop before this epoch's weights are saved over the last good ones
            raise QuantizeError(f"training diverged in epoch {epoch + 1} (loss {loss}); lower --lr (this run: {lr:g})")
        val_acc = validation_top1(model, val_set, pre, device, autocast=make_autocast(cfg, for_eval=True))
        seconds = time.monotonic() - started
        entry = {
            "epoch": epoch + 1,
            "seconds": round(seconds, 1),
            "loss": round(loss, 4),
            "train_acc": round(train_acc, 4),
            "val_acc": round(val_acc, 4),
            "lr": round(_lr_at(cfg, lr, (epoch + 1) * steps - 1, steps), 6),
        }
        history.append(entry)
        line = (
            f"epoch {epoch + 1}/{cfg.epochs} {seconds:.0f}s loss {entry['loss']:.3f} "
            f"train {entry['train_acc']:.4f} {_val_name(cfg, val_set)}(flip-TTA) {val_acc:.4f}"
        )
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch + 1
            files.save_weights(model)
            line += " *best"
        print(line, flush=True)
        files.append_log(line)
        wall, done = wall_before + time.monotonic() - run_started, epoch + 1
        files.save_state(
            cfg,
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
                "best_acc": best_acc,
                "best_epoch": best_epoch,
                "history": history,
                "wall_s": wall,
            },
        )
        files.write_spec(
            cfg, train_set, val_set, faces_record, _val_name(cfg, val_set), best_acc, best_epoch, done, wall
        )
        if done < cfg.epochs and _should_stop(cfg, done - start_epoch, time.monotonic() - run_started, seconds):
            print(f"stopping after epoch {done}/{cfg.epochs} as asked; rerun the same command to resume", flush=True)
            break

    return TrainResult(files.weights, files.spec, files.log, best_acc, best_epoch, done, wall)


def _lr_at(cfg: TrainConfig, peak: float, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay to zero, per optimizer step."""
    warmup, total = int(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch
    return warmup_cosine(step, warmup, total, peak=peak, decay_after_warmup=True)


def _train_epoch(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    epoch: int,
    lr: float,
) -> tuple[float, float]:
    """One pass over the faces in an order fixed by seed and epoch, so that a resumed run repeats it exactly;
    returns (mean loss, training top-1 against each face's most likely target)."""
    steps = len(targets) // cfg.batch_size
    pre, autocast = cfg.preprocessing(), make_autocast(cfg)
    # Soft targets (votes) and hard ones (one-hot rows) alike.
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(len(targets), generator=gen).to(images.device)
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    # Progress bar on a terminal only; a redirected log gets the one line per epoch.
    bar = tqdm(
        range(steps),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        leave=False,
        dynamic_ncols=True,
        disable=None,
        mininterval=2.0,
    )
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, lr, epoch * steps + step, steps)
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x = _augmented_batch(images[idx], pre, gen).contiguous(memory_format=torch.channels_last)
        loss, logits = train_step(model, x, targets[idx], optimizer, scaler, criterion, autocast)
        loss_sum += loss
        correct += (logits.argmax(1) == targets[idx].argmax(1)).sum()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.3f}")
    bar.close()
    return loss_sum.item() / steps, correct.item() / (steps * cfg.batch_size)


def _augmented_batch(faces_u8: torch.Tensor, pre: Preprocessing, gen: torch.Generator) -> torch.Tensor:
    """The network's input for a batch of uint8 faces (B, h, w), varied by the teachers' augmentation.

    Without grey-level normalisation the warp resizes to the input size in the same step. With it, the faces are
    varied at their own size and normalised before the resize, as distillation and the daemon normalise a face
    (quantize.teacher_input): what a change of light leaves after normalisation is what the network learns.
    """
    augment = Augmentation()
    if pre.illumination == "none":
        return pre.normalise(augment(faces_u8, pre.size, gen))
    varied = augment(faces_u8, (faces_u8.shape[1], faces_u8.shape[2]), gen)
    return pre.apply((varied[:, 0] * 255.0).round().to(torch.uint8), faces_u8.device)


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    criterion: nn.Module,
    autocast: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a prepared batch; returns (loss, logits), both detached."""
    with autocast:
        logits = model(x)
    loss = criterion(logits.float(), y)
    optimizer_step(loss, optimizer, scaler)
    return loss.detach(), logits.detach()


def validation_top1(
    model: nn.Module,
    faces: FaceSet,
    pre: Preprocessing,
    device: torch.device,
    *,
    autocast: Any = None,
    batch_size: int = 256,
    flip_tta: bool = True,
) -> float:
    """Top-1 accuracy of `model` on `faces` (eval mode, optionally averaging each face with its mirror)."""
    model.eval()
    correct = 0
    context = autocast if autocast is not None else torch.autocast(device.type, enabled=False)
    with torch.inference_mode():
        for start in range(0, len(faces), batch_size):
            batch = faces.images[start : start + batch_size]
            x = pre.apply(batch, device).contiguous(memory_format=torch.channels_last)
            with context:
                scores = model(x).float()
                if flip_tta:
                    scores = scores + model(x.flip(3)).float()
            correct += int((scores.argmax(1).cpu().numpy() == faces.labels[start : start + batch_size]).sum())
    return correct / len(faces)


def _should_stop(cfg: TrainConfig, epochs_this_run: int, elapsed_s: float, last_epoch_s: float) -> bool:
    if cfg.stop_after_epochs is not None and epochs_this_run >= cfg.stop_after_epochs:
        return True
    return cfg.time_budget_min is not None and elapsed_s + last_epoch_s > cfg.time_budget_min * 60.0


def _load_data(cfg: TrainConfig) -> tuple[FaceSet, FaceSet, dict[str, Any]]:
    """(training faces, validation faces, the spec's record of labels and alignment), framed and with targets as
    the face options ask: what `quantize build` would give a student (quantize.training_data)."""
    data = Path(cfg.data).expanduser()
    options = FaceOptions(
        votes=Path(cfg.votes).expanduser() if cfg.votes else None,
        votes_weight=cfg.votes_weight,
        align=cfg.align,
        yunet=Path(cfg.yunet).expanduser() if cfg.yunet else None,
    )
    split = None if cfg.val_fraction else cfg.val_split
    hint = "for validation; or pass --val-fraction 0.1 to hold out part of train"
    loaded = load_training_data(
        data, split, options, default_cache_dir(), print, skip_corrupt=cfg.skip_corrupt, eval_hint=hint
    )
    train, val = loaded.train, loaded.eval
    if cfg.val_fraction:
        train, val = stratified_split(train, cfg.val_fraction, cfg.seed)
    assert val is not None, "a validation split was loaded or carved out"
    if cfg.limit and cfg.limit < len(train):
        full, split_name = len(train), train.split
        train, _ = stratified_split(train, 1.0 - cfg.limit / len(train), cfg.seed)
        train.split = f"{split_name} (stratified {len(train)} of {full})"
    return train, val, loaded.faces_record()


def _start_from(model: nn.Module, cfg: TrainConfig) -> None:
    """Load --init's weights into the freshly built network; one line naming the file and what does not fit."""
    assert cfg.init is not None
    path = Path(cfg.init).expanduser()
    where = f"--init {path}"
    if not path.is_file():
        raise QuantizeError(f"{where} not found; give the weights (.pt state_dict) of a trained {cfg.arch}")
    # Their errors name the file already; only a network that does not fit gets the options to check.
    weights = unwrap_checkpoint(read_checkpoint(path, where, trust_option=None))
    try:
        load_weights(model, weights, cfg.arch)
    except QuantizeError as exc:
        raise QuantizeError(
            f"{where}: {exc} (--arch {cfg.arch}, --head {cfg.head}, --channels {cfg.channels} must be the "
            "network the weights were trained as)"
        ) from None
    print(f"starting from {path.name}")


def _val_name(cfg: TrainConfig, val: FaceSet) -> str:
    if cfg.val_fraction:
        return "val"
    return "PublicTest" if str(val.source).endswith((".csv", ".csv.gz")) and cfg.val_split == "test" else cfg.val_split
