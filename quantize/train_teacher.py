"""`quantize train-teacher`: train a torchvision-layout ResNet/DenseNet from scratch on a face-expression data set.

Writes, next to `--out model.pt`:
  model.pt          best-on-validation weights as a bare torchvision-layout state_dict (what users load)
  model.json        teacher spec (arch, labels, input, accuracy, epochs, wall time), read by load_teacher
  model.log         one line per epoch
  model.resume.pt   latest epoch's full training state; rerunning the same command resumes from it
Validation is the data set's test split (PublicTest for FER2013) scored with flip-TTA.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from quantize.archs import ARCH_NAMES, build_arch, head_attr
from quantize.augment import Augmentation
from quantize.datasets import FaceSet, load_dataset, stratified_split
from quantize.errors import QuantizeError
from quantize.labels import CANONICAL_LABELS
from quantize.outputs import write_atomically
from quantize.preprocess import Preprocessing, parse_normalisation

STATE_VERSION = 1
# Settings that shape the run; resuming with any of them changed would silently train something else.
RESUME_KEYS = (
    "arch",
    "head",
    "size",
    "channels",
    "mean",
    "std",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "warmup_epochs",
    "label_smoothing",
    "seed",
    "limit",
    "val_fraction",
)


@dataclass
class TrainConfig:
    arch: str = "resnet18"
    data: str = ""
    out: str = ""
    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None  # None: 0.1 * batch/256 for SGD, 1e-3 for AdamW
    optimizer: str = "sgd"
    weight_decay: float | None = None  # None: 5e-4 for SGD, 0.05 for AdamW
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    size: int = 96
    channels: int = 3
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    head: str = "linear"
    val_split: str = "test"
    val_fraction: float | None = None  # carve validation out of train instead of using the test split
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CPU and on GPUs that have it, else fp16; or fp32
    threads: int | None = None
    limit: int | None = None  # train on a stratified subset of this many faces (smoke runs)
    skip_corrupt: bool = False
    stop_after_epochs: int | None = None  # end this run early (resume later): time-boxed sessions
    time_budget_min: float | None = None  # end this run before an epoch that would not finish in time

    def resolved(self) -> TrainConfig:
        """Copy with the automatic choices filled in."""
        cfg = TrainConfig(**asdict(self))
        cfg.arch = cfg.arch.lower()
        if cfg.arch not in ARCH_NAMES:
            raise QuantizeError(f"unknown architecture {cfg.arch!r}; known: {', '.join(ARCH_NAMES)}")
        if cfg.optimizer not in ("sgd", "adamw"):
            raise QuantizeError(f"optimizer {cfg.optimizer!r} unknown; use sgd or adamw")
        if cfg.lr is None:
            cfg.lr = 0.1 * cfg.batch_size / 256 if cfg.optimizer == "sgd" else 1e-3
        if cfg.weight_decay is None:
            cfg.weight_decay = 5e-4 if cfg.optimizer == "sgd" else 0.05
        if cfg.epochs < 1 or cfg.batch_size < 2:
            raise QuantizeError("need --epochs >= 1 and --batch-size >= 2")
        if cfg.device == "auto":
            cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
        elif cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise QuantizeError(f"--device {cfg.device} asked for but no CUDA GPU is usable here; use --device cpu")
        if cfg.precision == "auto":
            on_gpu = cfg.device.startswith("cuda")
            cfg.precision = "fp16" if on_gpu and not torch.cuda.is_bf16_supported() else "bf16"
        if cfg.precision not in ("bf16", "fp16", "fp32"):
            raise QuantizeError(f"precision {cfg.precision!r} unknown; use auto, bf16, fp16 or fp32")
        return cfg

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(size=(self.size, self.size), channels=self.channels, mean=self.mean, std=self.std)


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
    out = Path(cfg.out).expanduser()
    if out.suffix not in (".pt", ".pth"):
        raise QuantizeError(f"--out {out} must end in .pt or .pth (a bare state_dict is written there)")
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = _paths(out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    train_set, val_set = _load_data(cfg)
    pre = cfg.preprocessing()

    torch.manual_seed(cfg.seed)
    model = build_arch(cfg.arch, len(CANONICAL_LABELS), cfg.head, in_channels=cfg.channels).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
    state = _resume_state(paths["resume"], cfg) if resume and paths["resume"].exists() else None
    start_epoch, best_acc, best_epoch, history, wall_before = 0, -1.0, 0, [], 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start_epoch, best_acc, best_epoch = state["epoch"], state["best_acc"], state["best_epoch"]
        history, wall_before = state["history"], state["wall_s"]
        print(
            f"resuming {paths['resume'].name} after epoch {start_epoch}/{cfg.epochs} "
            f"(best {best_acc:.4f} at epoch {best_epoch})"
        )
        if paths["log"].exists():  # drop lines of an epoch that was cut short after logging
            kept = paths["log"].read_text(encoding="utf-8").splitlines()[:start_epoch]
            paths["log"].write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    elif paths["log"].exists():
        paths["log"].unlink()  # a fresh run starts a fresh log

    images = torch.from_numpy(train_set.images).to(device)
    labels = torch.from_numpy(train_set.labels).to(device)
    steps = len(train_set) // cfg.batch_size
    if steps == 0:
        raise QuantizeError(
            f"{len(train_set)} training faces is less than one batch of {cfg.batch_size}; lower --batch-size"
        )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    augment = Augmentation()
    autocast = make_autocast(cfg)
    size = (cfg.size, cfg.size)

    run_started, wall, done = time.monotonic(), wall_before, start_epoch
    if start_epoch >= cfg.epochs:
        print(f"{paths['resume'].name} already finished all {cfg.epochs} epochs; pass --no-resume to train again")
    for epoch in range(start_epoch, cfg.epochs):
        started = time.monotonic()
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # epoch-exact resume
        order = torch.randperm(len(train_set), generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
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
                group["lr"] = _lr_at(cfg, epoch * steps + step, steps)
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = pre.normalise(augment(images[idx], size, gen)).contiguous(memory_format=torch.channels_last)
            loss, logits = train_step(model, x, labels[idx], optimizer, scaler, criterion, autocast)
            loss_sum += loss
            correct += (logits.argmax(1) == labels[idx]).sum()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.3f}")
        bar.close()
        val_acc = evaluate(model, val_set, pre, device, autocast=make_autocast(cfg, for_eval=True))
        seconds = time.monotonic() - started
        entry = {
            "epoch": epoch + 1,
            "seconds": round(seconds, 1),
            "loss": round(loss_sum.item() / steps, 4),
            "train_acc": round(correct.item() / (steps * cfg.batch_size), 4),
            "val_acc": round(val_acc, 4),
            "lr": round(_lr_at(cfg, (epoch + 1) * steps - 1, steps), 6),
        }
        history.append(entry)
        line = (
            f"epoch {epoch + 1}/{cfg.epochs} {seconds:.0f}s loss {entry['loss']:.3f} "
            f"train {entry['train_acc']:.4f} {_val_name(cfg, val_set)}(flip-TTA) {val_acc:.4f}"
        )
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch + 1
            _atomic_save(_bare_state_dict(model), paths["weights"])
            line += " *best"
        print(line, flush=True)
        with paths["log"].open("a", encoding="utf-8") as log:
            log.write(line + "\n")
        wall, done = wall_before + time.monotonic() - run_started, epoch + 1
        _atomic_save(
            {
                "version": STATE_VERSION,
                "config": _resume_config(cfg),
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
                "best_acc": best_acc,
                "best_epoch": best_epoch,
                "history": history,
                "wall_s": wall,
            },
            paths["resume"],
        )
        _write_spec(paths["spec"], cfg, train_set, val_set, best_acc, best_epoch, done, wall)
        if done < cfg.epochs and _should_stop(cfg, done - start_epoch, time.monotonic() - run_started, seconds):
            print(f"stopping after epoch {done}/{cfg.epochs} as asked; rerun the same command to resume", flush=True)
            break

    return TrainResult(paths["weights"], paths["spec"], paths["log"], best_acc, best_epoch, done, wall)


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
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


def evaluate(
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


# ---------------------------------------------------------------- pieces


def _should_stop(cfg: TrainConfig, epochs_this_run: int, elapsed_s: float, last_epoch_s: float) -> bool:
    if cfg.stop_after_epochs is not None and epochs_this_run >= cfg.stop_after_epochs:
        return True
    return cfg.time_budget_min is not None and elapsed_s + last_epoch_s > cfg.time_budget_min * 60.0


def _paths(out: Path) -> dict[str, Path]:
    return {
        "weights": out,
        "spec": out.with_suffix(".json"),
        "log": out.with_suffix(".log"),
        "resume": out.with_name(out.stem + ".resume.pt"),
    }


def _load_data(cfg: TrainConfig) -> tuple[FaceSet, FaceSet]:
    data = Path(cfg.data).expanduser()
    train = load_dataset(data, "train", skip_corrupt=cfg.skip_corrupt)
    if cfg.val_fraction:
        train, val = stratified_split(train, cfg.val_fraction, cfg.seed)
    else:
        try:
            val = load_dataset(data, cfg.val_split, skip_corrupt=cfg.skip_corrupt)
        except QuantizeError as exc:
            raise QuantizeError(
                f"{exc} (for validation; or pass --val-fraction 0.1 to hold out part of train)"
            ) from None
    if cfg.limit and cfg.limit < len(train):
        full, split = len(train), train.split
        train, _ = stratified_split(train, 1.0 - cfg.limit / len(train), cfg.seed)
        train.split = f"{split} (stratified {len(train)} of {full})"
    return train, val


def _val_name(cfg: TrainConfig, val: FaceSet) -> str:
    if cfg.val_fraction:
        return "val"
    return "PublicTest" if str(val.source).endswith((".csv", ".csv.gz")) and cfg.val_split == "test" else cfg.val_split


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and bias parameters: decaying them only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay to zero, per optimizer step."""
    assert cfg.lr is not None
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    total = cfg.epochs * steps_per_epoch
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_autocast(cfg: TrainConfig, for_eval: bool = False) -> Any:
    device_type = "cuda" if cfg.device.startswith("cuda") else "cpu"
    # Validation on CPU runs in float32, so the accuracy written into the spec is what fp32 inference and the
    # ONNX export reproduce.
    enabled = cfg.precision != "fp32" and not (for_eval and device_type == "cpu")
    dtype = torch.float16 if cfg.precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)


