"""`quantize build`: data set + teachers -> distilled student -> FP32 and INT8 ONNX, card, report, figures.

    models/NAME.onnx        INT8 (QDQ), what the daemon loads by default
    models/NAME.fp32.onnx   FP32, shipped beside it; the daemon times both unless the precision is pinned
    models/NAME.json        the model card
    models/NAME.md          the report, with NAME.confusion-fp32.png, NAME.confusion-int8.png, NAME.training.png

Everything is written into a staging folder and moved in place at the very end, so a failure (including the
INT8 accuracy gate) leaves earlier models untouched. Distillation checkpoints live in NAME.work/, so running
the same command again after an interruption resumes training.

The card is a dict in memory from export to the end. It is written twice and never read back: once when both
models exist, because the evaluation opens them through the daemon's own loader, which reads the card beside
them; and once more with the evaluation's figures and the build's records.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge.classifier import softmax
from edge.contract import file_sha256, save_card
from quantize.calibration import (
    expected_calibration_error,
    exported_logits,
    fit_temperature,
    with_temperature,
)
from quantize.card import dataset_record, exported_card, metrics_section, student_section, with_variants
from quantize.datasets import FaceSet, stratified_split
from quantize.distill import distill
from quantize.distill_config import DistillConfig
from quantize.errors import QuantizeError
from quantize.evaluate import Evaluation, evaluate_onnx, save_confusion_png
from quantize.export import ExportReport, export_student
from quantize.int8 import DEFAULT_MAX_DROP, calibration_faces, check_accuracy_drop, quantize_onnx
from quantize.outputs import StagedOutputs, check_folder, check_output
from quantize.report import render_report, save_training_png
from quantize.student import Student, views_label, zoom_crop
from quantize.student_file import student_meta
from quantize.student_input import student_inputs
from quantize.teacher_targets import teacher_logits
from quantize.teachers import Teacher, load_teacher
from quantize.training_data import (
    FaceOptions,
    default_cache_dir,
    load_training_data,
    teacher_views,
    training_teacher_views,
)

Log = Callable[[str], None]
# Uint8 grey faces (N, h, w) -> the model's input batch, for calibration.
Prepare = Callable[[np.ndarray], np.ndarray]


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

    def __post_init__(self) -> None:
        # Made from the command line before training starts, so a mistake here costs no training time.
        if self.calibration_faces < 1:
            raise QuantizeError(
                f"--calibration-faces {self.calibration_faces}: INT8 calibration needs at least one training face "
                "(default 300)"
            )


@dataclass
class BuildOptions:
    data: Path
    teachers: list[str]
    out: Path  # models/NAME, without suffix
    distill: DistillConfig = field(default_factory=DistillConfig)
    faces: FaceOptions = field(default_factory=FaceOptions)
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
    calibrate: bool = True  # fit a temperature on the hold-out faces (quantize.calibration)
    progress: bool = True


def output_name(out: Path) -> tuple[Path, str]:
    """(folder, NAME) of `--out models/NAME` (a trailing .onnx is tolerated)."""
    out = Path(out)
    check_output(out)
    name = out.name[:-5] if out.name.endswith(".onnx") else out.name
    if not name or name.startswith("."):
        raise QuantizeError(f"output {out} has no usable name; use --out models/NAME")
    return out.parent, name


# ---------------------------------------------------------------- steps shared with the single commands


def export_step(
    model: Student,
    staging: StagedOutputs,
    name: str,
    sample: np.ndarray,
    exporter: str,
    log: Log,
    flip_average: bool = False,
    zoom_views: tuple[float, ...] = (),
) -> tuple[Path, ExportReport]:
    """The student as staged NAME.fp32.onnx, checked against torch on `sample` (prepared inputs)."""
    fp32 = staging.path(f"{name}.fp32.onnx")
    report = export_student(model, fp32, sample, exporter, flip_average, zoom_views)
    views = views_label(flip_average, zoom_views)
    log(
        f"exported {fp32.name} with the {report.exporter} exporter, opset {report.opset}, "
        f"max |onnxruntime - torch| {report.max_abs_diff:.1e}{f', views: face + {views}' if views else ''}"
    )
    return fp32, report


@dataclass
class Int8Outcome:
    card: dict[str, Any]  # the card as staged, naming both variants
    evaluations: dict[str, Evaluation]  # fp32, int8, int8_qoperator
    quantization: dict[str, Any]
    latency: dict[str, Any]

    def metrics(self, split: str) -> dict[str, Any]:
        return metrics_section(self.evaluations, self.latency, split)


def int8_step(
    staging: StagedOutputs,
    name: str,
    card: dict[str, Any],
    prepare: Prepare,
    train: FaceSet,
    eval_faces: FaceSet,
    opts: QuantizeOptions,
    log: Log,
) -> Int8Outcome:
    """Quantize the staged FP32 model that `card` names (QDQ shipped, QOperator for comparison), stage the card
    naming both, evaluate all three and apply the accuracy gate. `prepare` turns calibration faces into inputs."""
    fp32 = staging.dir / card["variants"]["fp32"]
    calib = calibration_faces(train, opts.calibration_faces, opts.seed)
    inputs = prepare(calib.images)
    int8 = staging.path(f"{name}.onnx")
    quantize_onnx(fp32, int8, inputs, method=opts.calibration, fmt="qdq", activations=opts.activations)
    # The QOperator variant gets a card of its own in a side folder, so it is evaluated like a shipped model.
    side = staging.dir / "qoperator"
    side.mkdir(exist_ok=True)
    qoperator = side / f"{name}.onnx"
    quantize_onnx(fp32, qoperator, inputs, method=opts.calibration, fmt="qoperator", activations=opts.activations)
    staged = with_variants(card, {"fp32": fp32, "int8": int8}, "int8")
    save_card(staged, staging.path(f"{name}.json"))
    save_card(with_variants(card, {"int8": qoperator}, "int8"), side / f"{name}.json")

    evaluations: dict[str, Evaluation] = {}
    for key, path, precision in (("fp32", fp32, "fp32"), ("int8", int8, "int8"), ("int8_qoperator", qoperator, "int8")):
        ev = evaluate_onnx(path, eval_faces, precision=precision, latency_runs=opts.latency_runs)
        evaluations[key] = ev
        timing = f", {ev.latency_ms['median']:.3f} ms/face" if ev.latency_ms else ""
        log(f"{key}: top-1 {ev.accuracy * 100:.2f}% on {ev.count} {eval_faces.split} faces{timing}")
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
    latency: dict[str, Any] = {
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
    return Int8Outcome(staged, evaluations, quantization, latency)


def teacher_accuracy(teacher: Teacher, sha256: str, faces: FaceSet, cache_dir: Path | None, log: Log) -> float:
    """Flip-averaged top-1 on the faces of the classes the teacher knows (from the cached logits)."""
    clean, mirror = teacher_logits(teacher, sha256, faces, cache_dir, log=log)
    known = np.isin(faces.labels, teacher.label_index)
    predicted = np.asarray(teacher.label_index)[(clean + mirror)[known].argmax(1)]
    return float((predicted == faces.labels[known]).mean())


def refuse_below_chance(teacher: Teacher, accuracy: float, split: str) -> None:
    """Stop before training on a teacher that does worse than guessing: a working model whose outputs are read in
    the wrong label order (any seven-output model is taken to be in FER2013's) teaches exactly that."""
    chance = 1 / len(teacher.labels)
    if accuracy < chance:
        raise QuantizeError(
            f"teacher {teacher.name}: top-1 {accuracy * 100:.2f}% on {split} is below chance ({chance * 100:.2f}% "
            f"for {len(teacher.labels)} classes), so its outputs are probably in another order than "
            f'{"/".join(teacher.labels)}; give its order with "labels" in its spec, or labels= among its '
            f"--teacher options (e.g. --teacher '{teacher.path}:labels=neutral/happy/...')"
        )


def _calibrated(
    model: Student, train: FaceSet, meta: dict[str, Any], opts: BuildOptions, log: Log
) -> tuple[Student, dict[str, Any] | None]:
    """The student with its confidence calibrated on the hold-out faces, and the card's record of it (None
    when there are no hold-out faces or calibration is off)."""
    cfg = opts.distill
    if not opts.calibrate or cfg.val_fraction <= 0:
        return model, None
    held_out = stratified_split(train, cfg.val_fraction, cfg.seed)[1]
    labels = held_out.target_distributions().argmax(axis=1)
    logits = exported_logits(
        model, student_inputs(held_out.images, meta), meta["input_size"], opts.flip_average, opts.zoom_views
    )
    temperature = fit_temperature(logits, labels)
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits / temperature), labels)
    log(f"calibration: temperature {temperature:.3f} on {len(labels)} hold-out faces, ECE {before:.3f} -> {after:.3f}")
    record = {
        "temperature": round(temperature, 4),
        "faces": len(labels),
        "fitted_on": held_out.split,
        "ece_before": round(before, 4),
        "ece_after": round(after, 4),
    }
    return with_temperature(model, temperature), record


