"""The teachers' training-time augmentation: grey face batches as whole-batch tensor ops (fast on CPU, runs on
the GPU too). The student has its own, per face (quantize.student_augment).

One affine warp per face does the random resized crop, shift, rotation, mirror and the resize to the model's
input size in a single grid_sample; then brightness/contrast jitter and random erasing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Augmentation:
    zoom: tuple[float, float] = (0.85, 1.15)  # visible side relative to the face crop; < 1 zooms in
    aspect: float = 0.1  # +- relative change of width vs height
    rotate_deg: float = 10.0
    shift: float = 0.1  # +- fraction of the side
    flip: bool = True
    brightness: float = 0.2  # +- added to pixel/255
    contrast: float = 0.25  # +- relative
    erase_p: float = 0.25
    erase_area: tuple[float, float] = (0.02, 0.15)  # fraction of the image

    def __call__(self, images_u8: Tensor, size: tuple[int, int], generator: torch.Generator) -> Tensor:
        """(B, 1, H, W) float32 pixel/255 on the images' device from uint8 faces (B, h, w)."""
        b = images_u8.shape[0]
        device = images_u8.device

        def uniform(low: float, high: float) -> Tensor:
            return (torch.rand(b, generator=generator) * (high - low) + low).to(device)

        x = images_u8.to(torch.float32).unsqueeze(1) / 255.0
        side = uniform(*self.zoom)
        ratio = uniform(1.0 - self.aspect, 1.0 + self.aspect).sqrt()
        angle = uniform(-self.rotate_deg, self.rotate_deg) * (math.pi / 180.0)
        mirror = torch.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if self.flip else torch.ones(b, device=device)
        cos, sin = angle.cos(), angle.sin()
        sx, sy = side * ratio * mirror, side / ratio
        theta = torch.stack(
            [
                torch.stack([cos * sx, -sin * sy, uniform(-2 * self.shift, 2 * self.shift)], 1),
                torch.stack([sin * sx, cos * sy, uniform(-2 * self.shift, 2 * self.shift)], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, [b, 1, *size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

        mean = x.mean(dim=(2, 3), keepdim=True)
        contrast = uniform(1.0 - self.contrast, 1.0 + self.contrast).view(b, 1, 1, 1)
        bright = uniform(-self.brightness, self.brightness).view(b, 1, 1, 1)
        x = ((x - mean) * contrast + mean + bright).clamp_(0.0, 1.0)
        return self._erase(x, generator) if self.erase_p > 0 else x

    def _erase(self, x: Tensor, generator: torch.Generator) -> Tensor:
        b, _, h, w = x.shape
        rand = torch.rand(b, 5, generator=generator).to(x.device)
        area = (rand[:, 0] * (self.erase_area[1] - self.erase_area[0]) + self.erase_area[0]) * h * w
        aspect = torch.exp((rand[:, 1] * 2.0 - 1.0) * math.log(3.3))
        eh = (area * aspect).sqrt().clamp(max=h)
        ew = (area / aspect).sqrt().clamp(max=w)
        y0 = rand[:, 2] * (h - eh)
        x0 = rand[:, 3] * (w - ew)
        chosen = rand[:, 4] < self.erase_p
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        box = (
            (ys >= y0.view(b, 1, 1))
            & (ys < (y0 + eh).view(b, 1, 1))
            & (xs >= x0.view(b, 1, 1))
            & (xs < (x0 + ew).view(b, 1, 1))
            & chosen.view(b, 1, 1)
        )
        noise = torch.rand(x.shape, generator=generator).to(x.device)
        return torch.where(box.unsqueeze(1), noise, x)