def _bare_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """torchvision-layout state_dict in plain contiguous CPU tensors (what users load)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def _atomic_save(obj: Any, path: Path) -> None:
    write_atomically(path, lambda f: torch.save(obj, f))


def _resume_config(cfg: TrainConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in RESUME_KEYS}


def _resume_state(path: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say so instead of a traceback
        raise QuantizeError(
            f"cannot resume from {path} ({str(exc).splitlines()[0][:120]}); delete it or pass --no-resume"
        ) from None
    if state.get("version") != STATE_VERSION:
        raise QuantizeError(f"{path} is from another version of the tool; delete it or pass --no-resume")
    saved, now = state["config"], _resume_config(cfg)
    changed = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in RESUME_KEYS if saved.get(k) != now[k]]
    if changed:
        raise QuantizeError(
            f"{path.name} was started with other settings ({'; '.join(changed[:4])}); rerun with "
            "the same options, pass --no-resume to start over, or use another --out"
        )
    return state


def _write_spec(
    path: Path,
    cfg: TrainConfig,
    train: FaceSet,
    val: FaceSet,
    best_acc: float,
    best_epoch: int,
    epochs_done: int,
    wall_s: float,
) -> None:
    pre = cfg.preprocessing()
    spec = {
        "arch": cfg.arch,
        "layout": "torchvision",
        "labels": list(CANONICAL_LABELS),
        "head": cfg.head,
        "classifier": f"{head_attr(cfg.arch)} = {cfg.head}",
        "input": {**pre.to_dict(), "from": "48x48 grey face replicated to the input channels, bilinear resize"},
        "trained_on": f"{Path(train.source).name} {train.split} ({len(train)} faces)",
        "validation": f"{Path(val.source).name} {val.split} ({len(val)} faces), flip-TTA",
        "val_top1_fliptta": round(best_acc, 4),
        "epoch": best_epoch,
        "epochs_done": epochs_done,
        "epochs_planned": cfg.epochs,
        "wall_minutes": round(wall_s / 60.0, 1),
        "train": {
            "optimizer": cfg.optimizer,
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "batch_size": cfg.batch_size,
            "label_smoothing": cfg.label_smoothing,
            "seed": cfg.seed,
            "precision": cfg.precision,
            "device": cfg.device,
        },
    }
    if _val_name(cfg, val) == "PublicTest":
        spec["publictest_top1_fliptta"] = spec["val_top1_fliptta"]
    write_atomically(path, lambda f: f.write((json.dumps(spec, indent=1) + "\n").encode("utf-8")))


# ---------------------------------------------------------------- command line


def add_train_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `quantize train-teacher`."""
    d = TrainConfig()
    parser.add_argument("--data", required=True, help="FER2013 CSV (.csv/.csv.gz) or folder with train/ and test/")
    parser.add_argument("--out", required=True, help="weights file to write, e.g. teachers/resnet34_fer.pt")
    parser.add_argument("--arch", default=d.arch, choices=ARCH_NAMES, help="network (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="default %(default)s")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    parser.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default 0.1*batch/256 for sgd, 1e-3 for adamw)"
    )
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default=d.optimizer, help="default %(default)s")
    parser.add_argument("--weight-decay", type=float, default=None, help="default 5e-4 (sgd) or 0.05 (adamw)")
    parser.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="default %(default)s")
    parser.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="default %(default)s")
    parser.add_argument(
        "--size", type=int, default=d.size, help="input side in pixels, faces are resized from 48 (default %(default)s)"
    )
    parser.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=d.channels,
        help="3 = grey replicated, torchvision convention (default %(default)s)",
    )
    parser.add_argument("--mean", default="imagenet", help="imagenet, half, none or numbers a/b/c")
    parser.add_argument("--std", default=None, help="like --mean (default: the --mean preset's std)")
    parser.add_argument("--head", default=d.head, help="classifier head, e.g. linear or dropout:0.3,linear")
    parser.add_argument(
        "--val-split",
        default=d.val_split,
        help="split used to pick the best epoch (default %(default)s = PublicTest for FER2013)",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=None, help="hold out this fraction of train for validation instead"
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, help="auto, cpu or cuda (default %(default)s)")
    parser.add_argument(
        "--precision",
        default=d.precision,
        choices=("auto", "bf16", "fp16", "fp32"),
        help="autocast precision (default: bf16, fp16 on GPUs without bf16)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--limit", type=int, default=None, help="train on this many faces only (smoke runs)")
    parser.add_argument("--skip-corrupt", action="store_true", help="leave out unreadable images instead of failing")
    parser.add_argument(
        "--stop-after-epochs",
        type=int,
        default=None,
        help="end this run after N epochs; rerun the same command to continue",
    )
    parser.add_argument(
        "--time-budget-min",
        type=float,
        default=None,
        help="end this run before an epoch that would overrun this many minutes; rerun to continue",
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="start over even if <out>.resume.pt exists from an earlier run"
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    std_source = (
        args.std if args.std is not None else (args.mean if args.mean in ("imagenet", "half", "none") else "none")
    )
    cfg = TrainConfig(
        arch=args.arch,
        data=str(args.data),
        out=str(args.out),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        size=args.size,
        channels=args.channels,
        mean=parse_normalisation(args.mean, 0),
        std=parse_normalisation(std_source, 1),
        head=args.head,
        val_split=args.val_split,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        limit=args.limit,
        skip_corrupt=args.skip_corrupt,
        stop_after_epochs=args.stop_after_epochs,
        time_budget_min=args.time_budget_min,
    )
    return cfg


def run_train_teacher(args: argparse.Namespace) -> int:
    """Entry point of the subcommand; returns the exit status."""
    cfg = config_from_args(args)
    result = train_config(cfg, resume=not args.no_resume)
    print(
        f"best {result.best_accuracy:.4f} at epoch {result.best_epoch} of {result.epochs_done} done "
        f"({result.wall_s / 60:.1f} min): {result.weights} + {result.spec.name}"
    )
    return 0
