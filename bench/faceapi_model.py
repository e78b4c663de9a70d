"""face-api.js's expression classifier as a baseline: its weights, from the npm package, written as an ONNX model
with a card, so that the daemon (and bench/generalisation.py --model) reads faces with it as with ours.

face-api.js (MIT) ships FaceExpressionNet: four dense blocks of depthwise-separable convolutions over 112x112
RGB faces, pixel - mean RGB, / 255, and one fully connected layer to seven expressions; its author trained it on
more than FER2013. The maintained fork @vladmandic/face-api carries the weights in its npm package
(model/face_expression_model.bin, uint8-quantized, with a manifest). This script reads them from the package
file, rebuilds the graph from the package's own source (src/faceFeatureExtractor/denseBlock.ts: TensorFlow's
"same" padding, which pads a stride-2 convolution on the bottom and right only) and reorders the outputs to
FER2013's order. The card frames faces as face-api.js's detectors do, a box without landmarks.

    npm pack @vladmandic/face-api@1.7.15                      # 12 MB; the registry is all it needs
    python bench/faceapi_model.py vladmandic-face-api-1.7.15.tgz bench/out/faceapi
    python bench/generalisation.py --model bench/out/faceapi/faceapi.onnx --precision fp32 --paths daemon

Needs the `onnx` package (the quantize extra).
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.contract import CANONICAL_LABELS, file_sha256

MANIFEST = "package/model/face_expression_model-weights_manifest.json"
WEIGHTS = "package/model/face_expression_model.bin"
LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")  # FACE_EXPRESSION_LABELS
AS_FER2013 = [LABELS.index(n) for n in ("angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral")]
MEAN_RGB = (122.782, 117.001, 104.298)
SIDE = 112
CROP_MARGIN = 0.1  # YuNet's box is tighter than the boxes of face-api.js's own detectors


def read_weights(package: Path) -> dict[str, np.ndarray]:
    """Every tensor of the manifest, dequantized (uint8 * scale + min) to float32, in TensorFlow's layouts."""
    with tarfile.open(package) as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
        raw = tar.extractfile(WEIGHTS).read()  # type: ignore[union-attr]
    weights, offset = {}, 0
    for entry in manifest[0]["weights"]:
        count = int(np.prod(entry["shape"]))
        quantization = entry.get("quantization")
        if quantization:
            values = np.frombuffer(raw, np.uint8, count, offset).astype(np.float32)
            values = values * quantization["scale"] + quantization["min"]
            offset += count
        else:
            values = np.frombuffer(raw, np.float32, count, offset).copy()
            offset += 4 * count
        weights[entry["name"]] = values.reshape(entry["shape"]).astype(np.float32)
    if offset != len(raw):
        raise SystemExit(f"{package}: the weights file holds {len(raw)} bytes, the manifest {offset}")
    return weights


class Graph:
    """The nodes and initializers of the ONNX graph being built, in NCHW."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    def conv(self, x: str, name: str, weight: np.ndarray, bias: str | None, stride: int, groups: int = 1) -> str:
        # TensorFlow's "same" for a 3x3 kernel: stride 1 pads 1 all round, stride 2 (on an even side) 1 after.
        pads = [1, 1, 1, 1] if stride == 1 else [0, 0, 1, 1]
        if weight.shape[2:] == (1, 1):
            pads = [0, 0, 0, 0]
        inputs = [x, self.constant(f"{name}.w", weight)] + ([bias] if bias else [])
        return self.node("Conv", inputs, name, strides=[stride, stride], pads=pads, group=groups)

    def separable(self, x: str, prefix: str, stride: int) -> str:
        depthwise = self.weights[f"{prefix}/depthwise_filter"].transpose(2, 3, 0, 1)  # [C, 1, 3, 3]
        pointwise = self.weights[f"{prefix}/pointwise_filter"].transpose(3, 2, 0, 1)  # [Cout, Cin, 1, 1]
        bias = self.constant(f"{prefix}.b", self.weights[f"{prefix}/bias"])
        x = self.conv(x, f"{prefix}.dw", depthwise, None, stride, groups=depthwise.shape[0])
        return self.conv(x, f"{prefix}.pw", pointwise, bias, 1)

    def dense_block(self, x: str, prefix: str, first: bool) -> str:
        """denseBlock4: each convolution reads the sum of those before it."""
        if first:
            filters = self.weights[f"{prefix}/conv0/filters"].transpose(3, 2, 0, 1)
            bias = self.constant(f"{prefix}/conv0.b", self.weights[f"{prefix}/conv0/bias"])
            out1 = self.conv(x, f"{prefix}/conv0", filters, bias, 2)
        else:
            out1 = self.separable(x, f"{prefix}/conv0", 2)
        total = self.node("Relu", [out1], f"{prefix}/out1")
        for i in (1, 2, 3):
            summed = total if i == 1 else self.node("Relu", [total], f"{prefix}/in{i}")
            out = self.separable(summed, f"{prefix}/conv{i}", 1)
            total = self.node("Add", [total, out], f"{prefix}/sum{i}")
        return self.node("Relu", [total], f"{prefix}/out")


def build(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = Graph(weights)
    x = "input"
    for block in range(4):
        x = graph.dense_block(x, f"dense{block}", first=block == 0)
    pooled = graph.node("GlobalAveragePool", [x], "pool")  # avgPool 7x7 of the 7x7 map
    flat = graph.node("Flatten", [pooled], "features")
    scores = graph.node("MatMul", [flat, graph.constant("fc.w", weights["fc/weights"])], "fc")
    scores = graph.node("Add", [scores, graph.constant("fc.b", weights["fc/bias"])], "fc_bias")
    order = graph.constant("as_fer2013", np.array(AS_FER2013, np.int64))
    graph.nodes.append(helper.make_node("Gather", [scores, order], ["logits"], axis=1, name="as_fer2013"))
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "faceapi_expression",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(AS_FER2013)])],
            graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path, help="the npm package file (npm pack @vladmandic/face-api)")
    parser.add_argument("out", type=Path, help="folder for faceapi.onnx and its card faceapi.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "faceapi.onnx"
    onnx.save(build(read_weights(args.package)), str(model_path))
    sha = file_sha256(model_path)
    card = {
        "schema": 1,
        "name": "faceapi-expression",
        "labels": list(CANONICAL_LABELS),
        # (pixel / 255 - mean / 255) / 1 is face-api.js's (pixel - mean) / 255.
        "input": {"shape": [1, 3, SIDE, SIDE], "color": "rgb", "mean": [m / 255 for m in MEAN_RGB], "std": [1.0] * 3},
        "crop": {"margin": CROP_MARGIN},
        "output": "logits",
        "precision": "fp32",
        "variants": {"fp32": model_path.name},
        "variant_sha256": {"fp32": sha},
        "sha256": sha,
    }
    (args.out / "faceapi.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    print(f"{model_path} and its card {model_path.with_suffix('.json').name}")


if __name__ == "__main__":
    main()
