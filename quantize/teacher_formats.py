"""Opening a teacher file: ONNX through onnxruntime, TorchScript, or a PyTorch checkpoint rebuilt as a
torchvision-layout network (quantize.archs). Each gives a forward function on uint8 grey faces and the input
convention the file and its spec agree on; quantize.teachers checks the outputs against the labels."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.contract import first_line
from quantize.archs import model_from_state_dict, unwrap_checkpoint
from quantize.errors import QuantizeError
from quantize.teacher_input import Preprocessing, parse_channels, preprocessing_from_spec
from quantize.training import to_memory_format

TORCHSCRIPT_MARKERS = ("constants.pkl", "/code/")
# ONNX input types a teacher may take, and the numpy type its images are cast to.
ONNX_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass
class OpenedModel:
    """A teacher file ready to run, before its outputs are matched to labels."""

    preprocessing: Preprocessing
    forward: Callable[[np.ndarray], np.ndarray]  # uint8 grey faces (N, H, W) -> scores (N, outputs)
    num_params: int | None
    arch: str | None
    backend: str  # "torch", "torchscript" or "onnx"
    device: str
    max_batch: int | None = None  # ONNX models exported with a fixed batch size


def _require_size(spec: Mapping[str, Any], where: str, path: Path) -> None:
    section = spec.get("input") or {}
    if "size" not in section and "shape" not in section:
        raise QuantizeError(
            f"{where}: input size unknown; write {path.with_suffix('.json').name} beside it "
            f"(see docs/quantize.md) or pass --teacher '{path}:size=96,mean=imagenet'"
        )


# ---------------------------------------------------------------- ONNX


def _preprocessing(section: Mapping[str, Any], default_channels: int, where: str) -> Preprocessing:
    """The spec's input section as Preprocessing; a value it cannot hold names the teacher."""
    try:
        return preprocessing_from_spec(section, default_channels)
    except QuantizeError as exc:
        raise QuantizeError(f"{where}: {exc}") from None


def _stated_channels(section: Mapping[str, Any], where: str) -> int:
    try:
        return parse_channels(section["channels"])
    except QuantizeError as exc:
        raise QuantizeError(f"{where}: {exc}") from None


def open_onnx(path: Path, spec: dict[str, Any], where: str, device: str) -> OpenedModel:
    import onnxruntime as ort

    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    )
    refuse_empty(path, where)
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types for a bad file
        raise QuantizeError(f"{where}: onnxruntime cannot load it ({first_line(exc)})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise QuantizeError(f"{where}: expected one NCHW image input, found {[(i.name, i.shape) for i in inputs]}")
    batch_dim, channels, height, width = inputs[0].shape
    if isinstance(channels, int) and channels not in (1, 3) and width in (1, 3):
        raise QuantizeError(
            f"{where}: its input {inputs[0].shape} is channels-last (NHWC); the tool feeds NCHW images, so "
            "export the model with channels first (e.g. a transpose to NCHW at its input)"
        )
    static = all(isinstance(d, int) for d in (channels, height, width))
    section = dict(spec.get("input") or {})
    if static:
        stated = _preprocessing(section, channels, where) if section else None
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
    preprocessing = _preprocessing(section, int(channels) if isinstance(channels, int) else 3, where)
    name = inputs[0].name
    if inputs[0].type not in ONNX_INPUT_TYPES:
        raise QuantizeError(f"{where}: its input is {inputs[0].type}; the tool feeds float images (float, float16)")
    input_type = ONNX_INPUT_TYPES[inputs[0].type]
    fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None

    def forward(batch: np.ndarray) -> np.ndarray:
        images = preprocessing.apply_numpy(batch).astype(input_type, copy=False)
        faces = len(images)
        if fixed_batch is not None and faces < fixed_batch:
            # A graph exported with a fixed batch: fill the last, short batch with copies of its first face.
            images = np.concatenate([images, np.repeat(images[:1], fixed_batch - faces, axis=0)])
        return np.asarray(session.run(None, {name: images})[0][:faces], dtype=np.float32)

    return OpenedModel(
        preprocessing,
        forward,
        num_params=None,
        arch=spec.get("arch"),
        backend="onnx",
        device=device,
        max_batch=fixed_batch,
    )


# ---------------------------------------------------------------- PyTorch


def is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive (a zip holding code), not a checkpoint of weights."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(TORCHSCRIPT_MARKERS) or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):  # not a zip, or a damaged one: torch.load then says what it is
        return False


def open_torch(
    path: Path, spec: dict[str, Any], where: str, device: str, precision: str, trust_pickle: bool
) -> OpenedModel:
    arch: str | None = None
    if is_torchscript(path):
        try:
            with warnings.catch_warnings():  # deprecated for new work, but users still hold TorchScript files
                warnings.simplefilter("ignore", DeprecationWarning)
                model: nn.Module = torch.jit.load(str(path), map_location=device)
        except Exception as exc:  # noqa: BLE001 - TorchScript raises RuntimeError subclasses of many kinds
            raise QuantizeError(f"{where}: cannot load TorchScript ({first_line(exc)})") from None
        backend, channels = "torchscript", None
    else:
        obj = read_checkpoint(path, where, trust_pickle)
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
        if "channels" in section and _stated_channels(section, where) != channels:
            raise QuantizeError(
                f"{where}: spec says {section['channels']} channels but the first conv takes {channels}; fix the spec"
            )
        section["channels"] = channels
    preprocessing = _preprocessing(section, channels or 3, where)
    model.eval().to(device)
    # TorchScript modules keep their own layout.
    channels_last = backend == "torch"
    if channels_last:
        to_memory_format(model, torch.channels_last)
    device_type = "cuda" if device.startswith("cuda") else "cpu"

    def forward(batch: np.ndarray) -> np.ndarray:
        x = preprocessing.apply(batch, device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        if isinstance(out, (tuple, list)):  # (logits, features) and the like: the first output, as for ONNX
            out = out[0]
        return out.float().cpu().numpy()

    num_params = sum(p.numel() for p in model.parameters())
    return OpenedModel(preprocessing, forward, num_params=num_params, arch=arch, backend=backend, device=device)


def refuse_empty(path: Path, where: str) -> None:
    """A model file of 0 bytes (a copy or download that never got going) is named as such, not as corrupt."""
    if path.stat().st_size == 0:
        raise QuantizeError(f"{where}: the file is empty (0 bytes), a copy or download cut short; fetch it again")


def read_checkpoint(
    path: Path, where: str, trust_pickle: bool = False, trust_option: str | None = "--trust-pickle"
) -> Any:
    """What torch.load gives for a checkpoint file; a QuantizeError saying why it cannot be read (naming
    `trust_option` for a file that pickles objects, where the command has one)."""
    refuse_empty(path, where)
    if is_torchscript(path):  # torch.load's own words for it are a page about weights_only
        raise QuantizeError(f"{where}: a TorchScript model, not a checkpoint of weights; give its state_dict")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # garbage bytes fail in the same unpickler
            raise QuantizeError(
                f"{where}: not a readable PyTorch checkpoint (unpickling failed); check the file"
            ) from None
        trust = f", or pass {trust_option} if you trust its source" if trust_option else ""
        raise QuantizeError(
            f"{where}: the file pickles Python objects, not just weights; re-save it with "
            f"torch.save(model.state_dict(), ...){trust}"
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
        raise QuantizeError(f"{where}: not a readable PyTorch checkpoint ({first_line(exc)})") from None
