"""Where the daemon looks for the shipped expression model and the face detector."""

from __future__ import annotations

import sys
from pathlib import Path

from edge.errors import ModelError

# A source checkout keeps models/ beside edge/; a pip install puts it under <prefix>/share/edge-mood.
_CHECKOUT_MODELS = Path(__file__).resolve().parent.parent / "models"
_INSTALLED_MODELS = Path(sys.prefix) / "share" / "edge-mood" / "models"
_SYSTEM_MODELS = Path("/opt/edge-mood/models")

# Other precisions of a model are named <name>.<variant>.onnx and are not models of their own.
VARIANT_SUFFIXES = (".fp32.onnx", ".int8.onnx", ".qop.onnx", ".qdq.onnx")


def model_dirs() -> list[Path]:
    """Folders searched, first match wins."""
    return [d for d in (_CHECKOUT_MODELS, _INSTALLED_MODELS, _SYSTEM_MODELS) if d.is_dir()]


def default_model() -> Path:
    """The shipped expression model: the first `<name>.onnx` with a `<name>.json` card beside it."""
    for folder in model_dirs():
        for candidate in sorted(folder.glob("*.onnx")):
            if candidate.name.endswith(VARIANT_SUFFIXES) or "yunet" in candidate.name:
                continue
            if candidate.with_suffix(".json").exists():
                return candidate
    searched = ", ".join(str(d) for d in (_CHECKOUT_MODELS, _INSTALLED_MODELS, _SYSTEM_MODELS))
    raise ModelError(
        f"no expression model found (searched {searched}); set model.path in the config to a .onnx with its .json card"
    )
