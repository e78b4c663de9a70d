"""Teachers: big expression classifiers (PyTorch checkpoint, TorchScript or ONNX) that give logits on 48x48 faces.

What a teacher expects comes from a spec: `<file>.json` or `<file>.toml` beside it, overridden by options on the
command line (`--teacher PATH:size=96,channels=3,mean=imagenet,labels=fer2013`). Spec keys:
  arch    resnet18..152 | densenet121/161/169/201 (checkpoints only; inferred from the keys when absent)
  head    classifier head spec, see quantize.archs (inferred when absent)
  labels  the model's output order: a list, "fer2013" (the canonical seven) or names joined by "/" on the command line
  input   {channels, size, mean, std, resize, scale}; mean/std may be "imagenet", "half" or "none"
  output  "logits" (default) or "probabilities" (a model ending in softmax; its log is used as logits)
An edge model card (input.shape / input.color) is accepted as a spec too.
"""

from __future__ import annotations

import json
import pickle
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantize.archs import model_from_state_dict, unwrap_checkpoint
from quantize.errors import QuantizeError
from quantize.labels import CANONICAL_LABELS, map_label_names
from quantize.preprocess import Preprocessing, preprocessing_from_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

INPUT_KEYS = ("channels", "size", "mean", "std", "resize", "scale")
TOP_KEYS = ("arch", "head", "labels", "output", "name")
TORCHSCRIPT_MARKERS = ("constants.pkl", "/code/")


@dataclass
class Teacher:
    """A loaded teacher. `logits` takes uint8 grey 48x48 faces and returns scores in the teacher's label order."""

    name: str
    path: Path
    labels: list[str]
    label_index: list[int]  # position i of the output is CANONICAL_LABELS[label_index[i]]
    preprocessing: Preprocessing
    num_params: int | None
    arch: str | None
    backend: str  # "torch", "torchscript" or "onnx"
    device: str
    _forward: Callable[[np.ndarray], np.ndarray]
    max_batch: int | None = None  # ONNX models exported with a fixed batch of 1

    def logits(self, images_u8: np.ndarray, batch_size: int = 256, flip_tta: bool = False) -> np.ndarray:
        """float32 (N, len(labels)); with flip_tta the average over each face and its mirror image."""
        if images_u8.ndim != 3:
            raise ValueError(f"expected uint8 faces (N, H, W), got shape {images_u8.shape}")
        step = min(batch_size, self.max_batch or batch_size)
        out = np.empty((len(images_u8), len(self.labels)), dtype=np.float32)
        for start in range(0, len(images_u8), step):
            batch = images_u8[start : start + step]
            scores = self._forward(batch)
            if flip_tta:
                scores = (scores + self._forward(batch[:, :, ::-1])) / 2.0
            out[start : start + step] = scores
        return out

    def describe(self) -> str:
        """One line for logs and reports."""
        size = f"{self.preprocessing.channels}x{self.preprocessing.size[0]}x{self.preprocessing.size[1]}"
        params = f", {self.num_params / 1e6:.1f}M params" if self.num_params else ""
        return f"{self.name} ({self.arch or self.backend}{params}, input {size}, {len(self.labels)} classes)"


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
    """The spec beside a teacher: `<stem>.json`, `<stem>.toml`, `<file>.json` or `<file>.toml`."""
    for candidate in (
        model_path.with_suffix(".json"),
        model_path.with_suffix(".toml"),
        model_path.with_name(model_path.name + ".json"),
        model_path.with_name(model_path.name + ".toml"),
    ):
        if candidate != model_path and candidate.is_file():
            return candidate
    return None


def read_spec_file(path: Path) -> dict[str, Any]:
    """A teacher spec from JSON or TOML."""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise QuantizeError(f"cannot read teacher spec {path}: {exc}") from None
    if not isinstance(data, dict):
        raise QuantizeError(f"teacher spec {path} must be an object with arch/labels/input keys")
    return data


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


