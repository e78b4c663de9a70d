"""The student family: small depthwise-separable CNNs built for INT8 inference on a Raspberry Pi.

Every block is Conv + BatchNorm + ReLU6, optionally closed by a residual Add, and the head is
GlobalAveragePool + Linear (Gemm). These are the ops onnxruntime quantizes best; BatchNorm is folded
into the convolutions before export. Squeeze-excite is left out: its Sigmoid and Mul add latency at
batch 1 and lose accuracy under static INT8 quantization, for a gain that is small at these sizes.

The nets are fully convolutional, so one architecture takes 48x48 (FER2013's native size) or 64x64.

    name  parameters  stem  stages (channels x blocks, first block's stride)   MACs at 48x48
    xs        54,535    16  32x1/2  64x2/2  128x2/2  128x1/1                      ~4 M
    s        241,527    24  48x2/2  96x2/2  192x3/2  256x2/1                     ~11 M
    m        551,367    32  64x2/2  128x3/2 256x4/2  384x2/1                     ~26 M
    l        970,439    32  64x2/2  128x3/2 256x4/2  512x3/1                     ~37 M

(tests/test_quantize_student.py checks the parameter column against the built models.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from quantize.errors import QuantizeError


@dataclass(frozen=True)
class StudentArch:
    name: str
    stem: int
    # (output channels, number of blocks, stride of the first block)
    stages: tuple[tuple[int, int, int], ...]


STUDENTS: dict[str, StudentArch] = {
    arch.name: arch
    for arch in (
        StudentArch("xs", 16, ((32, 1, 2), (64, 2, 2), (128, 2, 2), (128, 1, 1))),
        StudentArch("s", 24, ((48, 2, 2), (96, 2, 2), (192, 3, 2), (256, 2, 1))),
        StudentArch("m", 32, ((64, 2, 2), (128, 3, 2), (256, 4, 2), (384, 2, 1))),
        StudentArch("l", 32, ((64, 2, 2), (128, 3, 2), (256, 4, 2), (512, 3, 1))),
    )
}


class ConvBN(nn.Sequential):
    """Conv without bias + BatchNorm, so export can fold the pair into one Conv."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
        )


class SeparableBlock(nn.Module):
    """Depthwise 3x3 -> ReLU6 -> pointwise 1x1 (+ input when the shapes match) -> ReLU6."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.depthwise = ConvBN(c_in, c_in, 3, stride, groups=c_in)
        self.pointwise = ConvBN(c_in, c_out, 1)
        self.residual = stride == 1 and c_in == c_out
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.act(self.depthwise(x)))
        return self.act(y + x if self.residual else y)


class Student(nn.Module):
    def __init__(self, arch: StudentArch, num_classes: int, in_channels: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        self.arch = arch
        layers: list[nn.Module] = [ConvBN(in_channels, arch.stem, 3), nn.ReLU6()]
        c = arch.stem
        for c_out, blocks, stride in arch.stages:
            for i in range(blocks):
                layers.append(SeparableBlock(c, c_out, stride if i == 0 else 1))
                c = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


class ViewAveraged(nn.Module):
    """`net` run on several views of each face in one batch, logits averaged: test-time augmentation built into
    the exported graph, so the daemon needs no code for it.

    The views are the face itself, one centre zoom per factor in `zooms` (the middle size/zoom pixels of the
    face, resized back to `size` bilinearly), and with `flip` the mirror image of each of those. Flipping gained
    student m 0.8 top-1 points on FER2013; docs/model.md has what the zoom views gain."""

    def __init__(self, net: nn.Module, size: int, flip: bool = True, zooms: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.net = net
        self.size = size
        self.flip = flip
        self.crops = [zoom_crop(size, z) for z in zooms]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        views = [x]
        for start, side in self.crops:
            patch = x[:, :, start : start + side, start : start + side]
            views.append(
                nn.functional.interpolate(patch, size=(self.size, self.size), mode="bilinear", align_corners=False)
            )
        if self.flip:
            views += [v.flip(-1) for v in views]
        logits = self.net(torch.cat(views))
        return logits.reshape(len(views), n, -1).mean(0)


def views_label(flip: bool, zooms: tuple[float, ...] | list[float]) -> str:
    """The views besides the face, for logs and tables: "flip + zoom 1.2", or "" for the face alone."""
    return " + ".join((["flip"] if flip else []) + [f"zoom {z:g}" for z in zooms])


def zoom_crop(size: int, zoom: float) -> tuple[int, int]:
    """(first pixel, side) of the centred square that a zoom by `zoom` enlarges to `size`."""
    if not 1.0 < zoom <= 2.0:
        raise QuantizeError(f"zoom view {zoom:g} must lie in (1, 2], e.g. 1.2 (the middle 40 of 48 pixels)")
    side = round(size / zoom)
    return (size - side) // 2, side


def build_student(name: str, num_classes: int = 7, in_channels: int = 1) -> Student:
    """A freshly initialised student; raises KeyError naming the known sizes for an unknown name."""
    if name not in STUDENTS:
        raise KeyError(f"unknown student {name!r}; choose one of {', '.join(STUDENTS)}")
    return Student(STUDENTS[name], num_classes, in_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fold_batchnorm(model: Student) -> Student:
    """Return an eval-mode copy whose ConvBN pairs are single Convs with bias (what gets exported)."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBN) and len(module) == 2:
            conv, bn = module[0], module[1]
            assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            fused = fuse_conv_bn_eval(conv, bn)
            del module[1]
            module[0] = fused
    return folded
