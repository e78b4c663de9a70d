"""How a teacher wants its input: 48x48 grey faces -> grey levels normalised (models built by `quantize` only),
resized, channel-replicated, normalised float32 NCHW.

This is the teachers' convention (read from their specs, and that of the networks `quantize train-teacher`
trains); the student's input is quantize.student_input's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edge.contract import ILLUMINATIONS
from edge.illumination import normalise_illumination
from quantize.errors import QuantizeError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Named normalisations a spec or command line may use instead of numbers (applied to pixel * scale).
NORMALISATIONS: dict[str, tuple[list[float], list[float]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": ([0.0], [1.0]),
    "half": ([0.5], [0.5]),  # maps 0..1 to -1..1
}
RESIZE_MODES = ("bilinear", "bicubic", "nearest", "area")


@dataclass
class Preprocessing:
    """Input convention of a model; mean/std apply to pixel * scale (pixel/255 by default)."""

    size: tuple[int, int] = (48, 48)
    channels: int = 1
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    resize: str = "bilinear"
    scale: float = 1.0 / 255.0
    # Grey-level normalisation a model built by `quantize` learnt its faces with (its card's input.illumination),
    # applied to the uint8 faces first, as the daemon does after its crop.
    illumination: str = "none"

    def __post_init__(self) -> None:
        self.size = (int(self.size[0]), int(self.size[1]))
        if self.channels not in (1, 3):
            raise QuantizeError(f"input channels must be 1 or 3, not {self.channels}")
        if self.resize not in RESIZE_MODES:
            raise QuantizeError(f"resize {self.resize!r} unknown; use one of {', '.join(RESIZE_MODES)}")
        if min(self.size) < 8:
            raise QuantizeError(f"input size {self.size} is too small; use at least 8x8")
        self.mean = _per_channel(self.mean, self.channels, "mean")
        self.std = _per_channel(self.std, self.channels, "std")
        if any(s <= 0 for s in self.std):
            raise QuantizeError(f"std {self.std} must be positive")
        if self.illumination not in ILLUMINATIONS:
            raise QuantizeError(f"illumination {self.illumination!r} unknown; use one of {', '.join(ILLUMINATIONS)}")

    def apply(self, images_u8: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """float32 NCHW tensor on `device` from uint8 grey faces (N, H, W)."""
        if self.illumination != "none":
            faces = images_u8.cpu().numpy() if isinstance(images_u8, torch.Tensor) else images_u8
            images_u8 = np.stack([normalise_illumination(face, self.illumination) for face in faces])
        x = torch.as_tensor(np.ascontiguousarray(images_u8) if isinstance(images_u8, np.ndarray) else images_u8)
        x = x.to(device=device, dtype=torch.float32).unsqueeze(1) / 255.0
        if tuple(x.shape[-2:]) != self.size:
            align = False if self.resize in ("bilinear", "bicubic") else None
            x = F.interpolate(x, size=self.size, mode=self.resize, align_corners=align)
        return self.normalise(x)

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        """Model input from already resized grey faces (N, 1, H, W) holding pixel/255."""
        x = x01.expand(-1, self.channels, -1, -1) * (self.scale * 255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()

    def apply_numpy(self, images_u8: np.ndarray) -> np.ndarray:
        """float32 NCHW array (for onnxruntime) from uint8 grey faces (N, H, W)."""
        return self.apply(images_u8).numpy()

    def to_dict(self) -> dict[str, Any]:
        """The "input" section of a teacher spec."""
        return {
            "channels": self.channels,
            "size": list(self.size),
            "mean": self.mean,
            "std": self.std,
            "resize": self.resize,
            "scale": "pixel/255" if self.scale == 1.0 / 255.0 else "pixel",
            # Only when set, so that the logit caches of teachers without it keep their keys.
            **({"illumination": self.illumination} if self.illumination != "none" else {}),
        }


def _per_channel(values: Any, channels: int, what: str) -> list[float]:
    if isinstance(values, (int, float)):
        values = [values]
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1 and len(values) == 3:
        return [sum(values) / 3.0]  # a grey model given RGB statistics: their average is the grey statistic
    allowed = "1 or 3" if channels == 3 else "1 (or 3 RGB values, which are averaged)"
    raise QuantizeError(f"{what} has {len(values)} values for a {channels}-channel input; give {allowed}")


def parse_channels(value: Any) -> int:
    """A spec's input channels: 1 (grey) or 3 (colour), as a number or its text."""
    try:
        number = float(str(value).strip())  # 3, "3" and 3.0 (a TOML or JSON float) alike
    except ValueError:
        number = 0.0
    channels = int(number) if number.is_integer() else 0
    if channels not in (1, 3):
        raise QuantizeError(f"input channels {value!r} unknown; use 1 (grey) or 3 (colour)")
    return channels