def load_teacher(
    path: Path | str,
    spec: Mapping[str, Any] | Path | None = None,
    device: str = "cpu",
    *,
    precision: str = "fp32",
    trust_pickle: bool = False,
) -> Teacher:
    """Load an ONNX, TorchScript or PyTorch-checkpoint teacher with its spec.

    `path` may carry command-line options (`model.pt:size=96`). `spec` is a spec file or a dict of overrides on
    top of the spec file found beside the model. precision "bf16" runs torch teachers under bfloat16 autocast.
    trust_pickle allows checkpoints that pickle whole model objects (runs code from the file: trusted files only).
    """
    overrides: dict[str, Any] = {}
    if isinstance(path, str) and not Path(path).exists():
        path, overrides = parse_teacher_arg(path)
    path = Path(path).expanduser()
    if not path.is_file():
        raise QuantizeError(f"teacher {path} does not exist; give a .pt/.pth checkpoint, TorchScript or .onnx file")
    spec_file = Path(spec) if isinstance(spec, (str, Path)) else find_spec_file(path)
    base = read_spec_file(spec_file) if spec_file else {}
    if isinstance(spec, Mapping):
        overrides = merge_specs(overrides, spec)
    merged = merge_specs(base, overrides)
    where = f"teacher {path.name}" + (f" (spec {spec_file.name})" if spec_file else "")
    device = _resolve_device(device)
    if precision not in ("fp32", "bf16"):
        raise QuantizeError(f"teacher precision {precision!r} unknown; use fp32 or bf16")

    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, merged, where, device)
    return _load_torch(path, merged, where, device, precision, trust_pickle)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QuantizeError(f"device {device!r} asked for but no CUDA GPU is usable here; use --device cpu")
    return device


def _require_size(spec: Mapping[str, Any], where: str, path: Path) -> None:
    section = spec.get("input") or {}
    if "size" not in section and "shape" not in section:
        raise QuantizeError(
            f"{where}: input size unknown; write {path.with_suffix('.json').name} beside it "
            f"(see docs/quantize.md) or pass --teacher '{path}:size=96,mean=imagenet'"
        )


def _finish(
    path: Path,
    spec: Mapping[str, Any],
    where: str,
    preprocessing: Preprocessing,
    forward: Callable[[np.ndarray], np.ndarray],
    **fields: Any,
) -> Teacher:
    """Check the output width against the labels and build the Teacher."""
    output = str(spec.get("output", "logits")).lower()
    if output not in ("logits", "probabilities"):
        raise QuantizeError(f"{where}: output {output!r} unknown; use logits or probabilities")
    if output == "probabilities":
        raw = forward
        forward = lambda batch: np.log(np.clip(raw(batch), 1e-7, None))  # noqa: E731 - log-probs act as logits
    try:
        probe = forward(np.zeros((1, 48, 48), dtype=np.uint8))
    except QuantizeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign model on a valid input is the user's model
        raise QuantizeError(
            f"{where}: a forward pass on one {preprocessing.channels}x{preprocessing.size[0]}x"
            f"{preprocessing.size[1]} input failed ({str(exc).splitlines()[0][:160]}); "
            "check the input size/channels in the spec"
        ) from None
    if probe.ndim != 2 or probe.shape[0] != 1:
        raise QuantizeError(f"{where}: output shape {list(probe.shape)} is not (batch, classes)")
    width = probe.shape[1]
    if "labels" in spec:
        labels = parse_labels(spec["labels"], where)
    elif width == len(CANONICAL_LABELS):
        labels = list(CANONICAL_LABELS)
    else:
        raise QuantizeError(
            f'{where}: model has {width} outputs but no labels; add "labels" to its spec '
            f"or pass --teacher '{path}:labels=angry/fear/...'"
        )
    if width != len(labels):
        raise QuantizeError(
            f"{where}: model has {width} outputs but its spec lists {len(labels)} labels "
            f"({', '.join(labels)}); fix the labels in the spec"
        )
    try:
        label_index = map_label_names(labels)
    except QuantizeError as exc:
        raise QuantizeError(f"{where}: {exc}") from None
    return Teacher(
        name=str(spec.get("name") or path.stem),
        path=path,
        labels=labels,
        label_index=label_index,
        preprocessing=preprocessing,
        _forward=forward,
        **fields,
    )


# ---------------------------------------------------------------- ONNX


