"""`quantize`: train teachers, distill a student, export, quantize to INT8, evaluate, or do it all with `build`.

Every fault a user can cause ends as one line "error: ..." on stderr and exit status 2, with no output file
left half-written.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import warnings
from pathlib import Path
from typing import NoReturn

from edge.contract import UserError
from quantize import commands
from quantize.cli_options import (
    add_distill_options,
    add_int8_options,
    add_test_time_view_options,
    add_train_teacher_options,
    count,
)

# Packages of the [quantize] extra; a missing one is an installation problem, not a bug.
EXTRA_PACKAGES = ("torch", "onnx", "onnxscript", "tqdm", "matplotlib")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="quantize", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train-teacher", help="train a big teacher network on a data set")
    add_train_teacher_options(p)
    p.set_defaults(func=commands.run_train_teacher)

    p = sub.add_parser("distill", help="distill teachers into a student checkpoint (.pt)")
    add_distill_options(p)
    p.add_argument("--out", type=Path, required=True, help="student checkpoint to write, e.g. work/student.pt")
    p.set_defaults(func=commands.run_distill)

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
    add_test_time_view_options(p)
    p.set_defaults(func=commands.run_export)

    p = sub.add_parser("int8", help="NAME.fp32.onnx -> NAME.onnx (INT8) with FP32 vs INT8 evaluation")
    p.add_argument("--model", type=Path, required=True, help="FP32 model with its card, e.g. models/NAME.fp32.onnx")
    p.add_argument("--data", type=Path, required=True, help="data set for calibration (train) and evaluation")
    add_int8_options(p)
    p.add_argument(
        "--yunet",
        type=Path,
        default=None,
        help="YuNet ONNX for the landmarks of an aligned model's faces (default: the daemon's)",
    )
    p.set_defaults(func=commands.run_int8)

    p = sub.add_parser("eval", help="accuracy, confusion and latency of an ONNX model through its card")
    p.add_argument("--model", type=Path, required=True, help="ONNX model with its card beside it")
    p.add_argument("--data", type=Path, required=True, help="FER2013 CSV or image folder")
    p.add_argument("--split", default="test", help="split to evaluate (default %(default)s)")
    p.add_argument("--png", type=Path, default=None, help="also save the confusion matrix as this PNG")
    p.add_argument("--latency-runs", type=count, default=200, help="timed single-face runs, 0 to skip")
    p.add_argument(
        "--yunet",
        type=Path,
        default=None,
        help="YuNet ONNX for the landmarks of an aligned model's faces (default: the daemon's)",
    )
    p.set_defaults(func=commands.run_eval)

    p = sub.add_parser("build", help="the whole chain: distill, export, INT8, card, report")
    add_distill_options(p)
    add_int8_options(p)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="models/NAME: writes NAME.onnx, NAME.fp32.onnx, NAME.json, NAME.md and NAME.*.png",
    )
    p.add_argument("--crop-margin", type=float, default=0.1, help="card crop margin (default %(default)s)")
    p.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "legacy"), help="default %(default)s")
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="keep the student's own confidence instead of fitting a temperature on the hold-out faces",
    )
    add_test_time_view_options(p)
    p.set_defaults(func=commands.run_build)
    return parser


def _one_line_warning(message: Warning | str, *_args: object, **_kwargs: object) -> None:
    """warnings.showwarning for a command line: the message, not the source file and line that raised it."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning
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
        _error(str(exc))
    except ModuleNotFoundError as exc:
        if exc.name not in EXTRA_PACKAGES:
            raise
        _error(
            f"the quantize tool needs the optional package {exc.name}; install it with "
            "pip install 'edge-mood[quantize]'"
        )
    except OSError as exc:  # file not found, permission denied, disk full: name the file and the cause
        where = f" {exc.filename}" if exc.filename else ""
        fix = (
            "free some space or choose another --out" if exc.errno == errno.ENOSPC else "check the path and permissions"
        )
        _error(f"{exc.strerror or exc}{':' + where if where else ''}; {fix}")
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr, flush=True)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
