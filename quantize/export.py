"""Export a student to ONNX (input "input", output "logits", dynamic batch) and prove it computes what torch does.

BatchNorm is folded into the convolutions in torch before export, so the graph holds only Conv, Clip (ReLU6),
Add, a global average, Reshape/Flatten and Gemm; with test-time views also the Slice/Resize/Concat that make
the views and the Reshape/ReduceMean that average their logits. The torch.export-based exporter is tried first; the
TorchScript one is the fallback. An export counts only if onnxruntime's logits match the unfolded torch
model's within PARITY_ATOL on the sample batch and at batch 1 (the dynamic axis).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edge.contract import first_line
from quantize.errors import QuantizeError
from quantize.student import Student, ViewAveraged, fold_batchnorm
from quantize.training import to_memory_format

PARITY_ATOL = 1e-4
DIVERGED_LOGIT = 1e4  # a trained classifier's logits stay within tens; far beyond, training blew up
OPSET = 18
EXPORTERS = ("dynamo", "legacy")


@dataclass(frozen=True)
class ExportReport:
    exporter: str
    opset: int
    max_abs_diff: float


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, exporter: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            # Its registry warns once per missing torchvision op; irrelevant to a plain CNN.
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                verbose=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
            )
        else:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )


def parity(path: Path, model: torch.nn.Module, sample: np.ndarray) -> float:
    """Largest |onnxruntime - torch| logit difference over `sample` and over its first face alone."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for batch in (sample, sample[:1]):
            expected = model(torch.from_numpy(batch)).numpy()
            got = session.run(["logits"], {"input": batch})[0]
            worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def refuse_diverged(model: torch.nn.Module, sample: np.ndarray) -> None:
    """NaN - NaN compares as no difference, and logits in the millions differ by rounding alone: neither is a
    model to export, and neither is an exporter's fault. Said before any file is written."""
    with torch.no_grad():
        largest = float(model(torch.from_numpy(sample)).abs().max())
    if not largest <= DIVERGED_LOGIT:
        raise QuantizeError(
            f"the student's logits reach {largest:.3g}: its training diverged; distill it again with a lower --lr"
        )


def export_student(
    model: Student,
    path: Path,
    sample: np.ndarray,
    exporter: str = "auto",
    flip_average: bool = False,
    zooms: tuple[float, ...] = (),
) -> ExportReport:
    """Write `model` as ONNX to `path`; `sample` is a float32 (N, C, H, W) batch of real inputs.

    exporter "auto" tries dynamo then legacy and keeps the first that passes parity. With `flip_average` and/or
    `zooms` the graph returns the mean of the logits of each face's views (student.ViewAveraged)."""
    student = to_memory_format(model.float(), torch.contiguous_format).eval().cpu()
    # `reference` is what the graph must compute; `folded` is what gets exported.
    reference: torch.nn.Module = student
    folded: torch.nn.Module = fold_batchnorm(student)
    if flip_average or zooms:
        size = sample.shape[-1]
        reference = ViewAveraged(student, size, flip_average, zooms).eval()
        folded = ViewAveraged(folded, size, flip_average, zooms).eval()
    refuse_diverged(reference, sample)
    example = torch.from_numpy(sample[:2].copy())
    failures: list[str] = []
    for name in EXPORTERS if exporter == "auto" else (exporter,):
        try:
            _export(folded, example, path, name)
        except OSError as exc:  # a full disk or unwritable folder fails every exporter alike: say that instead
            path.unlink(missing_ok=True)
            raise OSError(exc.errno, exc.strerror, exc.filename or str(path)) from None
        except Exception as exc:  # exporter internals raise many types; the next exporter may still work
            failures.append(f"{name}: {type(exc).__name__}: {first_line(exc)}")
            continue
        diff = parity(path, reference, sample)
        if diff < PARITY_ATOL:
            return ExportReport(name, OPSET, diff)
        failures.append(f"{name}: onnxruntime differs from torch by {diff:.2e} (limit {PARITY_ATOL:.0e})")
    path.unlink(missing_ok=True)
    raise QuantizeError(f"ONNX export failed ({'; '.join(failures)}); check the torch and onnx versions")
