"""What each `quantize` subcommand does with its parsed options (quantize.cli parses them).

Each imports the chain's modules when it runs, so `quantize --help` and a missing [quantize] extra are
answered before torch loads. Progress lines go to stderr; the result (files written, figures) to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from quantize.errors import QuantizeError


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- options -> settings


def _device(args: argparse.Namespace) -> str:
    from quantize.training import choose_device, set_threads

    set_threads(args.threads)
    return choose_device(args.device)


def _check_crop_margin(margin: float) -> None:
    """Refuse now a margin the daemon would refuse in the card, rather than after training and export."""
    from edge.contract import CROP_MARGIN_LIMITS

    low, high = CROP_MARGIN_LIMITS
    if not low < margin < high:
        raise QuantizeError(
            f"--crop-margin {margin:g} must lie between {low:g} and {high:g} (not either end), the range the daemon "
            "accepts in a card; the default is 0.1"
        )


def _distill_config(args: argparse.Namespace) -> Any:
    from quantize.distill_config import DistillConfig

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
        augment=args.augment,
        illumination=args.illumination,
        logit_adjust=args.logit_adjust,
        ema_decay=args.ema_decay,
        mixup=args.mixup,
        online_teacher=args.online_teacher,
        teacher_flip_average=args.teacher_flip_average,
        precision=args.precision,
    )


def _face_options(args: argparse.Namespace) -> Any:
    from quantize.training_data import FaceOptions

    return FaceOptions(votes=args.votes, votes_weight=_votes_weight(args), align=args.align, yunet=args.yunet)


def _votes_weight(args: argparse.Namespace) -> float:
    """--votes-weight, refused without the --votes it weighs (it would change nothing, which a user would not see)."""
    from quantize.training_data import FaceOptions

    if args.votes_weight is None:
        return FaceOptions.votes_weight
    if args.votes is None:
        raise QuantizeError(
            f"--votes-weight {args.votes_weight:g} weighs the annotators' votes, but no --votes file is given; "
            "add --votes CSV or leave --votes-weight out"
        )
    return args.votes_weight


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
    from edge.contract import file_sha256
    from quantize.teachers import load_teacher

    teachers = [
        load_teacher(spec, device=device, precision=args.teacher_precision, trust_pickle=args.trust_pickle)
        for spec in args.teacher
    ]
    return [(t, file_sha256(t.path)) for t in teachers]


def _train_config(args: argparse.Namespace) -> Any:
    from quantize.teacher_config import TrainConfig
    from quantize.teacher_input import parse_normalisation

    std_source = (
        args.std if args.std is not None else (args.mean if args.mean in ("imagenet", "half", "none") else "none")
    )
    return TrainConfig(
        arch=args.arch,
        data=str(args.data),
        out=str(args.out),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        size=args.size,
        channels=args.channels,
        mean=parse_normalisation(args.mean, 0),
        std=parse_normalisation(std_source, 1),
        head=args.head,
        val_split=args.val_split,
        val_fraction=args.val_fraction,
        seed=args.seed,
        init=_optional_path(args.init),
        votes=_optional_path(args.votes),
        votes_weight=_votes_weight(args),
        align=args.align,
        yunet=_optional_path(_yunet_for_alignment(args)),
        illumination=args.illumination,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        limit=args.limit,
        skip_corrupt=args.skip_corrupt,
        stop_after_epochs=args.stop_after_epochs,
        time_budget_min=args.time_budget_min,
    )


def _yunet_for_alignment(args: argparse.Namespace) -> Path | None:
    """train-teacher's --yunet, which only finds the landmarks for --align: refused without it."""
    if args.yunet is not None and not args.align:
        raise QuantizeError(
            f"--yunet {args.yunet} finds the landmarks that --align aligns faces by, but --align is not given; "
            "add --align or leave --yunet out"
        )
    return args.yunet


def _optional_path(path: Path | None) -> str | None:
    return str(path) if path is not None else None


# ---------------------------------------------------------------- the subcommands, in the order data goes


def run_train_teacher(args: argparse.Namespace) -> int:
    from quantize.train_teacher import train_config

    result = train_config(_train_config(args), resume=not args.no_resume)
    print(
        f"best {result.best_accuracy:.4f} at epoch {result.best_epoch} of {result.epochs_done} done "
        f"({result.wall_s / 60:.1f} min): {result.weights} + {result.spec.name}"
    )
    return 0


