"""Nothing leaves the device but MQTT: ONNX Runtime's own telemetry is off wherever edge or quantize runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[1] / "models" / "mood-m.onnx"


@pytest.mark.parametrize("package", ["edge.classifier", "quantize"])
def test_onnxruntime_keeps_no_telemetry_device_id(tmp_path, package):
    # With telemetry on, onnxruntime writes a device id under $XDG_CACHE_HOME/Microsoft and sends usage events.
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    code = (
        f"import {package}, onnxruntime\n"
        f"onnxruntime.InferenceSession({str(MODEL)!r}, providers=['CPUExecutionProvider'])\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    assert list(tmp_path.iterdir()) == []