# ---------------------------------------------------------------- the whole chain


def build(opts: BuildOptions, log: Log = print) -> list[Path]:
    """Run the chain; returns the files written."""
    folder, name = output_name(opts.out)
    work_dir = opts.work_dir or folder / f"{name}.work"
    check_folder(work_dir, "--work-dir")
    for zoom in opts.zoom_views:  # refused now, not after hours of training
        zoom_crop(opts.distill.input_size, zoom)
    cache_dir = opts.cache_dir or default_cache_dir()
    data = load_training_data(opts.data, opts.quantize.eval_split, opts.faces, cache_dir, log)
    train, eval_faces = data.train, data.eval
    assert eval_faces is not None and data.original_eval is not None, "an eval split was asked for"
    log(f"data {opts.data}: {len(train)} training faces, {len(eval_faces)} {opts.quantize.eval_split} faces")
    teachers = [
        load_teacher(spec, device=opts.device, precision=opts.teacher_precision, trust_pickle=opts.trust_pickle)
        for spec in opts.teachers
    ]
    train_views = training_teacher_views(data, teachers, opts.distill.online_teacher, opts.faces.yunet, cache_dir, log)
    loaded = [(t, file_sha256(t.path)) for t in teachers]
    eval_views = teacher_views(data.original_eval, teachers, opts.faces.yunet, cache_dir, log)
    accuracies = [teacher_accuracy(t, sha, view, cache_dir, log) for (t, sha), view in zip(loaded, eval_views)]
    for (t, _), acc in zip(loaded, accuracies):
        log(f"teacher {t.describe()}: top-1 {acc * 100:.2f}% on {eval_faces.split} (flip-averaged)")
        refuse_below_chance(t, acc, eval_faces.split)

    result = distill(
        train,
        loaded,
        opts.distill,
        work_dir=work_dir,
        cache_dir=cache_dir,
        device=opts.device,
        progress=opts.progress,
        log=log,
        teacher_faces=train_views,
    )
    meta = student_meta(result, data.faces_record())
    model, calibration = _calibrated(result.model, train, meta, opts, log)

    with StagedOutputs(folder) as staging:
        sample = student_inputs(eval_faces.images[:64], meta)
        fp32, export_report = export_step(
            model, staging, name, sample, opts.exporter, log, opts.flip_average, opts.zoom_views
        )
        card = exported_card(meta, name, fp32, opts.crop_margin, opts.flip_average, opts.zoom_views)
        outcome = int8_step(
            staging, name, card, lambda faces: student_inputs(faces, meta), train, eval_faces, opts.quantize, log
        )
        card = {
            **outcome.card,
            "metrics": outcome.metrics(eval_faces.split),
            "student": student_section(result, meta),
            "teachers": [{**record, "accuracy": round(acc, 4)} for record, acc in zip(result.teachers, accuracies)],
            "dataset": dataset_record(opts.data, {"train": train, "eval": eval_faces}),
            "distillation": result.settings,
            "calibration": calibration,
            "quantization": {
                **outcome.quantization,
                "exporter": export_report.exporter,
                "opset": export_report.opset,
                "export_max_abs_diff": export_report.max_abs_diff,
            },
        }
        save_card(card, staging.path(f"{name}.json"))
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
