"""Teachers: big expression classifiers (PyTorch checkpoint, TorchScript or ONNX) that give logits on 48x48 faces,
loaded with what their spec (quantize.teacher_spec) says they expect.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import parse_flag
from edge.contract import CANONICAL_LABELS, first_line, parse_align_template
from quantize.errors import QuantizeError
from quantize.labels import is_other_class, map_label_names
from quantize.teacher_formats import OpenedModel, open_onnx, open_torch
from quantize.teacher_input import Preprocessing
from quantize.teacher_spec import find_spec_file, merge_specs, parse_labels, parse_teacher_arg, read_spec_file
from quantize.training import choose_device


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
    max_batch: int | None = None  # ONNX models exported with a fixed batch size
    # Landmark positions the teacher learnt its faces aligned to (a card's crop.align_template); None: the data
    # set's own framing.
    align_template: list[list[float]] | None = None
    # Its graph already averages each face with its mirror image (a card's flip_average), so its answer on a
    # mirrored face is its answer on the face: asking again would only double the work.
    mirror_averaged: bool = False
    # What the model's graph returns, "logits" or "probabilities" (then `_forward` returns their log): part of
    # what the cache and a resumed run must tell apart, as the same file gives other targets either way.
    output: str = "logits"

    def logits(self, images_u8: np.ndarray, batch_size: int = 256, flip_tta: bool = False) -> np.ndarray:
        """float32 (N, len(labels)); with flip_tta the average over each face and its mirror image."""
        if images_u8.ndim != 3:
            raise ValueError(f"expected uint8 faces (N, H, W), got shape {images_u8.shape}")
        step = min(batch_size, self.max_batch or batch_size)
        out = np.empty((len(images_u8), len(self.labels)), dtype=np.float32)
        for start in range(0, len(images_u8), step):
            batch = images_u8[start : start + step]
            scores = self._forward(batch)
            if flip_tta and not self.mirror_averaged:
                scores = (scores + self._forward(batch[:, :, ::-1])) / 2.0
            out[start : start + step] = scores
        return out

    def describe(self) -> str:
        """One line for logs and reports."""
        size = f"{self.preprocessing.channels}x{self.preprocessing.size[0]}x{self.preprocessing.size[1]}"
        params = f", {self.num_params / 1e6:.1f}M params" if self.num_params else ""
        return f"{self.name} ({self.arch or self.backend}{params}, input {size}, {len(self.labels)} classes)"

    def record(self, sha256: str) -> dict[str, Any]:
        """How the teacher is listed in the student checkpoint, the card and the report."""
        return {
            "name": self.name,
            "file": self.path.name,
            "sha256": sha256,
            "arch": self.arch,
            "backend": self.backend,
            "params": self.num_params,
            "labels": list(self.labels),
            "input": self.preprocessing.to_dict(),
            "output": self.output,
            **({"align_template": self.align_template} if self.align_template else {}),
            **({"flip_average": True} if self.mirror_averaged else {}),
        }


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
    if path.is_dir():
        raise QuantizeError(f"teacher {path} is a folder; give the checkpoint, TorchScript or .onnx file in it")
    if not path.is_file():
        raise QuantizeError(f"teacher {path} does not exist; give a .pt/.pth checkpoint, TorchScript or .onnx file")
    spec_file = Path(spec) if isinstance(spec, (str, Path)) else find_spec_file(path)
    base = read_spec_file(spec_file) if spec_file else {}
    if isinstance(spec, Mapping):
        overrides = merge_specs(overrides, spec)
    merged = merge_specs(base, overrides)
    where = f"teacher {path.name}" + (f" (spec {spec_file.name})" if spec_file else "")
    device = choose_device(device)
    if precision not in ("fp32", "bf16"):
        raise QuantizeError(f"teacher precision {precision!r} unknown; use fp32 or bf16")

    if path.suffix.lower() == ".onnx":
        opened = open_onnx(path, merged, where, device)
        if not merged:  # its graph gives size and channels; how it scaled and framed its faces it cannot
            warnings.warn(
                f"teacher {path.name} has no spec or card beside it ({path.with_suffix('.json').name}); it is shown "
                "faces as pixel/255 without normalisation, equalisation or alignment: if it learnt them otherwise, "
                "write its spec (docs/quantize.md#telling-the-tool-what-a-teacher-expects)",
                stacklevel=2,
            )
    else:
        opened = open_torch(path, merged, where, device, precision, trust_pickle)
    return _finish(path, merged, where, opened)


def _finish(path: Path, spec: Mapping[str, Any], where: str, opened: OpenedModel) -> Teacher:
    """Check the output width against the labels and build the Teacher."""
    preprocessing, forward = opened.preprocessing, opened.forward
    output = str(spec.get("output", "logits")).lower()
    if output not in ("logits", "probabilities"):
        raise QuantizeError(f"{where}: output {output!r} unknown; use logits or probabilities")
    raw = forward
    if output == "probabilities":
        forward = lambda batch: np.log(np.clip(raw(batch), 1e-7, None))  # noqa: E731 - log-probs act as logits
    try:
        probe = raw(np.zeros((1, 48, 48), dtype=np.uint8))
    except QuantizeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign model on a valid input is the user's model
        raise QuantizeError(
            f"{where}: a forward pass on one {preprocessing.channels}x{preprocessing.size[0]}x"
            f"{preprocessing.size[1]} input failed ({first_line(exc)}); "
            "check the input size/channels in the spec"
        ) from None
    if probe.ndim != 2 or probe.shape[0] != 1:
        raise QuantizeError(f"{where}: output shape {list(probe.shape)} is not (batch, classes)")
    _check_output_kind(probe, output, path, where)
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
    kept = [i for i, name in enumerate(labels) if not is_other_class(name)]
    if len(kept) < len(labels):  # the softmax over the kept outputs renormalises them
        every_output = forward
        forward = lambda batch: every_output(batch)[:, kept]  # noqa: E731
        labels = [labels[i] for i in kept]
    if len(labels) < 2:
        raise QuantizeError(f"{where}: fewer than two of its labels are FER2013 expressions; it has nothing to teach")
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
        num_params=opened.num_params,
        arch=opened.arch,
        backend=opened.backend,
        device=opened.device,
        _forward=forward,
        max_batch=opened.max_batch,
        align_template=_align_template(spec, where),
        mirror_averaged=_flag(spec.get("flip_average", False), "flip_average", where),
        output=output,
    )


def _check_output_kind(probe: np.ndarray, output: str, path: Path, where: str) -> None:
    """Refuse a model whose answer contradicts the spec's output kind: probabilities read as logits are flattened
    again at the distillation temperature (near-uniform targets); logits read as probabilities lose every
    negative score."""
    in_range = bool(((probe >= -1e-6) & (probe <= 1 + 1e-6)).all())
    if output == "logits" and in_range and np.allclose(probe.sum(axis=1), 1.0, atol=1e-3):
        raise QuantizeError(
            f"{where}: its outputs lie in 0..1 and sum to 1, so it ends in softmax, and read as logits they would "
            f'teach nearly uniform targets; add "output": "probabilities" to its spec, or output=probabilities to '
            f"its --teacher options (e.g. --teacher '{path}:output=probabilities')"
        )
    if output == "probabilities" and not in_range:
        outside = float(probe[(probe < 0) | (probe > 1)].flat[0])
        raise QuantizeError(
            f"{where}: its spec says output=probabilities, but it answers {outside:.3g}, outside 0..1, so its "
            "outputs are logits; remove output=probabilities"
        )


def _flag(value: Any, key: str, where: str) -> bool:
    """A yes/no spec value, from a spec file (true/false) or the command line (text)."""
    if isinstance(value, bool):
        return value
    try:
        return parse_flag(str(value))
    except ValueError:
        raise QuantizeError(f"{where}: {key} {value!r} is not true or false") from None


def _align_template(spec: Mapping[str, Any], where: str) -> list[list[float]] | None:
    crop = spec.get("crop") or {}
    try:
        template = parse_align_template(crop.get("align_template") if isinstance(crop, Mapping) else None)
    except ValueError as exc:
        raise QuantizeError(f"{where}: {exc} (where the five landmarks land: eyes, nose tip, mouth corners)") from None
    return [list(point) for point in template] if template else None
