"""Training pieces shared by teacher training (train_teacher) and distillation (distill): the device, the
optimizer with its no-decay parameter groups, the learning-rate schedule, the optimizer step, the atomic
checkpoint save and the weights' memory format. The teachers' loader uses the device choice too."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import torch
from torch import nn

from quantize.errors import QuantizeError
from quantize.outputs import write_atomically

OPTIMIZERS = ("adamw", "sgd")
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def choose_device(requested: str) -> str:
    """The device to run on: for "auto" cuda when torch sees a GPU, else cpu; cuda without a GPU is a QuantizeError."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise QuantizeError(f"--device {requested} asked for but torch sees no CUDA GPU; use --device cpu")
    return requested


def set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads in torch (None: all cores); fewer than 1 is a QuantizeError."""
    if threads is None:
        return
    if threads < 1:
        raise QuantizeError(f"--threads {threads} must be at least 1 (default: all cores)")
    torch.set_num_threads(threads)


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum 0.9; weight decay on the weights only."""
    # No weight decay on BatchNorm and bias parameters (the one-dimensional ones): decaying them only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


def warmup_cosine(
    step: int, warmup_steps: int, total_steps: int, *, peak: float = 1.0, decay_after_warmup: bool = False
) -> float:
    """Learning rate (`peak` times a factor) at optimizer step `step`: a linear ramp over `warmup_steps`, and a
    cosine decay that reaches 0 at `total_steps`.

    The cosine runs over all steps with the ramp on top (distillation), or starts where the ramp ends (teacher
    training, `decay_after_warmup`). Both are kept as they were trained, so that recorded results reproduce."""
    ramp = peak * (step + 1) / max(warmup_steps, 1)
    if not decay_after_warmup:
        progress = step / total_steps
    elif step < warmup_steps:
        return ramp
    else:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min(peak, ramp) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backpropagate `loss` and take one step; the scaler scales the loss only under fp16 autocast."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save to a temporary file renamed over `path`: a crash leaves the old checkpoint or the new one."""

    def save(f: BinaryIO) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            # torch's zip writer hides a failed write (a full disk) behind "enforce fail ... unexpected pos"
            # when it closes the archive; the OSError it is handling says the real cause.
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise

    write_atomically(path, save)


def to_memory_format(model: ModuleT, memory_format: torch.memory_format) -> ModuleT:
    """`model` with its 4-D weights in `memory_format`; channels_last speeds up CPU convolutions about 2x."""
    # Module.to takes memory_format at run time, but torch's type stubs do not list it.
    return model.to(memory_format=memory_format)  # type: ignore[call-overload]
