"""The model card: the JSON file beside an expression model that tells the daemon how to feed it.

Written by `quantize build`, read by the daemon. Only `labels`, `input` and `crop` are required;
everything else (sha256, metrics, teachers, data set) is recorded for people and passed through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ModelError

CARD_SCHEMA_VERSION = 1
COLORS = ("gray", "rgb")


@dataclass(frozen=True)
class ModelCard:
    labels: list[str]
    channels: int
    height: int
    width: int
    color: str
    mean: list[float]
    std: list[float]
    crop_margin: float
    name: str
    sha256: str | None = None
    # Other precisions of the same model shipped beside it: {"fp32": "x.fp32.onnx", "int8": "x.onnx"}.
    variants: dict[str, str] = field(default_factory=dict)
    precision: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def card_path_for(model_path: Path) -> Path:
    """`models/x.onnx` -> `models/x.json`; `models/x.fp32.onnx` falls back to `models/x.json`."""
    beside = model_path.with_suffix(".json")
    if beside.exists():
        return beside
    stem = model_path.name.split(".")[0]
    return model_path.with_name(stem + ".json")


def _fail(path: Path, what: str) -> ModelError:
    return ModelError(f"model card {path}: {what}; rebuild it with `quantize build` or fix the file")


def parse_card(data: dict[str, Any], path: Path) -> ModelCard:
    """Validate a card dict; raise ModelError naming the first bad field."""
    if not isinstance(data, dict):
        raise _fail(path, "top level is not a JSON object")
    labels = data.get("labels")
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x for x in labels)):
        raise _fail(path, "`labels` must be a list of at least two non-empty names")
    if len(set(labels)) != len(labels):
        raise _fail(path, "`labels` has duplicate names")
    inp = data.get("input")
    if not isinstance(inp, dict):
        raise _fail(path, "`input` object is missing")
    shape = inp.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(x, int) and x > 0 for x in shape[1:])):
        raise _fail(path, f"`input.shape` must be [1, C, H, W] with positive integers, got {shape!r}")
    channels, height, width = shape[1], shape[2], shape[3]
    color = inp.get("color")
    if color not in COLORS:
        raise _fail(path, f"`input.color` must be one of {', '.join(COLORS)}, got {color!r}")
    if (color == "gray") != (channels == 1) or channels not in (1, 3):
        raise _fail(path, f"`input.color` {color!r} does not fit {channels} input channels")
    mean, std = inp.get("mean", [0.0] * channels), inp.get("std", [1.0] * channels)
    for key, values in (("mean", mean), ("std", std)):
        if not (
            isinstance(values, list)
            and len(values) in (1, channels)
            and all(isinstance(v, (int, float)) for v in values)
        ):
            raise _fail(path, f"`input.{key}` must be a list of 1 or {channels} numbers, got {values!r}")
    if any(v == 0 for v in std):
        raise _fail(path, "`input.std` must not contain 0")
    crop = data.get("crop", {})
    margin = crop.get("margin", 0.0) if isinstance(crop, dict) else None
    if not isinstance(margin, (int, float)) or not -0.5 < margin < 2.0:
        raise _fail(path, f"`crop.margin` must be a number between -0.5 and 2, got {margin!r}")
    variants = data.get("variants", {})
    if not (isinstance(variants, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in variants.items())):
        raise _fail(path, "`variants` must map precision names to file names")
    return ModelCard(
        labels=list(labels),
        channels=channels,
        height=height,
        width=width,
        color=color,
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        crop_margin=float(margin),
        name=str(data.get("name") or path.stem),
        sha256=data.get("sha256"),
        variants=dict(variants),
        precision=data.get("precision"),
        raw=data,
    )


def load_card(path: Path) -> ModelCard:
    """Read and validate a card file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(
            f"model card {path} not found; every model needs its card beside it "
            f"(<model>.json, written by `quantize build`)"
        ) from None
    except OSError as exc:
        raise ModelError(f"model card {path} cannot be read ({exc.strerror}); check its permissions") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return parse_card(data, path)