def _load_onnx(path: Path, spec: dict[str, Any], where: str, device: str) -> Teacher:
    import onnxruntime as ort

    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    )
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types for a bad file
        raise QuantizeError(f"{where}: onnxruntime cannot load it ({str(exc).splitlines()[0][:160]})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise QuantizeError(f"{where}: expected one NCHW image input, found {[(i.name, i.shape) for i in inputs]}")
    batch_dim, channels, height, width = inputs[0].shape
    static = all(isinstance(d, int) for d in (channels, height, width))
    section = dict(spec.get("input") or {})
    if static:
        stated = preprocessing_from_spec(section, channels) if section else None
        if stated is not None and ("size" in section or "shape" in section) and stated.size != (height, width):
            raise QuantizeError(
                f"{where}: spec says input {stated.size[0]}x{stated.size[1]} but the ONNX model "
                f"takes {height}x{width}; fix the spec"
            )
        if stated is not None and "channels" in section and stated.channels != channels:
            raise QuantizeError(f"{where}: spec says {stated.channels} channels but the ONNX model takes {channels}")
        section.setdefault("size", [height, width])
        section.setdefault("channels", channels)
    else:
        _require_size(spec, where, path)
    preprocessing = preprocessing_from_spec(section, int(channels) if isinstance(channels, int) else 3)
    name = inputs[0].name

    def forward(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: preprocessing.apply_numpy(batch)})[0], dtype=np.float32)

    return _finish(
        path,
        spec,
        where,
        preprocessing,
        forward,
        num_params=None,
        arch=spec.get("arch"),
        backend="onnx",
        device=device,
        max_batch=batch_dim if batch_dim == 1 else None,
    )


# ---------------------------------------------------------------- PyTorch


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith(TORCHSCRIPT_MARKERS) or "/code/" in n for n in z.namelist())


def _load_torch(
    path: Path, spec: dict[str, Any], where: str, device: str, precision: str, trust_pickle: bool
) -> Teacher:
    arch: str | None = None
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # deprecated for new work, but users still hold TorchScript files
                warnings.simplefilter("ignore", DeprecationWarning)
                model: nn.Module = torch.jit.load(str(path), map_location=device)
        except Exception as exc:  # noqa: BLE001 - TorchScript raises RuntimeError subclasses of many kinds
            raise QuantizeError(f"{where}: cannot load TorchScript ({str(exc).splitlines()[0][:160]})") from None
        backend, channels = "torchscript", None
    else:
        obj = _torch_load(path, where, trust_pickle)
        backend = "torch"
        if isinstance(obj, nn.Module):  # a pickled whole model (trust_pickle): any architecture works
            model, channels = obj, None
            arch = spec.get("arch") or type(obj).__name__
        else:
            state = unwrap_checkpoint(obj)
            try:
                model, info = model_from_state_dict(state, spec.get("arch"), spec.get("head"))
            except QuantizeError as exc:
                raise QuantizeError(f"{where}: {exc}") from None
            arch, channels = info.arch, info.in_channels
    _require_size(spec, where, path)
    section = dict(spec.get("input") or {})
    if channels is not None:
        if "channels" in section and int(section["channels"]) != channels:
            raise QuantizeError(
                f"{where}: spec says {section['channels']} channels but the first conv takes {channels}; fix the spec"
            )
        section["channels"] = channels
    preprocessing = preprocessing_from_spec(section, channels or 3)
    model.eval().to(device)
    # channels_last speeds up CPU convolutions about 2x; TorchScript modules keep their own layout.
    channels_last = backend == "torch"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    device_type = "cuda" if device.startswith("cuda") else "cpu"

    def forward(batch: np.ndarray) -> np.ndarray:
        x = preprocessing.apply(batch, device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        return out.float().cpu().numpy()

    num_params = sum(p.numel() for p in model.parameters())
    return _finish(
        path, spec, where, preprocessing, forward, num_params=num_params, arch=arch, backend=backend, device=device
    )


def _torch_load(path: Path, where: str, trust_pickle: bool) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # garbage bytes fail in the same unpickler
            raise QuantizeError(
                f"{where}: not a readable PyTorch checkpoint (unpickling failed); check the file"
            ) from None
        raise QuantizeError(
            f"{where}: the file pickles Python objects, not just weights; re-save it with "
            "torch.save(model.state_dict(), ...), or pass --trust-pickle if you trust its "
            "source"
        ) from None
    except (
        RuntimeError,
        OSError,
        EOFError,
        ValueError,
        AttributeError,
        ModuleNotFoundError,
        KeyError,
        IndexError,
        TypeError,
    ) as exc:  # a damaged file fails in many ways inside torch.load
        raise QuantizeError(f"{where}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0][:160]})") from None
