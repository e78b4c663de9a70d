"""The settings of one `quantize train-teacher` run, with its automatic choices resolved."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from edge.contract import ILLUMINATIONS
from quantize.archs import ARCH_NAMES
from quantize.errors import QuantizeError
from quantize.teacher_input import Preprocessing
from quantize.training import OPTIMIZERS, choose_device

# Autocast while training a teacher; "auto" is bf16, or fp16 on a GPU without bf16.
TEACHER_AUTOCAST = ("auto", "bf16", "fp16", "fp32")


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
    # Start from these trained weights (a torchvision-layout state_dict of the same network): fine-tuning.
    init: str | None = None
    # Faces and labels as `quantize build` gives them to a student (quantize.training_data), so that a teacher can
    # learn the same aligned, lit faces and vote targets as the student it will teach.
    votes: str | None = None
    votes_weight: float = 1.0
    align: bool = False
    yunet: str | None = None
    illumination: str = "none"
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
        if cfg.optimizer not in OPTIMIZERS:
            raise QuantizeError(f"optimizer {cfg.optimizer!r} unknown; use sgd or adamw")
        if cfg.lr is None:
            cfg.lr = 0.1 * cfg.batch_size / 256 if cfg.optimizer == "sgd" else 1e-3
        if cfg.weight_decay is None:
            cfg.weight_decay = 5e-4 if cfg.optimizer == "sgd" else 0.05
        if cfg.epochs < 1 or cfg.batch_size < 2:
            raise QuantizeError("need --epochs >= 1 and --batch-size >= 2")
        if not 0 < cfg.lr < math.inf:
            raise QuantizeError(
                f"--lr {cfg.lr} must be a positive number (default 0.1*batch/256 for sgd, 1e-3 for adamw)"
            )
        if not 0 <= cfg.weight_decay < math.inf:
            raise QuantizeError(f"--weight-decay {cfg.weight_decay} must be 0 or more")
        if cfg.seed < 0:
            raise QuantizeError(f"--seed {cfg.seed} must be 0 or more")
        if cfg.illumination not in ILLUMINATIONS:
            raise QuantizeError(f"--illumination {cfg.illumination!r} unknown; use one of {', '.join(ILLUMINATIONS)}")
        cfg.device = choose_device(cfg.device)
        if cfg.precision == "auto":
            on_gpu = cfg.device.startswith("cuda")
            cfg.precision = "fp16" if on_gpu and not torch.cuda.is_bf16_supported() else "bf16"
        if cfg.precision not in ("bf16", "fp16", "fp32"):
            raise QuantizeError(f"precision {cfg.precision!r} unknown; use auto, bf16, fp16 or fp32")
        return cfg

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            size=(self.size, self.size),
            channels=self.channels,
            mean=self.mean,
            std=self.std,
            illumination=self.illumination,
        )


def make_autocast(cfg: TrainConfig, for_eval: bool = False) -> Any:
    """The autocast context of a resolved config, for training or (`for_eval`) validation."""
    device_type = "cuda" if cfg.device.startswith("cuda") else "cpu"
    # Validation on CPU runs in float32, so the accuracy written into the spec is what fp32 inference and the
    # ONNX export reproduce.
    enabled = cfg.precision != "fp32" and not (for_eval and device_type == "cpu")
    dtype = torch.float16 if cfg.precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)
