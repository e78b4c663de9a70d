"""Full-size `quantize build` on FER2013 from ../shared, then a table of teachers and the student's variants.

    python bench/quantize_fer2013.py                       # shared ResNet-18 teacher, student s, 40 epochs
    python bench/quantize_fer2013.py --teacher a.pt --teacher b.onnx --student m --epochs 60 --out models/fer_m
    python bench/quantize_fer2013.py --table-only          # reprint the table of an existing build

Columns: parameters, file size, top-1 on PublicTest (teachers flip-averaged, as their cards report; the
student as the daemon runs it, which averages face and mirror inside the graph when built with
--flip-average), and ms per face at batch 1 on one thread (median). Long: hours on two CPU cores (see
docs/model.md); rerunning the same command resumes an interrupted distillation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edge.contract import file_sha256
from quantize.build import BuildOptions, QuantizeOptions, build
from quantize.datasets import load_dataset
from quantize.distill_config import DistillConfig
from quantize.student import views_label
from quantize.teacher_spec import parse_teacher_arg
from quantize.teacher_targets import teacher_logits
from quantize.teachers import load_teacher
from quantize.training_data import default_cache_dir

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FER = SHARED / "data" / "fer2013" / "fer2013.csv.gz"
DEFAULT_TEACHER = SHARED / "teachers" / "resnet18_fer2013_96.pt"


def teacher_ms(path: str, runs: int = 30) -> float:
    """Median ms for one face through a teacher at batch 1 on one torch thread."""
    teacher = load_teacher(path)
    face = np.zeros((1, 48, 48), np.uint8)
    for _ in range(3):
        teacher.logits(face, batch_size=1)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        teacher.logits(face, batch_size=1)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def ensemble_top1(teacher_paths: list[str], data: Path, split: str) -> float:
    """Top-1 of the teachers' mean probability, each teacher's logits first averaged over face and mirror (as
    teacher accuracy is scored; --teacher-flip-average averages probabilities instead), from the teacher
    outputs `quantize build` cached."""
    faces = load_dataset(data, split)
    probs = 0
    for path in teacher_paths:
        teacher = load_teacher(path)
        clean, mirror = teacher_logits(
            teacher, file_sha256(teacher.path), faces, default_cache_dir(), log=lambda _: None
        )
        probs = probs + torch.softmax(torch.from_numpy((clean + mirror) / 2), dim=1).numpy()
    return float((probs.argmax(1) == faces.labels).mean())


def print_table(card_path: Path, teacher_paths: list[str], data: Path) -> None:
    card = json.loads(card_path.read_text())
    metrics, lat = card["metrics"], card["metrics"]["latency_ms"]
    rows = [("model", "params", "size", "top-1", "ms/face")]
    teacher_rows = []
    for record, path in zip(card["teachers"], teacher_paths):
        teacher_rows.append(
            (
                f"teacher {record['name']} ({record.get('arch') or record['backend']})",
                record.get("params") or 0,
                parse_teacher_arg(path)[0].stat().st_size / 2**20,
                f"{record['accuracy'] * 100:.2f}% (flip)",
                teacher_ms(path),
            )
        )
    if len(teacher_paths) > 1:
        top1 = ensemble_top1(teacher_paths, data, metrics["eval_split"])
        teacher_rows.append(
            (
                "teacher ensemble (mean probability)",
                sum(r[1] for r in teacher_rows),
                sum(r[2] for r in teacher_rows),
                f"{top1 * 100:.2f}% (flip)",
                sum(r[4] for r in teacher_rows),
            )
        )
    for name, params, mib, top1, ms in teacher_rows:
        rows.append((name, f"{params:,}" if params else "-", f"{mib:.1f} MiB", top1, f"{ms:.2f}"))
    params = f"{card['student']['params']:,}"
    views = views_label(bool(card.get("flip_average")), card.get("zoom_views", []))
    in_graph = f" ({views} in graph)" if views else ""
    for key, title in (("fp32", "FP32"), ("int8", "INT8 QDQ"), ("int8_qoperator", "INT8 QOperator")):
        rows.append(
            (
                f"student {card['student']['arch']} {title}{in_graph}",
                params,
                f"{metrics[key]['size_bytes'] / 1024:.0f} KiB",
                f"{metrics[key]['top1'] * 100:.2f}%",
                f"{lat[key]['median']:.3f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    print(
        f"\n{card['name']} on {metrics['eval_split']} ({metrics['fp32']['faces']} faces), "
        f"batch 1, 1 thread, {lat['machine']}, onnxruntime {lat['onnxruntime']}"
    )
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=FER)
    parser.add_argument("--teacher", action="append", default=None, help=f"default {DEFAULT_TEACHER}")
    parser.add_argument("--student", default="s")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None, help="default models/fer2013_<student>")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training")
    parser.add_argument("--table-only", action="store_true", help="print the table of an existing build")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"error: {args.data} not found; this benchmark needs ../shared", file=sys.stderr)
        return 2
    teachers = args.teacher or [str(DEFAULT_TEACHER)]
    out = args.out or Path("models") / f"fer2013_{args.student}"
    if not args.table_only:
        if args.threads:
            torch.set_num_threads(args.threads)
        opts = BuildOptions(
            data=args.data,
            teachers=teachers,
            out=out,
            device=args.device,
            distill=DistillConfig(student=args.student, epochs=args.epochs),
            quantize=QuantizeOptions(),
            progress=sys.stderr.isatty(),
        )
        started = time.monotonic()
        build(opts, lambda m: print(m, file=sys.stderr, flush=True))
        print(f"build took {(time.monotonic() - started) / 60:.1f} min", file=sys.stderr)
    torch.set_num_threads(1)
    print_table(out.with_name(out.name + ".json"), teachers, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
