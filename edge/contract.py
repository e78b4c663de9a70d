"""What the daemon (`edge`) and the offline tool (`quantize`) agree on, in the standard library alone.

Both sides import this module: the daemon to read a model, the tool to write one. Importing it pulls in
neither numpy, OpenCV, onnxruntime nor torch (`edge/__init__.py` imports nothing either), so the tool can use
it without loading the daemon's runtime, and a check of the card costs no model load.

- The model card: the JSON file beside an expression model that tells the daemon how to feed it. Written by
  `quantize build` (new_card, save_card), read by the daemon (load_card, parse_card). Only `labels`, `input`
  and `crop` are required; everything else (sha256, metrics, teachers, data set) is recorded for people and
  passed through.
- The canonical expression labels: the seven classes, in FER2013 order, that the tool trains and its cards list.
- The faults a user can cause: UserError (both command lines print it as one line and exit 2) and the
  card's ModelError.
- file_sha256: how a card fingerprints its model files, and how the daemon checks them.
- IMAGE_SUFFIXES: the image files both sides read (the daemon's folder source, the tool's image-folder data sets).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

CARD_SCHEMA_VERSION = 1
COLORS = ("gray", "rgb")
# How a grey face's grey levels are normalised before the model sees it, in training and in the daemon alike.
ILLUMINATIONS = ("none", "equalize", "clahe")
# A card's crop.margin lies strictly between these: the share of the face box added on each side.
CROP_MARGIN_LIMITS = (-0.5, 2.0)
LANDMARKS = 5  # YuNet's points: right eye, left eye, nose tip, right and left mouth corner
CANONICAL_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# Home Assistant's mood sensor reads this while no face has a settled expression, so no label may read as it.
NO_MOOD = "none"
# What OpenCV decodes and both sides accept; the union of the two lists each side once kept (the daemon's
# added .ppm).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})


# ---------------------------------------------------------------- faults a user can cause


class UserError(Exception):
    """A fault with a one-line explanation naming the cause and the fix; never shown as a traceback."""

    exit_status = 2


def first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's text cut to one line for a one-line error: a library's can run to pages, or be empty."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


class ModelError(UserError):
    """The expression model or its card is missing, corrupt or inconsistent."""


# ---------------------------------------------------------------- file fingerprints


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- the model card


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
    variant_sha256: dict[str, str] = field(default_factory=dict)  # precision -> hash of that variant's file
    precision: str | None = None
    illumination: str = "none"
    # Where the five landmarks land in the model's input, as fractions of its width and height; None: the crop
    # is cut from the detector's box instead.
    align_template: tuple[tuple[float, float], ...] | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


# What a precision variant adds to its model's name (`quantize build` writes x.onnx and x.fp32.onnx; QOperator
# and QDQ comparisons are x.qop.onnx and x.qdq.onnx): such files are not models of their own.
VARIANT_TAGS = (".fp32", ".int8", ".qop", ".qdq")


def card_path_for(model_path: Path) -> Path:
    """`models/x.onnx` -> `models/x.json`; a variant `models/x.fp32.onnx` (or x.int8.onnx) falls back to
    `models/x.json`. Only a precision tag is taken off, so a name with dots of its own (`fer.v2.fp32.onnx` ->
    `fer.v2.json`) finds its own card, never another model's `fer.json` beside it."""
    beside = model_path.with_suffix(".json")
    if beside.exists():
        return beside
    stem = model_path.stem
    tag = next((t for t in VARIANT_TAGS if stem.endswith(t)), "")
    return model_path.with_name(stem.removesuffix(tag) + ".json")


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
    # Each label names a device trigger in Home Assistant (edge/discovery.py) by its id, and a mood.
    ids = [id_slug(label) for label in labels]
    nameless = [label for label, id_ in zip(labels, ids) if not id_]
    if nameless:
        raise _fail(path, f"labels {nameless} have no letter a-z or digit to make a Home Assistant id of; rename them")
    clashing = [label for label, id_ in zip(labels, ids) if ids.count(id_) > 1]
    if clashing:
        raise _fail(path, f"labels {clashing} differ only in case or punctuation (one Home Assistant id); rename them")
    if NO_MOOD in ids:
        label = labels[ids.index(NO_MOOD)]
        raise _fail(path, f"label {label!r} reads as {NO_MOOD!r}, the mood Home Assistant shows for no mood; rename it")
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
    low, high = CROP_MARGIN_LIMITS
    if not isinstance(margin, (int, float)) or not low < margin < high:
        raise _fail(path, f"`crop.margin` must be a number between {low:g} and {high:g}, got {margin!r}")
    illumination = inp.get("illumination", "none")
    if illumination not in ILLUMINATIONS:
        raise _fail(path, f"`input.illumination` must be one of {', '.join(ILLUMINATIONS)}, got {illumination!r}")
    if illumination != "none" and color != "gray":
        raise _fail(path, f"`input.illumination` {illumination!r} needs a gray input")
    template = _parse_template(crop.get("align_template") if isinstance(crop, dict) else None, path)
    variants = data.get("variants", {})
    if not (isinstance(variants, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in variants.items())):
        raise _fail(path, "`variants` must map precision names to file names")
    sha256, variant_sha256 = data.get("sha256"), data.get("variant_sha256", {})
    if not (sha256 is None or _is_hex_digest(sha256)):
        raise _fail(path, f"`sha256` must be 64 hex digits, got {sha256!r}")
    if not (isinstance(variant_sha256, dict) and all(_is_hex_digest(v) for v in variant_sha256.values())):
        raise _fail(path, "`variant_sha256` must map precision names to 64 hex digits each")
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
        sha256=sha256,
        variants=dict(variants),
        variant_sha256=dict(variant_sha256),
        precision=data.get("precision"),
        illumination=illumination,
        align_template=template,
        raw=data,
    )


