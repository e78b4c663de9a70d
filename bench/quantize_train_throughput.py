"""Training and evaluation throughput of train-teacher architectures on this machine; prints a table.

  python bench/quantize_train_throughput.py [--batches 4] [--batch-size 64] [--threads N] [--configs resnet18@64 ...]

Runs real optimizer steps (augmentation included) on random 48x48 faces; no data set needed. Evaluation is
inference in eval mode, float32 and under the training autocast.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from quantize.archs import build_arch
from quantize.datasets import FaceSet
from quantize.teacher_augment import Augmentation
from quantize.teacher_config import TrainConfig, make_autocast
from quantize.train_teacher import train_step, validation_top1
from quantize.training import make_optimizer

DEFAULT_CONFIGS = ("resnet18@64:fp32", "resnet18@64", "resnet18@96", "resnet34@64", "densenet121@64")


def measure(spec: str, batches: int, batch_size: int, eval_faces: int) -> dict[str, float | str]:
    arch_size, _, precision = spec.partition(":")
    arch, _, size = arch_size.partition("@")
    cfg = TrainConfig(
        arch=arch, size=int(size), batch_size=batch_size, precision=precision or "bf16", device="cpu"
    ).resolved()
    pre = cfg.preprocessing()
    model = build_arch(arch, 7).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 48, 48), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 7, (batch_size,), generator=gen)
    augment = Augmentation()
    model.train()

    def step() -> None:
        x = pre.normalise(augment(images, (cfg.size, cfg.size), gen)).contiguous(memory_format=torch.channels_last)
        train_step(model, x, labels, optimizer, scaler, criterion, make_autocast(cfg))

    step()  # first step pays for oneDNN kernel selection
    times = []
    for _ in range(batches):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    train_ips = batch_size / statistics.median(times)  # the median resists other jobs on a shared machine

    faces = FaceSet(
        images.repeat(eval_faces // batch_size + 1, 1, 1)[:eval_faces].numpy(),
        labels.repeat(eval_faces // batch_size + 1)[:eval_faces].numpy(),
        "random",
        "bench",
    )
    results: dict[str, float | str] = {"config": f"{arch}@{size} {cfg.precision}", "train_img_s": train_ips}
    for name, for_eval in (("eval_fp32_img_s", True), ("eval_autocast_img_s", False)):
        autocast = make_autocast(cfg, for_eval=for_eval)
        validation_top1(model, faces.subset(slice(0, 32)), pre, torch.device("cpu"), autocast=autocast, flip_tta=False)
        started = time.perf_counter()
        validation_top1(model, faces, pre, torch.device("cpu"), autocast=autocast, flip_tta=False)
        results[name] = eval_faces / (time.perf_counter() - started)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-faces", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(DEFAULT_CONFIGS),
        help="arch@size[:precision], precision bf16 (default) or fp32",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, median of "
        f"{args.batches} timed batches, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"{'config':<24}{'train img/s':>12}{'epoch (28709) min':>19}{'eval fp32 img/s':>17}{'eval autocast img/s':>21}"
    )
    for spec in args.configs:
        r = measure(spec, args.batches, args.batch_size, args.eval_faces)
        epoch_min = 28709 / float(r["train_img_s"]) / 60
        print(
            f"{r['config']:<24}{r['train_img_s']:>12.1f}{epoch_min:>19.1f}{r['eval_fp32_img_s']:>17.1f}"
            f"{r['eval_autocast_img_s']:>21.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
