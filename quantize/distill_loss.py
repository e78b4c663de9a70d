"""The distillation loss: alpha * CE(student, hard label) + (1 - alpha) * T^2 * KD.

KD sums over teacher groups (quantize.teacher_targets): the student's logits are restricted to the group's
classes and renormalised (softmax over that subset at T), and the group contributes its weight times
KL(group probabilities || student subset). A six-class teacher thus says nothing about the class it lacks,
instead of claiming it has probability 0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from quantize.teacher_targets import BatchTarget


def class_weights(targets: np.ndarray, mode: str) -> Tensor | None:
    """Hard-loss weights per canonical class from the training targets (N, classes), scaled so that the average
    weight of a training face is 1."""
    if mode == "none":
        return None
    counts = targets.sum(axis=0).astype(np.float64)
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = counts[present] ** (-0.5 if mode == "sqrt" else -1.0)
    weights *= counts.sum() / (weights * counts).sum()
    return torch.tensor(weights, dtype=torch.float32)


def kd_loss(student_logits: Tensor, targets: list[BatchTarget], temperature: float) -> Tensor:
    """Sum over teacher groups of weight * T^2 * KL(group probabilities || student renormalised on its classes)."""
    total = student_logits.new_zeros(())
    for classes, weight, probs in targets:
        log_q = F.log_softmax(student_logits[:, classes] / temperature, dim=1)
        total = total + weight * F.kl_div(log_q, probs, reduction="batchmean") * temperature**2
    return total


def distillation_loss(
    logits: Tensor,
    labels: Tensor,  # class indices (B,), or per-face class distributions (B, classes) from a label source
    targets: list[BatchTarget],
    *,
    alpha: float,
    temperature: float,
    weights: Tensor | None,
    label_smoothing: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, hard, soft) of a batch; without teacher targets the soft term is 0.

    With logit adjustment the caller passes the adjusted logits (quantize.distill)."""
    hard = F.cross_entropy(logits, labels, weight=weights, label_smoothing=label_smoothing)
    soft = kd_loss(logits, targets, temperature) if targets else hard.new_zeros(())
    return alpha * hard + (1 - alpha) * soft, hard, soft
