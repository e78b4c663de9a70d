"""What a teacher expects, from a spec: `<file>.json` or `<file>.toml` beside the model, overridden by options on the
command line (`--teacher PATH:size=96,channels=3,mean=imagenet,labels=fer2013`). Spec keys:
  arch    resnet18..152 | densenet121/161/169/201 (checkpoints only; inferred from the keys when absent)
  head    classifier head spec, see quantize.archs (inferred when absent)
  labels  the model's output order: a list, "fer2013" (the canonical seven) or names joined by "/" on the command line
  input   {channels, size, mean, std, resize, scale, illumination}; mean/std may be "imagenet", "half" or "none";
          illumination "none" (default), "equalize" or "clahe" normalises grey levels first (edge.illumination)
  crop    {align_template}: the teacher sees each face aligned to these landmark positions (quantize.face_align)
  output  "logits" (default) or "probabilities" (a model ending in softmax; its log is used as logits)
  flip_average  true when the model's graph averages each face with its mirror image already (as a card says)
An edge model card (input.shape / input.color) is accepted as a spec too, so a model built by `quantize build`
teaches with its card: it sees faces framed and lit as it learnt them. Its FP32 variant finds the card that
lists it (`mood-m.fp32.onnx` -> `mood-m.json`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge.contract import CANONICAL_LABELS, card_path_for
from quantize.errors import QuantizeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

INPUT_KEYS = ("channels", "size", "mean", "std", "resize", "scale", "illumination")
TOP_KEYS = ("arch", "head", "labels", "output", "name", "flip_average")
# What else a spec file may hold: the card layout's input keys, a free-text input description, and notes for people
# that `quantize train-teacher` (quantize.teacher_run_files) and the shared teachers' training runs write.
FILE_INPUT_KEYS = (*INPUT_KEYS, "shape", "color", "from")
FILE_CROP_KEYS = ("align_template", "margin")
RECORD_KEYS = (
    "layout",
    "classifier",
    "trained_on",
    "labels_source",
    "alignment",
    "init",
    "validation",
    "val_top1_fliptta",
    "publictest_top1_fliptta",
    "publictest_top1_fliptta_raw",
    "publictest_top1_fliptta_ema",
    "epoch",
    "epochs",
    "epochs_done",
    "epochs_planned",
    "wall_minutes",
    "wall_seconds",
    "train",
    "recipe",
    "weights",
    "device",
    "dtype",
    "torch",
    "pt_bytes",
)


def parse_teacher_arg(text: str) -> tuple[Path, dict[str, Any]]:
    """(path, spec overrides) from `PATH` or `PATH:key=value,key=value` (lists inside a value joined by "/")."""
    split_at = None
    for i, ch in enumerate(text):
        if ch == ":" and (Path(text[:i]).is_file() or "=" in text[i + 1 :].split(",")[0]):
            split_at = i
            break
    if split_at is None:
        return Path(text), {}
    path, options = Path(text[:split_at]), text[split_at + 1 :]
    spec: dict[str, Any] = {}
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in INPUT_KEYS + TOP_KEYS:
            raise QuantizeError(
                f"teacher option {item!r} in {text!r}: use key=value with keys {', '.join(INPUT_KEYS + TOP_KEYS)}"
            )
        if key in INPUT_KEYS:
            spec.setdefault("input", {})[key] = value
        elif key == "head":
            spec["head"] = value.replace("+", ",")  # head tokens are joined by "+" on the command line
        else:
            spec[key] = value
    return path, spec


def find_spec_file(model_path: Path) -> Path | None:
    """The spec beside a teacher: `<stem>.json`, `<stem>.toml`, `<file>.json` or `<file>.toml`, else a model
    card beside it whose variants list the file."""
    for candidate in (
        model_path.with_suffix(".json"),
        model_path.with_suffix(".toml"),
        model_path.with_name(model_path.name + ".json"),
        model_path.with_name(model_path.name + ".toml"),
    ):
        if candidate != model_path and candidate.is_file():
            return candidate
    return _card_listing(model_path)


def _card_listing(model_path: Path) -> Path | None:
    card = card_path_for(model_path)  # mood-m.fp32.onnx -> mood-m.json, as the daemon finds it
    try:
        variants = json.loads(card.read_text(encoding="utf-8")).get("variants") or {}
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return card if model_path.name in variants.values() else None


def read_spec_file(path: Path) -> dict[str, Any]:
    """A teacher spec from JSON or TOML."""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise QuantizeError(f"cannot read teacher spec {path}: {exc}") from None
    if not isinstance(data, dict):
        raise QuantizeError(f"teacher spec {path} must be an object with arch/labels/input keys")
    unknown = [] if "schema" in data else _unknown_keys(data)  # a model card records much besides its spec
    if unknown:
        raise QuantizeError(
            f"teacher spec {path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"a spec's keys are {', '.join(TOP_KEYS)}, input ({', '.join(FILE_INPUT_KEYS[:-1])}) and crop "
            f"(align_template): rename or remove {'them' if len(unknown) > 1 else 'it'}"
        )
    return data


def _unknown_keys(data: Mapping[str, Any]) -> list[str]:
    """The keys of a spec file the tool would silently ignore: a misspelt or misplaced key ("classes",
    "input.norm", a top-level "mean") that the user means to take effect."""
    unknown = [key for key in data if key not in (*TOP_KEYS, "input", "crop", *RECORD_KEYS)]
    for section, known in (("input", FILE_INPUT_KEYS), ("crop", FILE_CROP_KEYS)):
        value = data.get(section)
        if isinstance(value, Mapping):
            unknown += [f"{section}.{key}" for key in value if key not in known]
    return unknown


def merge_specs(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, merging their "input" sections key by key."""
    merged = dict(base)
    for key, value in override.items():
        if key == "input" and isinstance(value, Mapping):
            merged["input"] = {**dict(base.get("input") or {}), **value}
        else:
            merged[key] = value
    return merged


def parse_labels(value: Any, where: str) -> list[str]:
    """A label list from a list, "fer2013"/"canonical", or names joined by "/" or ","."""
    if isinstance(value, str):
        if value.strip().lower() in ("fer2013", "canonical", "default"):
            return list(CANONICAL_LABELS)
        value = [v for v in value.replace("/", ",").split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise QuantizeError(f"{where}: labels must be a list of expression names or 'fer2013'")
    return [str(v).strip() for v in value]