def _parse_size(value: Any) -> tuple[int, int]:
    """A spec's input size: N, "N", "HxW" or [H, W]."""
    if isinstance(value, (int, float)):
        parts: Any = [value, value]
    elif isinstance(value, str):
        parts = value.lower().replace("x", " ").split()
        parts = parts * 2 if len(parts) == 1 else parts
    else:
        parts = value
    try:
        if len(parts) != 2:
            raise ValueError
        return int(parts[0]), int(parts[1])
    except (TypeError, ValueError):
        raise QuantizeError(f"input size {value!r} unknown; use N, HxW or [H, W], e.g. 48, 96x96 or [96, 96]") from None


def parse_normalisation(value: Any, which: int) -> list[float]:
    """mean (which=0) or std (which=1) from a name ("imagenet", "half", "none"), a number or a list."""
    if isinstance(value, str):
        name = value.strip().lower()
        if name in NORMALISATIONS:
            return list(NORMALISATIONS[name][which])
        try:
            return [float(v) for v in name.replace("/", " ").replace(",", " ").split()]
        except ValueError:
            raise QuantizeError(
                f"normalisation {value!r} is neither a number list nor one of {', '.join(NORMALISATIONS)}"
            ) from None
    if isinstance(value, (int, float)):
        return [float(value)]
    return [float(v) for v in value]


def preprocessing_from_spec(section: Mapping[str, Any], default_channels: int = 3) -> Preprocessing:
    """Preprocessing from a spec's "input" section (teacher spec or model card layout).

    Accepts {channels, size: N | [H, W], mean, std, resize, scale, illumination} and the model card's
    {shape: [1, C, H, W], color: gray|rgb}. Without mean/std a 3-channel input gets ImageNet statistics (the
    torchvision convention).
    """
    channels = section.get("channels")
    size = section.get("size")
    shape = section.get("shape")
    if shape is not None and len(shape) == 4:
        channels = channels or shape[1]
        size = size or shape[2:]
    if channels is None and "color" in section:
        channels = 1 if str(section["color"]).lower() in ("gray", "grey") else 3
    channels = parse_channels(default_channels if channels is None else channels)
    size = (48, 48) if size is None else _parse_size(size)
    default = "imagenet" if channels == 3 else "none"
    mean_value = section.get("mean", default)
    std_value = section.get("std", mean_value if isinstance(mean_value, str) else default)
    scale = str(section.get("scale", "pixel/255")).replace(" ", "").lower()
    if scale not in ("pixel/255", "pixel"):
        raise QuantizeError(f"input scale {section.get('scale')!r} unknown; use 'pixel/255' or 'pixel'")
    return Preprocessing(
        size=size,
        channels=channels,
        mean=parse_normalisation(mean_value, 0),
        std=parse_normalisation(std_value, 1),
        resize=str(section.get("resize", "bilinear")).lower(),
        scale=1.0 / 255.0 if scale == "pixel/255" else 1.0,
        illumination=str(section.get("illumination", "none")).lower(),
    )