def _is_hex_digest(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value) is not None


def id_slug(text: str) -> str:
    """'Living-Room 2' -> 'living_room_2'; '' where no a-z or digit is left. The ids in discovery topics (a
    device's node id, its device triggers): Home Assistant keys entities by them, so this never changes."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _parse_template(value: Any, path: Path) -> tuple[tuple[float, float], ...] | None:
    try:
        return parse_align_template(value)
    except ValueError as exc:
        raise _fail(path, str(exc)) from None


def parse_align_template(value: Any) -> tuple[tuple[float, float], ...] | None:
    """A card's `crop.align_template` (None when absent); ValueError saying what a template must be."""
    if value is None:
        return None
    if not (
        isinstance(value, list)
        and len(value) == LANDMARKS
        and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in p)
            for p in value
        )
    ):
        raise ValueError(f"`crop.align_template` must be {LANDMARKS} [x, y] pairs of fractions between 0 and 1")
    return tuple((float(x), float(y)) for x, y in value)


def load_card(path: Path) -> ModelCard:
    """Read and validate a card file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        raise _fail(path, f"not UTF-8 text (byte {byte:#04x} at offset {exc.start}); save it as UTF-8") from None
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


def tool_version() -> str:
    """The installed edge-mood version, as a card records the tool that wrote it."""
    try:
        return version("edge-mood")
    except PackageNotFoundError:
        return "unknown"


def new_card(
    *,
    name: str,
    labels: list[str],
    channels: int,
    height: int,
    width: int,
    mean: list[float],
    std: list[float],
    crop_margin: float,
    precision: str,
    variants: dict[str, str],
    variant_sha256: dict[str, str],
    illumination: str = "none",
    align_template: list[list[float]] | None = None,
    **details: Any,
) -> dict[str, Any]:
    """A card dict; `details` (metrics, student, teachers, dataset, distillation, quantization) are recorded
    as given for people and passed through by the daemon (None values are left out)."""
    card: dict[str, Any] = {
        "schema": CARD_SCHEMA_VERSION,
        "name": name,
        "labels": list(labels),
        "input": {
            "shape": [1, channels, height, width],
            "color": "gray" if channels == 1 else "rgb",
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "illumination": illumination,
        },
        "crop": {"margin": crop_margin, **({"align_template": align_template} if align_template else {})},
        "output": "logits",
        "precision": precision,
        "variants": dict(variants),
        "variant_sha256": dict(variant_sha256),
        "sha256": variant_sha256[precision],
    }
    card.update({k: v for k, v in details.items() if v is not None})
    card["created"] = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    card["tool"] = {"name": "quantize", "version": tool_version()}
    return card


def save_card(card: dict[str, Any], path: Path) -> ModelCard:
    """Write `card` as JSON to `path` after checking it the way the daemon will read it: a card the daemon
    would refuse is a ModelError, and nothing is written."""
    try:
        parsed = parse_card(json.loads(json.dumps(card)), path)
    except ModelError as exc:
        raise ModelError(f"refusing to write a card the daemon would reject: {exc}") from None
    path.write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    return parsed
