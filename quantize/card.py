"""The model card JSON the daemon reads beside `<name>.onnx`, checked with the daemon's own parser before writing."""

from __future__ import annotations

import datetime as dt
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from edge.errors import ModelError
from edge.model_card import CARD_SCHEMA_VERSION, ModelCard, parse_card
from quantize.errors import QuantizeError


def tool_version() -> str:
    try:
        return version("edge-mood")
    except PackageNotFoundError:
        return "unknown"


def make_card(
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
    **details: Any,
) -> dict[str, Any]:
    """A card dict; `details` (metrics, student, teachers, dataset, distillation, quantization) are recorded
    as given for people and passed through by the daemon."""
    card: dict[str, Any] = {
        "schema": CARD_SCHEMA_VERSION,
        "name": name,
        "labels": list(labels),
        "input": {
            "shape": [1, channels, height, width],
            "color": "gray" if channels == 1 else "rgb",
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
        },
        "crop": {"margin": crop_margin},
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


def validate(card: dict[str, Any], path: Path) -> ModelCard:
    """The daemon's view of `card`; a card it would refuse is a QuantizeError here."""
    try:
        return parse_card(json.loads(json.dumps(card)), path)
    except ModelError as exc:
        raise QuantizeError(f"refusing to write a card the daemon would reject: {exc}") from None


def write_card(card: dict[str, Any], path: Path) -> ModelCard:
    """Validate and write `card` as JSON to `path` (a staged temporary name; the caller renames it)."""
    parsed = validate(card, path)
    path.write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    return parsed


def read_card_dict(path: Path) -> dict[str, Any]:
    """A card file as a dict, validated like the daemon does (missing or broken files are user errors)."""
    from edge.model_card import load_card

    try:
        return load_card(path).raw
    except ModelError as exc:
        raise QuantizeError(str(exc)) from None
