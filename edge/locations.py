"""Where the daemon looks for the shipped expression model and the face detector, and where a fetched
detector goes."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from edge.contract import VARIANT_TAGS
from edge.errors import ModelError

# A source checkout keeps models/ beside edge/; a pip install puts it under <prefix>/share/edge-mood.
_CHECKOUT_MODELS = Path(__file__).resolve().parent.parent / "models"
_INSTALLED_MODELS = Path(sys.prefix) / "share" / "edge-mood" / "models"
_SYSTEM_APP = Path("/opt/edge-mood")  # systemd/install.sh: venv/ and models/ below it
_SYSTEM_MODELS = _SYSTEM_APP / "models"
SERVICE_STATE_DIR = Path("/var/lib/edge-mood")  # the unit's StateDirectory=

# The YuNet face detector (OpenCV Model Zoo, MIT licence), pinned: edge/yunet_fetch.py refuses any other file.
YUNET_GLOB = "face_detection_yunet*.onnx"  # what the daemon looks for in its model folders
YUNET_URL = (
    "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx"
)
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"

VARIANT_SUFFIXES = tuple(f"{tag}.onnx" for tag in VARIANT_TAGS)


def model_dirs() -> list[Path]:
    """Folders searched, first match wins."""
    return [d for d in (_CHECKOUT_MODELS, _INSTALLED_MODELS, _SYSTEM_MODELS) if d.is_dir()]


def system_install(prefix: str = sys.prefix) -> bool:
    """Whether this Python is the system-wide install's venv (systemd/install.sh: /opt/edge-mood/venv)."""
    return _SYSTEM_APP in Path(prefix).resolve().parents


def user_state_dir() -> Path:
    """Where a spool lives by default outside systemd: ~/.local/state/edge-mood."""
    return Path.home() / ".local" / "state" / "edge-mood"


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where a fetched detector goes: /opt/edge-mood/models for the system-wide install, else the user's
    $XDG_DATA_HOME/edge-mood/models (~/.local/share/edge-mood/models)."""
    if system_install():
        return _SYSTEM_MODELS
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"  # the XDG rule: absolute only
    return root / "edge-mood" / "models"


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
