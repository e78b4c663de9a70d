"""A tiny but real ONNX expression classifier, with its model card, for tests.

`write_tiny_model(folder)` writes `<name>.onnx` + `<name>.json` (card) and returns the model path. The graph is
input [N, C, H, W] float -> GlobalAveragePool -> Flatten -> Gemm -> len(labels) logits, built with
onnx.helper (no torch), with fixed weights:

    logit[bright_label] = +gain * mean(x),  logit[dark_label] = -gain * mean(x),  other logits = 0

where x is the normalised input (card mean 0.5, std 0.5, so x lies in [-1, 1]). So the prediction follows the
crop's mean brightness: a bright face -> "happy", a dark one -> "sad", mid-grey (128) -> all labels nearly
equal. Tests can therefore tell predictions apart and check they come from the real pixels.

With `variants=True` it writes the pair the daemon chooses between: `<name>.onnx` (int8: Gemm weights stored
as int8 and dequantized in the graph) and `<name>.fp32.onnx`, and a card listing both, with `sha256` of the
main (int8) file and `variant_sha256` for both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FER_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
OPSET = 13
IR_VERSION = 8  # readable by onnxruntime releases a Pi may still run


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weights(channels: int, labels: list[str], bright_label: str, dark_label: str, gain: float) -> np.ndarray:
    weights = np.zeros((channels, len(labels)), np.float32)
    # Each channel contributes its share, so the logit follows the mean over all channels.
    weights[:, labels.index(bright_label)] = gain / channels
    weights[:, labels.index(dark_label)] = -gain / channels
    return weights


def build_tiny_graph(
    *,
    channels: int,
    height: int,
    width: int,
    labels: list[str],
    batch: int | None,
    int8: bool,
    bright_label: str,
    dark_label: str,
    gain: float,
) -> onnx.ModelProto:
    """The classifier graph; see the module docstring for what it computes."""
    weights = _weights(channels, labels, bright_label, dark_label, gain)
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
    ]
    if int8:
        scale = np.float32(np.abs(weights).max() / 127 or 1.0)
        initializers = [
            numpy_helper.from_array(np.round(weights / scale).astype(np.int8), "w_q"),
            numpy_helper.from_array(np.array(scale, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"]))
    else:
        initializers = [numpy_helper.from_array(weights, "w")]
    initializers.append(numpy_helper.from_array(np.zeros(len(labels), np.float32), "b"))
    nodes.append(helper.make_node("Gemm", ["features", "w", "b"], ["logits"]))
    batch_dim: int | str = batch if batch is not None else "N"
    graph = helper.make_graph(
        nodes,
        "tiny_expression",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch_dim, channels, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch_dim, len(labels)])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_tiny_model(
    folder: Path,
    name: str = "tiny",
    *,
    color: str = "gray",
    size: int | tuple[int, int] = 48,
    labels: list[str] | None = None,
    batch: int | None = None,
    variants: bool = False,
    output: str = "logits",
    margin: float = 0.1,
    bright_label: str | None = None,
    dark_label: str | None = None,
    gain: float = 6.0,
    card_extra: dict[str, Any] | None = None,
) -> Path:
    """Write a tiny classifier and its card into `folder`; return the main model's path.

    color: "gray" (1 channel) or "rgb" (3); size: H = W or (H, W); labels: default FER2013's seven;
    batch: None for a dynamic batch dimension, or a fixed size (1 = the daemon must run faces one by one);
    variants: also write the fp32 + int8 pair (main file is int8); output: the card's "output" field;
    bright_label/dark_label: default "happy"/"sad" (else the first/last label); card_extra: merged into the
    card last, so tests can break it on purpose.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = list(labels or FER_LABELS)
    height, width = (size, size) if isinstance(size, int) else size
    channels = 1 if color == "gray" else 3
    bright = bright_label or ("happy" if "happy" in labels else labels[0])
    dark = dark_label or ("sad" if "sad" in labels else labels[-1])

    def save(file_name: str, int8: bool) -> Path:
        model = build_tiny_graph(
            channels=channels,
            height=height,
            width=width,
            labels=labels,
            batch=batch,
            int8=int8,
            bright_label=bright,
            dark_label=dark,
            gain=gain,
        )
        path = folder / file_name
        onnx.save(model, str(path))
        return path

    card: dict[str, Any] = {
        "schema": 1,
        "name": name,
        "labels": labels,
        "input": {
            "shape": [1, channels, height, width],
            "color": color,
            "mean": [0.5] * channels,
            "std": [0.5] * channels,
        },
        "crop": {"margin": margin},
        "output": output,
        "created": "2026-01-01T00:00:00Z",
    }
    if variants:
        main = save(f"{name}.onnx", int8=True)
        fp32 = save(f"{name}.fp32.onnx", int8=False)
        card.update(
            precision="int8",
            variants={"int8": main.name, "fp32": fp32.name},
            variant_sha256={"int8": _sha256(main), "fp32": _sha256(fp32)},
        )
    else:
        main = save(f"{name}.onnx", int8=False)
        card["precision"] = "fp32"
    card["sha256"] = _sha256(main)
    card.update(card_extra or {})
    (folder / f"{name}.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    return main
