"""`quantize build`: data set + teachers -> distilled student -> FP32 and INT8 ONNX, card, report, figures.

    models/NAME.onnx        INT8 (QDQ), what the daemon loads by default
    models/NAME.fp32.onnx   FP32, shipped beside it; the daemon times both unless the precision is pinned
    models/NAME.json        the model card
    models/NAME.md          the report, with NAME.confusion-fp32.png, NAME.confusion-int8.png, NAME.training.png

Everything is written into a staging folder and moved in place at the very end, so a failure (including the
INT8 accuracy gate) leaves earlier models untouched. Distillation checkpoints live in NAME.work/, so running
the same command again after an interruption resumes training.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from quantize.card import make_card, read_card_dict, write_card
from quantize.datasets import FaceSet, load_dataset
from quantize.digest import file_sha256
from quantize.distill import DistillConfig, distill, resize_faces, student_meta, teacher_logits
from quantize.errors import QuantizeError
from quantize.evaluate import Evaluation, evaluate, load_model, save_confusion_png
from quantize.export import ExportReport, export_student
from quantize.int8 import DEFAULT_MAX_DROP, calibration_faces, check_accuracy_drop, quantize_onnx
from quantize.outputs import StagedOutputs
from quantize.report import render_report, save_training_png
from quantize.student import Student, views_label, zoom_crop
from quantize.teachers import Teacher, load_teacher

Log = Callable[[str], None]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-mood" / "teachers"


@dataclass
class QuantizeOptions:
    calibration: str = "minmax"
    activations: str = "int8"
    calibration_faces: int = 300
    max_drop: float = DEFAULT_MAX_DROP
    allow_drop: bool = False
    eval_split: str = "test"
    latency_runs: int = 200
    seed: int = 0


@dataclass
class BuildOptions:
    data: Path
    teachers: list[str]
    out: Path  # models/NAME, without suffix
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)
    device: str = "cpu"
    teacher_precision: str = "fp32"
    trust_pickle: bool = False
    cache_dir: Path | None = None
    work_dir: Path | None = None
    crop_margin: float = 0.1
    exporter: str = "auto"
    flip_average: bool = False
    zoom_views: tuple[float, ...] = ()
    progress: bool = True


def output_name(out: Path) -> tuple[Path, str]:
    """(folder, NAME) of `--out models/NAME` (a trailing .onnx is tolerated)."""
    out = Path(out)
    name = out.name[:-5] if out.name.endswith(".onnx") else out.name
    if not name or name.startswith("."):
        raise QuantizeError(f"output {out} has no usable name; use --out models/NAME")
    return out.parent, name


# ---------------------------------------------------------------- steps shared with the single commands


def dataset_record(data: Path, splits: dict[str, FaceSet]) -> dict[str, Any]:
    return {
        "name": Path(data).name,
        "sha256": file_sha256(Path(data)),
        "splits": {role: faces.split for role, faces in splits.items()},
        "counts": {role: faces.class_counts() for role, faces in splits.items()},
    }


def fp32_card(
    meta: dict[str, Any],
    name: str,
    fp32_file: Path,
    crop_margin: float,
    flip_average: bool = False,
    zoom_views: tuple[float, ...] = (),
) -> dict[str, Any]:
    """The card of an exported student before quantization: FP32 only."""
    size = meta["input_size"]
    return make_card(
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
        flip_average=flip_average,
        zoom_views=list(zoom_views) or None,
    )


def student_inputs(images: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Faces prepared the way the student was trained (for the export parity check)."""
    x = resize_faces(images, meta["input_size"]).astype(np.float32)[:, None] / 255.0
    return ((x - meta["mean"][0]) / meta["std"][0]).astype(np.float32)


def export_step(
    model: Student,
    meta: dict[str, Any],
    staging: StagedOutputs,
    name: str,
    sample: np.ndarray,
    crop_margin: float,
    exporter: str,
    log: Log,
    flip_average: bool = False,
    zoom_views: tuple[float, ...] = (),
) -> tuple[Path, ExportReport]:
    fp32 = staging.path(f"{name}.fp32.onnx")
    report = export_student(model, fp32, sample, exporter, flip_average, zoom_views)
    views = views_label(flip_average, zoom_views)
    log(
        f"exported {fp32.name} with the {report.exporter} exporter, opset {report.opset}, "
        f"max |onnxruntime - torch| {report.max_abs_diff:.1e}{f', views: face + {views}' if views else ''}"
    )
    write_card(fp32_card(meta, name, fp32, crop_margin, flip_average, zoom_views), staging.path(f"{name}.json"))
    return fp32, report


