"""The card of a model the tool builds: the part the daemon reads (edge.contract.new_card), filled from the
student, and the sections recorded for people (metrics, student, teachers, data set, settings).

A build keeps its card in memory as a dict and writes it with edge.contract.save_card, which checks it the way
the daemon will read it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.contract import file_sha256, new_card
from quantize.datasets import FaceSet
from quantize.digest import path_sha256
from quantize.distill import DistillResult
from quantize.evaluate import Evaluation


def exported_card(
    meta: dict[str, Any],
    name: str,
    fp32_file: Path,
    crop_margin: float,
    flip_average: bool = False,
    zoom_views: tuple[float, ...] = (),
) -> dict[str, Any]:
    """The card of an exported student before quantization: FP32 only. `meta` is student_file.student_meta."""
    size = meta["input_size"]
    return new_card(
        name=name,
        labels=meta["labels"],
        channels=meta["channels"],
        height=size,
        width=size,
        mean=meta["mean"],
        std=meta["std"],
        crop_margin=crop_margin,
        precision="fp32",
        variants={"fp32": fp32_file.name},
        variant_sha256={"fp32": file_sha256(fp32_file)},
        illumination=meta.get("illumination", "none"),
        align_template=meta.get("align_template"),
        flip_average=flip_average,
        zoom_views=list(zoom_views) or None,
        labels_source=meta.get("labels_source"),
        alignment=meta.get("alignment"),
    )


def with_variants(card: dict[str, Any], files: dict[str, Path], precision: str) -> dict[str, Any]:
    """`card` naming `files` ({precision: model file beside the card}) as its variants, `precision` the main one."""
    shas = {key: file_sha256(path) for key, path in files.items()}
    variants = {key: path.name for key, path in files.items()}
    return {**card, "precision": precision, "variants": variants, "variant_sha256": shas, "sha256": shas[precision]}


def dataset_record(data: Path, splits: dict[str, FaceSet]) -> dict[str, Any]:
    """The data set a model was trained and evaluated on: name, sha256, splits and faces per class."""
    return {
        "name": Path(data).name,
        "sha256": path_sha256(Path(data)),
        "splits": {role: faces.split for role, faces in splits.items()},
        "counts": {role: faces.class_counts() for role, faces in splits.items()},
    }


def metrics_section(evaluations: dict[str, Evaluation], latency: dict[str, Any], split: str) -> dict[str, Any]:
    """Accuracy of each evaluated variant and the latency table."""
    return {"eval_split": split, **{k: ev.metrics() for k, ev in evaluations.items()}, "latency_ms": latency}


def student_section(result: DistillResult, meta: dict[str, Any]) -> dict[str, Any]:
    """The distilled student: architecture, size, and the epoch kept."""
    return {
        "arch": meta["arch"],
        "params": meta["params"],
        "input_size": meta["input_size"],
        "best_epoch": result.best_epoch,
        "val_top1": None if result.best_val_top1 is None else round(result.best_val_top1, 4),
        "train_faces": result.train_faces,
        "val_faces": result.val_faces,
    }
