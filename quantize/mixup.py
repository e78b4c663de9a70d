"""Mixup (Zhang et al., ICLR 2018): each training face is blended with another face of its batch, and its
targets with that face's targets in the same proportion: asked for in-between answers on in-between faces,
the student is discouraged from memorising single faces and from answering too surely.

The blend weight lam is drawn from Beta(alpha, alpha) once per batch and folded to lam >= 0.5, so each
blended face stays mostly itself: its own label stays the right answer for the training accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from quantize.teacher_targets import BatchTarget


def mix_batch(
    faces: Tensor,
    targets: Tensor,
    teacher_targets: list[BatchTarget],
    alpha: float,
    classes: int,
    rng: np.random.Generator,
) -> tuple[Tensor, Tensor, list[BatchTarget]]:
    """(blended faces, blended target distributions (B, classes), blended teacher probabilities).

    `targets` are class indices (B,) or distributions (B, classes); indices become one-hot distributions."""
    lam = float(rng.beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    partner = torch.from_numpy(rng.permutation(len(faces))).to(faces.device)
    distributions = F.one_hot(targets, classes).float() if targets.dim() == 1 else targets
    mixed_faces = lam * faces + (1 - lam) * faces[partner]
    mixed_targets = lam * distributions + (1 - lam) * distributions[partner]
    mixed_teachers = [(group, weight, lam * p + (1 - lam) * p[partner]) for group, weight, p in teacher_targets]
    return mixed_faces, mixed_targets, mixed_teachers


def mixing_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The blend of one step, fixed by seed, epoch and step (so a resumed run blends alike), drawn apart from the
    augmentation's stream."""
    return np.random.default_rng([seed, epoch, step, 0x6D6978])