@dataclass
class Int8Outcome:
    int8: Path
    evaluations: dict[str, Evaluation]  # fp32, int8, int8_qoperator
    quantization: dict[str, Any]
    latency: dict[str, Any]


def _rounded(top1: float | None) -> float | None:
    return None if top1 is None else round(top1, 4)


def int8_step(
    staging: StagedOutputs,
    name: str,
    card: dict[str, Any],
    train: FaceSet,
    eval_faces: FaceSet,
    opts: QuantizeOptions,
    log: Log,
) -> Int8Outcome:
    """Quantize the staged FP32 model (QDQ shipped, QOperator for comparison), evaluate all three, apply the gate,
    and stage the card listing both variants. `card` is the staged FP32 card."""
    fp32 = staging.dir / card["variants"]["fp32"]
    calib = calibration_faces(train, opts.calibration_faces, opts.seed)
    inputs = load_model(fp32).preprocess(list(calib.images))
    int8 = staging.path(f"{name}.onnx")
    quantize_onnx(fp32, int8, inputs, method=opts.calibration, fmt="qdq", activations=opts.activations)
    # The QOperator variant gets a card of its own in a side folder, so it is evaluated like a shipped model.
    side = staging.dir / "qoperator"
    side.mkdir(exist_ok=True)
    quantize_onnx(
        fp32, side / f"{name}.onnx", inputs, method=opts.calibration, fmt="qoperator", activations=opts.activations
    )
    variants = {"fp32": fp32.name, "int8": int8.name}
    shas = {"fp32": file_sha256(fp32), "int8": file_sha256(int8)}
    staged_card = {**card, "precision": "int8", "variants": variants, "variant_sha256": shas, "sha256": shas["int8"]}
    write_card(staged_card, staging.path(f"{name}.json"))
    write_card(
        {
            **card,
            "precision": "int8",
            "variants": {"int8": f"{name}.onnx"},
            "variant_sha256": {"int8": file_sha256(side / f"{name}.onnx")},
            "sha256": file_sha256(side / f"{name}.onnx"),
        },
        side / f"{name}.json",
    )

    evaluations: dict[str, Evaluation] = {}
    for key, path in (("fp32", fp32), ("int8", int8), ("int8_qoperator", side / f"{name}.onnx")):
        evaluations[key] = evaluate(path, eval_faces, latency_runs=opts.latency_runs)
        ev = evaluations[key]
        latency = f", {ev.latency_ms['median']:.3f} ms/face" if ev.latency_ms else ""
        log(f"{key}: top-1 {ev.accuracy * 100:.2f}% on {ev.count} {eval_faces.split} faces{latency}")
    fp, q = evaluations["fp32"], evaluations["int8"]
    drop = check_accuracy_drop(fp.accuracy, q.accuracy, opts.max_drop, opts.allow_drop)
    quantization = {
        "format": "QDQ",
        "weights": "int8 per-channel",
        "activations": opts.activations,
        "calibration": opts.calibration,
        "calibration_faces": len(calib),
        "calibration_split": train.split,
        "top1_drop_points": round(drop, 3),
        "max_drop_points": opts.max_drop,
        "allowed_drop": opts.allow_drop,
        "agreement": round(float((fp.probs.argmax(1) == q.probs.argmax(1)).mean()), 4),
        "mean_abs_prob_diff": round(float(np.abs(fp.probs - q.probs).mean()), 5),
    }
    latency = {
        key: {k: round(v, 4) for k, v in ev.latency_ms.items()} for key, ev in evaluations.items() if ev.latency_ms
    }
    latency.update(
        {
            "batch": 1,
            "threads": 1,
            "onnxruntime": ort.__version__,
            "machine": f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
        }
    )
    return Int8Outcome(int8, evaluations, quantization, latency)


def metrics_section(outcome: Int8Outcome, split: str) -> dict[str, Any]:
    return {
        "eval_split": split,
        **{k: ev.metrics() for k, ev in outcome.evaluations.items()},
        "latency_ms": outcome.latency,
    }


