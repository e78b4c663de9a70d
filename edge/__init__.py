"""edge-mood daemon: camera -> faces -> expressions -> MQTT."""

import os

__version__ = "0.1.0"

# ONNX Runtime's own telemetry (on Linux and macOS in recent releases, 1.32 here) sends usage events to
# Microsoft and keeps a device id file. A camera in someone's home talks to its broker only: off, before
# onnxruntime is imported anywhere (it reads this once, when imported). ORT_DISABLE_TELEMETRY=0 in the
# environment keeps it on.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
