"""The settings of one distillation (`quantize distill` and `quantize build`), their checks and defaults."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from edge.contract import ILLUMINATIONS
from quantize.datasets import DEFAULT_VAL_FRACTION
from quantize.errors import QuantizeError
from quantize.student import STUDENTS
from quantize.student_augment import AUGMENT_LEVELS
from quantize.training import OPTIMIZERS

CLASS_BALANCE = ("none", "sqrt", "inverse")
# The student's autocast during training (the teachers' precision is a separate option).
AUTOCAST_PRECISIONS = ("auto", "bf16", "fp32")


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
    augment: str = "basic"  # quantize.student_augment level: none, basic or camera
    illumination: str = "none"  # grey-level normalisation of every face, written into the card for the daemon
    # Logit adjustment (Menon et al. 2021): the loss sees logits + tau * log(class prior of the targets), so the
    # logits the model outputs are those of balanced classes; 0 trains on the logits as they are.
    logit_adjust: float = 0.0
    # Weight averaging: the kept student is an exponential moving average of the trained one's weights, updated
    # after every step with this decay (its BatchNorm statistics measured afresh); 0 keeps the trained weights.
    ema_decay: float = 0.0
    # Mixup: each batch's faces and targets are blended pairwise, the weight drawn from Beta(mixup, mixup);
    # 0 trains on the faces as they are.
    mixup: float = 0.0
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
            (
                self.lr is None or 0 < self.lr < math.inf,
                f"--lr {self.lr} must be a positive number (default 3e-3 for AdamW, 0.05 for SGD)",
            ),
            (
                self.weight_decay is None or 0 <= self.weight_decay < math.inf,
                f"--weight-decay {self.weight_decay} must be 0 or more (default 0.05 for AdamW, 5e-4 for SGD)",
            ),
            (self.seed >= 0, f"--seed {self.seed} must be 0 or more"),
            (0 < self.temperature <= 100, f"--temperature {self.temperature} must lie in (0, 100]; 4 is usual"),
            (self.patience >= 0, f"--patience {self.patience} must be 0 (off) or more"),
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
            (
                self.precision in AUTOCAST_PRECISIONS,
                f"precision {self.precision!r} unknown; use {', '.join(AUTOCAST_PRECISIONS)}",
            ),
            (self.std > 0, "std must be positive"),
            (self.augment in AUGMENT_LEVELS, f"augment {self.augment!r} unknown; use {', '.join(AUGMENT_LEVELS)}"),
            (
                self.illumination in ILLUMINATIONS,
                f"illumination {self.illumination!r} unknown; use {', '.join(ILLUMINATIONS)}",
            ),
            (0.0 <= self.logit_adjust <= 2.0, f"logit adjustment {self.logit_adjust} must lie in [0, 2]; 1 is usual"),
            (0.0 <= self.ema_decay < 1.0, f"EMA decay {self.ema_decay} must lie in [0, 1); 0.999 is usual, 0 is off"),
            (0.0 <= self.mixup <= 10.0, f"mixup {self.mixup} must lie in [0, 10]; 0.2 is usual, 0 is off"),
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


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The student's autocast type for a precision setting on `device`; None trains in float32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if precision == "bf16" and not supported:
        raise QuantizeError("this CPU has no bfloat16 support; use --precision fp32")
    return torch.bfloat16 if supported else None