def teacher_accuracy(teacher: Teacher, sha256: str, faces: FaceSet, cache_dir: Path | None, log: Log) -> float:
    """Flip-averaged top-1 on the faces of the classes the teacher knows (from the cached logits)."""
    clean, mirror = teacher_logits(teacher, sha256, faces, cache_dir, log=log)
    known = np.isin(faces.labels, teacher.label_index)
    predicted = np.asarray(teacher.label_index)[(clean + mirror)[known].argmax(1)]
    return float((predicted == faces.labels[known]).mean())


# ---------------------------------------------------------------- the whole chain


def build(opts: BuildOptions, log: Log = print) -> list[Path]:
    """Run the chain; returns the files written."""
    folder, name = output_name(opts.out)
    for zoom in opts.zoom_views:  # refused now, not after hours of training
        zoom_crop(opts.distill.input_size, zoom)
    cache_dir = opts.cache_dir or default_cache_dir()
    train = load_dataset(opts.data, "train")
    eval_faces = load_dataset(opts.data, opts.quantize.eval_split)
    log(f"data {opts.data}: {len(train)} training faces, {len(eval_faces)} {opts.quantize.eval_split} faces")
    teachers = [
        load_teacher(spec, device=opts.device, precision=opts.teacher_precision, trust_pickle=opts.trust_pickle)
        for spec in opts.teachers
    ]
    loaded = [(t, file_sha256(t.path)) for t in teachers]
    accuracies = [teacher_accuracy(t, sha, eval_faces, cache_dir, log) for t, sha in loaded]
    for (t, _), acc in zip(loaded, accuracies):
        log(f"teacher {t.describe()}: top-1 {acc * 100:.2f}% on {eval_faces.split} (flip-averaged)")

    result = distill(
        train,
        loaded,
        opts.distill,
        work_dir=opts.work_dir or folder / f"{name}.work",
        cache_dir=cache_dir,
        device=opts.device,
        progress=opts.progress,
        log=log,
    )
    meta = student_meta(result)

    with StagedOutputs(folder) as staging:
        sample = student_inputs(eval_faces.images[:64], meta)
        _, export_report = export_step(
            result.model,
            meta,
            staging,
            name,
            sample,
            opts.crop_margin,
            opts.exporter,
            log,
            opts.flip_average,
            opts.zoom_views,
        )
        outcome = int8_step(
            staging, name, read_card_dict(staging.path(f"{name}.json")), train, eval_faces, opts.quantize, log
        )
        teacher_rows = [{**record, "accuracy": round(acc, 4)} for record, acc in zip(result.teachers, accuracies)]
        card = {
            **read_card_dict(staging.path(f"{name}.json")),  # the card int8_step staged, with both variants
            "metrics": metrics_section(outcome, eval_faces.split),
            "student": {
                "arch": meta["arch"],
                "params": meta["params"],
                "input_size": meta["input_size"],
                "best_epoch": result.best_epoch,
                "val_top1": _rounded(result.best_val_top1),
                "train_faces": result.train_faces,
                "val_faces": result.val_faces,
            },
            "teachers": teacher_rows,
            "dataset": dataset_record(opts.data, {"train": train, "eval": eval_faces}),
            "distillation": result.settings,
            "quantization": {
                **outcome.quantization,
                "exporter": export_report.exporter,
                "opset": export_report.opset,
                "export_max_abs_diff": export_report.max_abs_diff,
            },
        }
        write_card(card, staging.path(f"{name}.json"))
        images = {
            "fp32": f"{name}.confusion-fp32.png",
            "int8": f"{name}.confusion-int8.png",
            "training": f"{name}.training.png",
        }
        for key in ("fp32", "int8"):
            ev = outcome.evaluations[key]
            save_confusion_png(
                ev,
                staging.path(images[key]),
                f"{name} {key.upper()}: top-1 {ev.accuracy * 100:.1f}% on {eval_faces.split}",
            )
        save_training_png(result.history, staging.path(images["training"]), f"{name}: student {meta['arch']}")
        staging.path(f"{name}.md").write_text(render_report(card, result.history, images), encoding="utf-8")
        written = [
            folder / n for n in (f"{name}.onnx", f"{name}.fp32.onnx", f"{name}.json", f"{name}.md", *images.values())
        ]
    return written
