"""quantize: distill, quantize and check expression models for the edge-mood daemon."""

import edge  # noqa: F401  (before any onnxruntime import: it switches ONNX Runtime's telemetry off)
