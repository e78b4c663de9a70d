"""What the teachers say about the training faces: their logits, cached on disk, and the soft targets the
student learns from.

Teacher logits are computed once per (teacher file, teacher input settings, training faces) for each face
and its mirror image, and cached as .npz. Teachers are grouped by the classes they know; within a group the
temperature-softened probabilities softmax(z / T) are averaged, and the group weighs by its share of the
teachers. When augmentation mirrors a face, the mirror's probabilities are its target (with
`teacher_flip_average` both views get the mean of the two: the teachers' flip-averaged answer, the more
accurate one). The other augmentations are mild, so the clean face's probabilities remain a good target.
`online_teacher` runs the teachers on every augmented batch instead (nothing cached): exact targets, for
cheap teachers only.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from quantize.datasets import FaceSet
from quantize.digest import faces_fingerprint
from quantize.distill_config import DistillConfig
from quantize.errors import QuantizeError
from quantize.outputs import read_cache, write_cache
from quantize.teachers import Teacher

CACHE_VERSION = 1
# (canonical class indices, group weight, probabilities (B, len(classes))) of one group for one batch.
BatchTarget = tuple[list[int], float, Tensor]


@dataclass
class TeacherGroup:
    """Teachers sharing a class set, with their averaged probabilities at temperature T."""

    classes: list[int]  # canonical indices, the group's output order
    weight: float  # the group's share of the teachers
    teachers: list[Teacher]
    clean: Tensor | None = None  # (N, len(classes)) averaged probabilities at temperature T; None when online
    mirror: Tensor | None = None


def teacher_logits(
    teacher: Teacher,
    sha256: str,
    faces: FaceSet,
    cache_dir: Path | None,
    batch_size: int = 256,
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, np.ndarray]:
    """(clean, mirror) logits of `teacher` on `faces` and on their mirror images, cached on disk."""
    # The teacher as its record describes it (file, labels, input, output, flip_average...), the same record a
    # resumed run's fingerprint holds, so a setting that changes its answers changes both.
    key_text = json.dumps(
        [CACHE_VERSION, teacher.record(sha256), faces_fingerprint(faces.images, faces.labels)], sort_keys=True
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    cache_file = cache_dir / f"{teacher.path.stem}-{key}.npz" if cache_dir else None
    cached = read_cache(cache_file, ("clean", "mirror"))
    if cached is not None and cached[0].shape == cached[1].shape == (len(faces), len(teacher.labels)):
        return cached[0], cached[1]
    also = "" if teacher.mirror_averaged else " and their mirror images"
    log(f"teacher {teacher.describe()}: computing logits for {len(faces)} faces{also}")
    start = time.monotonic()
    clean = teacher.logits(faces.images, batch_size)
    mirror = (
        clean if teacher.mirror_averaged else teacher.logits(np.ascontiguousarray(faces.images[:, :, ::-1]), batch_size)
    )
    log(f"teacher {teacher.name}: {time.monotonic() - start:.0f} s")
    broken = int((~np.isfinite(clean).all(1) | ~np.isfinite(mirror).all(1)).sum())
    if broken:
        raise QuantizeError(
            f"teacher {teacher.name} answers NaN or inf for {broken} of {len(faces)} faces; its weights are "
            "damaged or its outputs overflow (try --teacher-precision fp32), and a student would learn nothing from it"
        )
    if cache_file is not None:
        write_cache(cache_file, lambda f: np.savez(f, clean=clean, mirror=mirror), "the teacher logits", log)
    return clean, mirror


def group_teachers(
    teachers: list[Teacher],
    logits: list[tuple[np.ndarray, np.ndarray]] | None,
    temperature: float,
    flip_average: bool = False,
) -> list[TeacherGroup]:
    """Teachers grouped by class set, with each group's averaged (clean, mirror) probabilities when cached."""
    members_of: dict[tuple[int, ...], list[int]] = {}
    for i, teacher in enumerate(teachers):
        members_of.setdefault(tuple(teacher.label_index), []).append(i)
    groups = []
    for classes, members in members_of.items():
        group = TeacherGroup(list(classes), len(members) / len(teachers), [teachers[i] for i in members])
        if logits is not None:
            group.clean, group.mirror = (
                torch.stack(
                    [torch.softmax(torch.from_numpy(logits[i][which]).float() / temperature, dim=1) for i in members]
                ).mean(0)
                for which in (0, 1)
            )
            if flip_average:
                group.clean = group.mirror = (group.clean + group.mirror) / 2
        groups.append(group)
    return groups


def training_targets(
    teachers: list[tuple[Teacher, str]],
    views: list[FaceSet],
    cfg: DistillConfig,
    cache_dir: Path | None,
    log: Callable[[str], None],
) -> list[TeacherGroup]:
    """The teacher groups a distillation learns from ([(teacher, sha256)], each with its view of the training
    faces; none without teachers)."""
    if not teachers:
        return []
    logits = (
        None
        if cfg.online_teacher
        else [teacher_logits(t, sha, view, cache_dir, log=log) for (t, sha), view in zip(teachers, views, strict=True)]
    )
    return group_teachers([t for t, _ in teachers], logits, cfg.temperature, cfg.teacher_flip_average)


def batch_targets(
    groups: list[TeacherGroup], idx: Tensor, flip: Tensor, augmented: np.ndarray, cfg: DistillConfig
) -> list[BatchTarget]:
    """Each group's target probabilities for the training faces `idx` (mirrored where `flip`), on flip's device.

    Online teachers answer on the augmented faces (uint8, framed as the student's), before the student's
    resizing and grey-level normalisation: each teacher prepares them as it learnt to."""
    out = []
    mirror = [np.ascontiguousarray(augmented[:, :, ::-1])] if cfg.online_teacher and cfg.teacher_flip_average else []
    views = [augmented, *mirror]  # made once for every group of online teachers
    for group in groups:
        if cfg.online_teacher:
            probs = torch.stack(
                [
                    torch.softmax(torch.from_numpy(t.logits(view)) / cfg.temperature, 1)
                    for t in group.teachers
                    for view in (views[:1] if t.mirror_averaged else views)
                ]
            ).mean(0)
        else:
            assert group.clean is not None and group.mirror is not None, "cached targets exist unless online"
            cpu_idx, cpu_flip = idx.cpu(), flip.cpu().view(-1, 1)
            probs = torch.where(cpu_flip, group.mirror[cpu_idx], group.clean[cpu_idx])
        out.append((group.classes, group.weight, probs.to(flip.device)))
    return out