def run_distill(args: argparse.Namespace) -> int:
    from quantize.card import dataset_record
    from quantize.distill import distill
    from quantize.outputs import check_folder, check_output
    from quantize.student_file import save_student
    from quantize.training_data import default_cache_dir, load_training_data, training_teacher_views

    cfg = _distill_config(args)
    cfg.check()
    device = _device(args)
    check_output(args.out)
    work_dir = args.work_dir or args.out.with_name(args.out.name + ".work")
    check_folder(work_dir, "--work-dir")
    cache_dir = args.cache_dir or default_cache_dir()
    data = load_training_data(args.data, None, _face_options(args), cache_dir, log)
    teachers = _load_teachers(args, device)
    views = training_teacher_views(data, [t for t, _ in teachers], cfg.online_teacher, args.yunet, cache_dir, log)
    result = distill(
        data.train,
        teachers,
        cfg,
        work_dir=work_dir,
        cache_dir=cache_dir,
        device=device,
        progress=sys.stderr.isatty(),
        log=log,
        teacher_faces=views,
    )
    save_student(args.out, result, dataset_record(args.data, {"train": data.train}), data.faces_record())
    kept = (
        f"best validation top-1 {result.best_val_top1 * 100:.2f}% at epoch {result.best_epoch}"
        if result.best_val_top1 is not None
        else f"no validation, epoch {result.best_epoch} kept"
    )
    print(f"{args.out}: student {cfg.student}, {kept}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    import numpy as np

    from edge.contract import save_card
    from quantize.build import export_step, output_name
    from quantize.card import exported_card
    from quantize.outputs import StagedOutputs
    from quantize.student_file import load_student

    _check_crop_margin(args.crop_margin)
    model, meta = load_student(args.student)
    folder, name = output_name(args.out)
    name = name.removesuffix(".fp32")
    size = meta["input_size"]
    # Parity is a numerical check, so random inputs in the normalised range do; build uses real faces.
    sample = np.random.default_rng(0).uniform(-1, 1, (16, meta["channels"], size, size)).astype(np.float32)
    views = tuple(args.zoom_view)
    with StagedOutputs(folder) as staging:
        fp32, _ = export_step(model, staging, name, sample, args.exporter, log, args.flip_average, views)
        card = exported_card(meta, name, fp32, args.crop_margin, args.flip_average, views)
        save_card(card, staging.path(f"{name}.json"))
    print(f"{folder / fp32.name} + {folder / (name + '.json')}")
    return 0


def run_int8(args: argparse.Namespace) -> int:
    import shutil

    from edge.contract import card_path_for, load_card, save_card
    from quantize.build import int8_step
    from quantize.datasets import load_dataset
    from quantize.evaluate import load_daemon_model
    from quantize.outputs import StagedOutputs
    from quantize.training_data import default_cache_dir, framed_for_card

    opts = _quantize_options(args)
    card_path = card_path_for(args.model)
    card = load_card(card_path).raw
    if "fp32" not in card.get("variants", {}) or card["variants"]["fp32"] != args.model.name:
        raise QuantizeError(
            f"{args.model} is not the fp32 variant named by its card {card_path}; give the "
            f".fp32.onnx written by `quantize export`"
        )
    # An aligned model is calibrated and checked on faces aligned as in its build.
    train = framed_for_card(load_dataset(args.data, "train"), card, args.yunet, default_cache_dir(), log)
    eval_faces = framed_for_card(load_dataset(args.data, opts.eval_split), card, args.yunet, default_cache_dir(), log)
    name = card_path.stem
    # Calibration faces are prepared by the daemon's loader, from the model as given and its card.
    fp32_model = load_daemon_model(args.model, "fp32")
    with StagedOutputs(args.model.parent) as staging:
        shutil.copy2(args.model, staging.path(args.model.name))
        prepare = lambda faces: fp32_model.preprocess(list(faces))  # noqa: E731
        outcome = int8_step(staging, name, card, prepare, train, eval_faces, opts, log)
        staged = {**outcome.card, "metrics": outcome.metrics(eval_faces.split), "quantization": outcome.quantization}
        save_card(staged, staging.path(card_path.name))
    print(
        f"{args.model.parent / (name + '.onnx')}: INT8 top-1 {outcome.evaluations['int8'].accuracy * 100:.2f}% "
        f"vs FP32 {outcome.evaluations['fp32'].accuracy * 100:.2f}% on {eval_faces.split}"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from edge.contract import card_path_for, load_card
    from quantize.datasets import load_dataset
    from quantize.evaluate import confusion_table, evaluate_onnx, existing_model, save_confusion_png
    from quantize.outputs import StagedOutputs
    from quantize.training_data import default_cache_dir, framed_for_card

    card = load_card(card_path_for(existing_model(args.model))).raw  # a missing model is named before its card
    faces = framed_for_card(load_dataset(args.data, args.split), card, args.yunet, default_cache_dir(), log)
    ev = evaluate_onnx(args.model, faces, latency_runs=args.latency_runs)
    print(
        f"{args.model} on {args.data} [{args.split}]: {ev.count} faces"
        + (" aligned to the card's template" if card["crop"].get("align_template") else "")
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


def run_build(args: argparse.Namespace) -> int:
    from quantize.build import BuildOptions, build, output_name

    cfg = _distill_config(args)
    cfg.check()
    _check_crop_margin(args.crop_margin)
    output_name(args.out)  # a bad --out is refused now, not after training
    opts = BuildOptions(
        data=args.data,
        teachers=args.teacher,
        out=args.out,
        distill=cfg,
        faces=_face_options(args),
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
        calibrate=not args.no_calibrate,
        progress=sys.stderr.isatty(),
    )
    for path in build(opts, log):
        print(path)
    return 0
