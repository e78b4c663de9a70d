"""Static INT8 quantization with onnxruntime, calibrated on real training faces.

Steps, as onnxruntime recommends: quant_pre_process (shape inference + graph optimisation), then
quantize_static with per-channel INT8 weights. QDQ is the shipped format (onnxruntime's CPU kernels are
tuned for it); QOperator is produced for comparison. Activations default to signed INT8, onnxruntime's
recommendation for ARM CPUs such as the Raspberry Pi's Cortex-A; "uint8" is the choice for x86 without VNNI.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from quantize.datasets import FaceSet, stratified_split
from quantize.errors import QuantizeError

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
ACTIVATION_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
DEFAULT_MAX_DROP = 1.0  # top-1 points INT8 may lose against FP32 before the tool refuses to write it


class _IntegerTensorNotes(logging.Filter):
    """Drops onnxruntime's warning for each integer tensor it cannot quantize (such as the target size of the
    Resize in a zoom view): those stay integers by design, and the warning would read like a fault."""

    # ONNX element types: 6 INT32, 7 INT64.
    _NOTE = re.compile(r"unsupported type to quantize for tensor .*elem_type: [67]\b", re.DOTALL)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self._NOTE.search(record.getMessage())


class FaceBatches(CalibrationDataReader):
    """Feeds prepared faces (N, C, H, W) to the calibrator one at a time: the histogram calibrators (entropy,
    percentile) stack per-run outputs and fail on a ragged last batch."""

    def __init__(self, inputs: np.ndarray, input_name: str = "input") -> None:
        self._batches = iter([inputs[i : i + 1] for i in range(len(inputs))])
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch}


def calibration_faces(train: FaceSet, count: int = 300, seed: int = 0) -> FaceSet:
    """`count` training faces drawn per class in the set's proportions, the same ones for the same seed."""
    if count >= len(train):
        return train
    return stratified_split(train, count / len(train), seed)[1]


def quantize_onnx(
    fp32_path: Path,
    out_path: Path,
    calibration_inputs: np.ndarray,
    *,
    method: str = "minmax",
    fmt: str = "qdq",
    activations: str = "int8",
    per_channel: bool = True,
) -> None:
    """Write the INT8 version of `fp32_path` to `out_path`; `calibration_inputs` are prepared model inputs."""
    for value, allowed, what in (
        (method, CALIBRATION_METHODS, "calibration method"),
        (fmt, FORMATS, "format"),
        (activations, ACTIVATION_TYPES, "activation type"),
    ):
        if value not in allowed:
            raise QuantizeError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    # The calibrators print progress notes to stdout, which belongs to the command's result.
    notes = _IntegerTensorNotes()
    logging.getLogger().addFilter(notes)  # onnxruntime.quantization logs through the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="quantize-") as tmp, contextlib.redirect_stdout(io.StringIO()):
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(fp32_path), str(prepared))
            quantize_static(
                str(prepared),
                str(out_path),
                FaceBatches(calibration_inputs),
                quant_format=FORMATS[fmt],
                per_channel=per_channel,
                activation_type=ACTIVATION_TYPES[activations],
                weight_type=QuantType.QInt8,
                calibrate_method=CALIBRATION_METHODS[method],
            )
    finally:
        logging.getLogger().removeFilter(notes)


def check_accuracy_drop(fp32_top1: float, int8_top1: float, max_drop: float, allow: bool) -> float:
    """Top-1 points lost by INT8; more than `max_drop` is a QuantizeError unless `allow`."""
    drop = (fp32_top1 - int8_top1) * 100
    if drop > max_drop and not allow:
        raise QuantizeError(
            f"INT8 top-1 {int8_top1 * 100:.2f}% is {drop:.2f} points below FP32 {fp32_top1 * 100:.2f}% "
            f"(limit {max_drop:g}); try --calibration entropy or percentile, or pass --allow-drop to keep it"
        )
    return drop
