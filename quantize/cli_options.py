"""The options of the `quantize` subcommands, in groups that several of them share.

The choices come from the modules that use them, imported when the parser is built (they need torch).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def count(text: str) -> int:
    """An option counting things, where 0 means none: refused below 0 (argparse names the option)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def positive_count(text: str) -> int:
    """An option counting things that must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def points(text: str) -> float:
    """Accuracy points, 0 or more."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value:g} must be 0 or more accuracy points")
    return value


def add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where torch runs (default: cuda when available, else cpu)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")


def add_face_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Where the targets come from and how faces are framed and lit: the same options for a student and a teacher,
    so that a teacher can learn the very faces its student will."""
    from edge.contract import ILLUMINATIONS
    from quantize.training_data import FaceOptions

    f = FaceOptions()
    g = p.add_argument_group("labels and faces (training and the daemon alike)")
    g.add_argument(
        "--votes",
        type=Path,
        default=None,
        metavar="CSV",
        help="annotators' votes per face (FER+ layout, one row per row of the --data CSV): each face learns "
        "their distribution mixed with its own label",
    )
    g.add_argument(
        "--votes-weight",
        type=float,
        default=None,  # None: not given, told apart from the default (commands._votes_weight)
        help=f"share of the --votes in each face's target, the rest its own label (default {f.votes_weight:g})",
    )
    g.add_argument(
        "--align",
        action="store_true",
        help="align faces by their five YuNet landmarks onto the training faces' median; the card (a teacher's "
        "spec) records where, so the daemon (distillation) aligns faces the same way",
    )
    g.add_argument("--yunet", type=Path, default=None, help="YuNet ONNX for --align (default: the daemon's)")
    g.add_argument(
        "--illumination",
        default="none",
        choices=ILLUMINATIONS,
        help="grey-level normalisation of every face, in training and wherever the model runs (default %(default)s)",
    )
    return g


def add_distill_options(p: argparse.ArgumentParser) -> None:
    from quantize.distill_config import AUTOCAST_PRECISIONS, CLASS_BALANCE, DistillConfig
    from quantize.student import STUDENTS
    from quantize.student_augment import AUGMENT_LEVELS
    from quantize.training import OPTIMIZERS

    d = DistillConfig()
    p.add_argument("--data", type=Path, required=True, help="FER2013 CSV (.csv/.csv.gz) or image folder")
    p.add_argument(
        "--teacher",
        action="append",
        default=[],
        metavar="PATH[:key=value,...]",
        help="teacher model (.pt state_dict, TorchScript or .onnx) with its spec beside it or options "
        "such as :size=96,mean=imagenet; repeat for an ensemble; without one the student learns from the "
        "labels (or --votes) alone",
    )
    g = add_face_options(p)
    g.add_argument(
        "--augment",
        default=d.augment,
        choices=AUGMENT_LEVELS,
        help="training augmentation: basic (mirror, pose, light) or camera (basic plus exposure, blur, low "
        "resolution, noise, JPEG, occlusion) (default %(default)s)",
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
        "--logit-adjust",
        type=float,
        default=d.logit_adjust,
        metavar="TAU",
        help="train on logits + TAU * log(class prior) so the model's own logits are those of balanced "
        "classes (1 is the usual; default %(default)s: off)",
    )
    g.add_argument(
        "--ema-decay",
        type=float,
        default=d.ema_decay,
        metavar="DECAY",
        help="keep an exponential moving average of the student's weights, updated every step with DECAY "
        "(0.999 averages about the last 1000 steps); validation and the written model use the average "
        "(default %(default)s: off)",
    )
    g.add_argument(
        "--mixup",
        type=float,
        default=d.mixup,
        metavar="ALPHA",
        help="blend each training face with another of its batch, and their targets alike, the weight drawn "
        "from Beta(ALPHA, ALPHA) (0.2 is usual; default %(default)s: off)",
    )
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
        "--precision",
        default=d.precision,
        choices=AUTOCAST_PRECISIONS,
        help="student autocast (default: bf16 where supported)",
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
    add_device_options(p)


def add_int8_options(p: argparse.ArgumentParser) -> None:
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
        type=points,
        default=DEFAULT_MAX_DROP,
        help="refuse INT8 if its top-1 is more than this many points below FP32 (default %(default)s)",
    )
    g.add_argument("--allow-drop", action="store_true", help="write the INT8 model even past --max-drop")
    g.add_argument(
        "--eval-split",
        default="test",
        help="split for accuracy and the INT8 gate (default %(default)s = PublicTest for FER2013)",
    )
    g.add_argument("--latency-runs", type=count, default=200, help="timed single-face runs (default %(default)s)")


def add_test_time_view_options(p: argparse.ArgumentParser) -> None:
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


def add_train_teacher_options(parser: argparse.ArgumentParser) -> None:
    """Options of `quantize train-teacher`."""
    from quantize.archs import ARCH_NAMES
    from quantize.teacher_config import TEACHER_AUTOCAST, TrainConfig

    d = TrainConfig()
    parser.add_argument("--data", required=True, help="FER2013 CSV (.csv/.csv.gz) or folder with train/ and test/")
    parser.add_argument("--out", required=True, help="weights file to write, e.g. teachers/resnet34_fer.pt")
    parser.add_argument("--arch", default=d.arch, choices=ARCH_NAMES, help="network (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="default %(default)s")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    parser.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default 0.1*batch/256 for sgd, 1e-3 for adamw)"
    )
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default=d.optimizer, help="default %(default)s")
    parser.add_argument("--weight-decay", type=float, default=None, help="default 5e-4 (sgd) or 0.05 (adamw)")
    parser.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="default %(default)s")
    parser.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="default %(default)s")
    parser.add_argument(
        "--size", type=int, default=d.size, help="input side in pixels, faces are resized from 48 (default %(default)s)"
    )
    parser.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=d.channels,
        help="3 = grey replicated, torchvision convention (default %(default)s)",
    )
    parser.add_argument("--mean", default="imagenet", help="imagenet, half, none or numbers a/b/c")
    parser.add_argument("--std", default=None, help="like --mean (default: the --mean preset's std)")
    parser.add_argument("--head", default=d.head, help="classifier head, e.g. linear or dropout:0.3,linear")
    parser.add_argument(
        "--val-split",
        default=d.val_split,
        help="split used to pick the best epoch (default %(default)s = PublicTest for FER2013)",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=None, help="hold out this fraction of train for validation instead"
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="WEIGHTS",
        help="start from these trained weights (a state_dict of the same --arch and --head, e.g. a teacher of "
        "../shared/teachers) instead of from scratch: fine-tuning",
    )
    add_face_options(parser)
    parser.add_argument("--device", default=d.device, help="auto, cpu or cuda (default %(default)s)")
    parser.add_argument(
        "--precision",
        default=d.precision,
        choices=TEACHER_AUTOCAST,
        help="autocast precision (default: bf16, fp16 on GPUs without bf16)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--limit", type=positive_count, default=None, help="train on this many faces only (smoke runs)")
    parser.add_argument("--skip-corrupt", action="store_true", help="leave out unreadable images instead of failing")
    parser.add_argument(
        "--stop-after-epochs",
        type=positive_count,
        default=None,
        help="end this run after N epochs; rerun the same command to continue",
    )
    parser.add_argument(
        "--time-budget-min",
        type=float,
        default=None,
        help="end this run before an epoch that would overrun this many minutes; rerun to continue",
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="start over even if <out>.resume.pt exists from an earlier run"
    )
