"""`quantize`: train teachers, distill a student, export, quantize to INT8, evaluate, or do it all with `build`.

Every fault a user can cause ends as one line "error: ..." on stderr and exit status 2, with no output file
left half-written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

from edge.errors import UserError
from quantize.errors import QuantizeError

# Packages of the [quantize] extra; a missing one is an installation problem, not a bug.
EXTRA_PACKAGES = ("torch", "onnx", "onnxscript", "tqdm", "matplotlib")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- option groups


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where torch runs (default: cuda when available, else cpu)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")


def _add_distill(p: argparse.ArgumentParser) -> None:
    from quantize.distill import CLASS_BALANCE, OPTIMIZERS, PRECISIONS, DistillConfig
    from quantize.student import STUDENTS

    d = DistillConfig()
    p.add_argument("--data", type=Path, required=True, help="FER2013 CSV (.csv/.csv.gz) or image folder")
    p.add_argument(
        "--teacher",
        action="append",
        required=True,
        metavar="PATH[:key=value,...]",
        help="teacher model (.pt state_dict, TorchScript or .onnx) with its spec beside it or options "
        "such as :size=96,mean=imagenet; repeat for an ensemble",
    )
    g = p.add_argument_group("student and distillation")
    g.add_argument("--student", default=d.student, choices=list(STUDENTS), help="size (default %(default)s)")
    g.add_argument(
        "--input-size",
        type=int,
        default=d.input_size,
        choices=(48, 64),
        help="student input side in pixels (default %(default)s)",
    )
    g.add_argument("--epochs", type=int, default=d.epochs, help="default %(default)s")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    g.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help="default %(default)s")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3 adamw, 0.05 sgd)")
    g.add_argument("--weight-decay", type=float, default=None, help="default 0.05 adamw, 5e-4 sgd")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="default %(default)s")
    g.add_argument("--temperature", type=float, default=d.temperature, help="softening T (default %(default)s)")
    g.add_argument(
        "--alpha",
        type=float,
        default=d.alpha,
        help="weight of the hard-label loss, 1-alpha for the teachers (default %(default)s)",
    )
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="default %(default)s")
    g.add_argument(
        "--class-balance",
        default=d.class_balance,
        choices=CLASS_BALANCE,
        help="class weights of the hard loss (default %(default)s)",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="stratified share of the training faces that picks the best epoch; 0 trains on all "
        "of them and keeps the last epoch (default %(default)s)",
    )
    g.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="stop after N epochs without a better validation top-1 (default 0: run all epochs)",
    )
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--no-augment", action="store_true", help="train on the faces as they are")
    g.add_argument(
        "--online-teacher",
        action="store_true",
        help="run the teachers on every augmented batch instead of using cached logits (slow)",
    )
    g.add_argument(
        "--teacher-flip-average",
        action="store_true",
        help="targets from each teacher's answer averaged over the face and its mirror image",
    )
    g.add_argument(
        "--precision", default=d.precision, choices=PRECISIONS, help="student autocast (default: bf16 where supported)"
    )
    g.add_argument(
        "--teacher-precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="teacher inference precision (default %(default)s)",
    )
    g.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow teacher checkpoints that pickle whole models (runs code from the file)",
    )
    g.add_argument(
        "--cache-dir", type=Path, default=None, help="teacher logits cache (default ~/.cache/edge-mood/teachers)"
    )
    g.add_argument("--work-dir", type=Path, default=None, help="checkpoint folder for resuming (default <out>.work)")
    _add_common(p)


def _add_int8(p: argparse.ArgumentParser) -> None:
    from quantize.int8 import ACTIVATION_TYPES, CALIBRATION_METHODS, DEFAULT_MAX_DROP

    g = p.add_argument_group("INT8 quantization and evaluation")
    g.add_argument(
        "--calibration",
        default="minmax",
        choices=list(CALIBRATION_METHODS),
        help="calibration method (default %(default)s)",
    )
    g.add_argument(
        "--activations",
        default="int8",
        choices=list(ACTIVATION_TYPES),
        help="activation type: int8 suits ARM (the Pi), uint8 suits x86 (default %(default)s)",
    )
    g.add_argument(
        "--calibration-faces",
        type=int,
        default=300,
        help="training faces used for calibration, stratified (default %(default)s)",
    )
    g.add_argument(
        "--max-drop",
        type=float,
        default=DEFAULT_MAX_DROP,
        help="refuse INT8 if its top-1 is more than this many points below FP32 (default %(default)s)",
    )
    g.add_argument("--allow-drop", action="store_true", help="write the INT8 model even past --max-drop")
    g.add_argument(
        "--eval-split",
        default="test",
        help="split for accuracy and the INT8 gate (default %(default)s = PublicTest for FER2013)",
    )
    g.add_argument("--latency-runs", type=int, default=200, help="timed single-face runs (default %(default)s)")


def _add_test_time_views(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--flip-average",
        action="store_true",
        help="export a graph that averages each face with its mirror image: more accurate, twice the compute per face",
    )
    p.add_argument(
        "--zoom-view",
        type=float,
        action="append",
        default=[],
        metavar="ZOOM",
        help="also classify the face enlarged ZOOM times about its centre (1.2: the middle 40 of 48 "
        "pixels) and average; repeatable, each view adds the compute of one face (two with "
        "--flip-average)",
    )


def build_parser() -> argparse.ArgumentParser:
    from quantize.train_teacher import add_train_teacher_arguments

    parser = _Parser(prog="quantize", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train-teacher", help="train a big teacher network on a data set")
    add_train_teacher_arguments(p)
    p.set_defaults(func=_run_train_teacher)

    p = sub.add_parser("distill", help="distill teachers into a student checkpoint (.pt)")
    _add_distill(p)
    p.add_argument("--out", type=Path, required=True, help="student checkpoint to write, e.g. work/student.pt")
    p.set_defaults(func=_run_distill)

    p = sub.add_parser("export", help="student checkpoint -> NAME.fp32.onnx + card NAME.json")
    p.add_argument("--student", type=Path, required=True, help="checkpoint written by `quantize distill`")
    p.add_argument("--out", type=Path, required=True, help="models/NAME (writes NAME.fp32.onnx and NAME.json)")
    p.add_argument("--crop-margin", type=float, default=0.1, help="card crop margin (default %(default)s)")
    p.add_argument(
        "--exporter",
        default="auto",
        choices=("auto", "dynamo", "legacy"),
        help="torch ONNX exporter (default: dynamo, legacy if dynamo fails parity)",
    )
    _add_test_time_views(p)
    p.set_defaults(func=_run_export)

    p = sub.add_parser("int8", help="NAME.fp32.onnx -> NAME.onnx (INT8) with FP32 vs INT8 evaluation")
    p.add_argument("--model", type=Path, required=True, help="FP32 model with its card, e.g. models/NAME.fp32.onnx")
    p.add_argument("--data", type=Path, required=True, help="data set for calibration (train) and evaluation")
    _add_int8(p)
    p.set_defaults(func=_run_int8)

    p = sub.add_parser("eval", help="accuracy, confusion and latency of an ONNX model through its card")
    p.add_argument("--model", type=Path, required=True, help="ONNX model with its card beside it")
    p.add_argument("--data", type=Path, required=True, help="FER2013 CSV or image folder")
    p.add_argument("--split", default="test", help="split to evaluate (default %(default)s)")
    p.add_argument("--png", type=Path, default=None, help="also save the confusion matrix as this PNG")
    p.add_argument("--latency-runs", type=int, default=200, help="timed single-face runs, 0 to skip")
    p.set_defaults(func=_run_eval)

    p = sub.add_parser("build", help="the whole chain: distill, export, INT8, card, report")
    _add_distill(p)
    _add_int8(p)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="models/NAME: writes NAME.onnx, NAME.fp32.onnx, NAME.json, NAME.md and NAME.*.png",
    )
    p.add_argument("--crop-margin", type=float, default=0.1, help="card crop margin (default %(default)s)")
    p.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "legacy"), help="default %(default)s")
    _add_test_time_views(p)
    p.set_defaults(func=_run_build)
    return parser


# ---------------------------------------------------------------- commands


def _device(args: argparse.Namespace) -> str:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise QuantizeError("--device cuda asked for but torch sees no CUDA GPU; use --device cpu")
    return args.device


def _distill_config(args: argparse.Namespace) -> Any:
    from quantize.distill import DistillConfig

    return DistillConfig(
        student=args.student,
        input_size=args.input_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        temperature=args.temperature,
        alpha=args.alpha,
        label_smoothing=args.label_smoothing,
        class_balance=args.class_balance,
        val_fraction=args.val_fraction,
        patience=args.patience,
        seed=args.seed,
        augment=not args.no_augment,
        online_teacher=args.online_teacher,
        teacher_flip_average=args.teacher_flip_average,
        precision=args.precision,
    )


def _quantize_options(args: argparse.Namespace) -> Any:
    from quantize.build import QuantizeOptions

    return QuantizeOptions(
        calibration=args.calibration,
        activations=args.activations,
        calibration_faces=args.calibration_faces,
        max_drop=args.max_drop,
        allow_drop=args.allow_drop,
        eval_split=args.eval_split,
        latency_runs=args.latency_runs,
    )


def _load_teachers(args: argparse.Namespace, device: str) -> list[tuple[Any, str]]:
    from quantize.digest import file_sha256
    from quantize.teachers import load_teacher

    teachers = [
        load_teacher(spec, device=device, precision=args.teacher_precision, trust_pickle=args.trust_pickle)
        for spec in args.teacher
    ]
    return [(t, file_sha256(t.path)) for t in teachers]


def _run_train_teacher(args: argparse.Namespace) -> int:
    from quantize.train_teacher import run_train_teacher

    return run_train_teacher(args)


def _run_distill(args: argparse.Namespace) -> int:
    from quantize.build import dataset_record, default_cache_dir
    from quantize.datasets import load_dataset
    from quantize.distill import distill, save_student
    from quantize.outputs import check_output_folder

    cfg = _distill_config(args)
    cfg.check()
    device = _device(args)
    check_output_folder(args.out.parent)
    train = load_dataset(args.data, "train")
    teachers = _load_teachers(args, device)
    result = distill(
        train,
        teachers,
        cfg,
        work_dir=args.work_dir or args.out.with_name(args.out.name + ".work"),
        cache_dir=args.cache_dir or default_cache_dir(),
        device=device,
        progress=sys.stderr.isatty(),
        log=_log,
    )
    save_student(args.out, result, dataset_record(args.data, {"train": train}))
    kept = (
        f"best validation top-1 {result.best_val_top1 * 100:.2f}% at epoch {result.best_epoch}"
        if result.best_val_top1 is not None
        else f"no validation, epoch {result.best_epoch} kept"
    )
    print(f"{args.out}: student {cfg.student}, {kept}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    import numpy as np

    from quantize.build import export_step, output_name
    from quantize.distill import load_student
    from quantize.outputs import StagedOutputs

    model, meta = load_student(args.student)
    folder, name = output_name(args.out)
    name = name.removesuffix(".fp32")
    size = meta["input_size"]
    # Parity is a numerical check, so random inputs in the normalised range do; build uses real faces.
    sample = np.random.default_rng(0).uniform(-1, 1, (16, meta["channels"], size, size)).astype(np.float32)
    with StagedOutputs(folder) as staging:
        fp32, _ = export_step(
            model,
            meta,
            staging,
            name,
            sample,
            args.crop_margin,
            args.exporter,
            _log,
            args.flip_average,
            tuple(args.zoom_view),
        )
    print(f"{folder / fp32.name} + {folder / (name + '.json')}")
    return 0


def _run_int8(args: argparse.Namespace) -> int:
    import shutil

    from edge.model_card import card_path_for
    from quantize.build import int8_step, metrics_section
    from quantize.card import read_card_dict, write_card
    from quantize.datasets import load_dataset
    from quantize.outputs import StagedOutputs

    opts = _quantize_options(args)
    card_path = card_path_for(args.model)
    card = read_card_dict(card_path)
    if "fp32" not in card.get("variants", {}) or card["variants"]["fp32"] != args.model.name:
        raise QuantizeError(
            f"{args.model} is not the fp32 variant named by its card {card_path}; give the "
            f".fp32.onnx written by `quantize export`"
        )
    train = load_dataset(args.data, "train")
    eval_faces = load_dataset(args.data, opts.eval_split)
    name = card_path.stem
    with StagedOutputs(args.model.parent) as staging:
        shutil.copy2(args.model, staging.path(args.model.name))
        write_card(card, staging.path(card_path.name))
        outcome = int8_step(staging, name, card, train, eval_faces, opts, _log)
        staged = read_card_dict(staging.path(card_path.name))
        staged["metrics"] = metrics_section(outcome, eval_faces.split)
        staged["quantization"] = outcome.quantization
        write_card(staged, staging.path(card_path.name))
    print(
        f"{args.model.parent / (name + '.onnx')}: INT8 top-1 {outcome.evaluations['int8'].accuracy * 100:.2f}% "
        f"vs FP32 {outcome.evaluations['fp32'].accuracy * 100:.2f}% on {eval_faces.split}"
    )
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from quantize.datasets import load_dataset
    from quantize.evaluate import confusion_table, evaluate, save_confusion_png
    from quantize.outputs import StagedOutputs

    faces = load_dataset(args.data, args.split)
    ev = evaluate(args.model, faces, latency_runs=args.latency_runs)
    print(
        f"{args.model} on {args.data} [{args.split}]: {ev.count} faces"
        + (f" ({ev.excluded} of classes the model lacks left out)" if ev.excluded else "")
    )
    print(f"top-1 {ev.accuracy * 100:.2f}%  macro F1 {ev.macro_f1:.4f}  size {ev.size_bytes / 1024:.0f} KiB")
    if ev.latency_ms:
        print(
            f"latency per face (batch 1, 1 thread): median {ev.latency_ms['median']:.3f} ms, "
            f"p90 {ev.latency_ms['p90']:.3f} ms"
        )
    print(confusion_table(ev))
    if args.png:
        with StagedOutputs(args.png.parent) as staging:
            save_confusion_png(ev, staging.path(args.png.name), f"{args.model.name}: top-1 {ev.accuracy * 100:.1f}%")
    return 0


def _run_build(args: argparse.Namespace) -> int:
    from quantize.build import BuildOptions, build, output_name
    from quantize.outputs import check_output_folder

    cfg = _distill_config(args)
    cfg.check()
    check_output_folder(output_name(args.out)[0])
    opts = BuildOptions(
        data=args.data,
        teachers=args.teacher,
        out=args.out,
        distill=cfg,
        quantize=_quantize_options(args),
        device=_device(args),
        teacher_precision=args.teacher_precision,
        trust_pickle=args.trust_pickle,
        cache_dir=args.cache_dir,
        work_dir=args.work_dir,
        crop_margin=args.crop_margin,
        exporter=args.exporter,
        flip_average=args.flip_average,
        zoom_views=tuple(args.zoom_view),
        progress=sys.stderr.isatty(),
    )
    for path in build(opts, _log):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, or a usage error already printed as one line
            return int(exc.code or 0)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
        return args.func(args)
    except UserError as exc:
        _log(f"error: {exc}")
    except ModuleNotFoundError as exc:
        if exc.name not in EXTRA_PACKAGES:
            raise
        _log(
            f"error: the quantize tool needs the optional package {exc.name}; install it with "
            "pip install 'edge-mood[quantize]'"
        )
    except OSError as exc:  # file not found, permission denied, disk full: name the file and the cause
        where = f" {exc.filename}" if exc.filename else ""
        _log(f"error: {exc.strerror or exc}{':' + where if where else ''}; check the path and permissions")
    except KeyboardInterrupt:
        _log("interrupted; run the same command again to resume")
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
