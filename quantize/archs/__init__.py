"""torchvision-layout architectures: build them by name, and recognise them from a checkpoint's keys and shapes.

The classifier head each may carry is described by a head spec (quantize.archs.heads).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from quantize.archs.densenet import DENSENET_CONFIGS, DenseNet
from quantize.archs.heads import head_attr, infer_head, make_head
from quantize.archs.resnet import RESNET_CONFIGS, ResNet
from quantize.errors import QuantizeError

ARCH_NAMES: tuple[str, ...] = (*RESNET_CONFIGS, *DENSENET_CONFIGS)
# Keys under which training scripts commonly nest the weights, in the order they are tried.
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "net", "weights", "ema", "model_ema")
# Prefixes added by DataParallel, torch.compile and Lightning-style wrappers.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "model.", "_orig_mod.")
_LEGACY_DENSE = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


@dataclass(frozen=True)
class ArchInfo:
    """What a state_dict says about the network that produced it."""

    arch: str
    head: str
    num_classes: int
    in_channels: int = 3
    stem: str = "imagenet"


def build_arch(
    name: str, num_classes: int, head_spec: str | None = None, *, in_channels: int = 3, stem: str = "imagenet"
) -> nn.Module:
    """A freshly initialised torchvision-layout network with the given classifier head."""
    name = name.lower()
    if name in RESNET_CONFIGS:
        model: ResNet | DenseNet = ResNet(name, num_classes, in_channels=in_channels, stem=stem)
    elif name in DENSENET_CONFIGS:
        if stem != "imagenet":
            raise QuantizeError(f"{name} has only the ImageNet stem; drop stem={stem!r}")
        model = DenseNet(name, num_classes, in_channels=in_channels)
    else:
        raise QuantizeError(f"unknown architecture {name!r}; known: {', '.join(ARCH_NAMES)}")
    setattr(model, head_attr(name), make_head(head_spec, model.num_features, num_classes))
    return model


def unwrap_checkpoint(obj: Any) -> dict[str, Tensor]:
    """The bare state_dict inside what torch.load returned: nested wrapper dicts and key prefixes removed."""
    for _ in range(4):  # wrappers nest at most a few levels deep in practice
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return _strip_prefixes(dict(obj))
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), (Mapping, nn.Module))), None)
        if inner is None:
            break
        obj = inner
    keys = list(obj)[:8] if isinstance(obj, Mapping) else []
    raise QuantizeError(
        f"checkpoint holds no state_dict ({type(obj).__name__}"
        + (f" with keys {', '.join(map(str, keys))}" if keys else "")
        + f"); save model.state_dict(), or nest it under one of {', '.join(WRAPPER_KEYS)}"
    )


def _strip_prefixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    # Checkpoints from torchvision < 0.3 spell DenseNet layers "norm.1" instead of "norm1".
    return {(_LEGACY_DENSE.sub(lambda m: m.group(1) + m.group(2), k)): v for k, v in sd.items()}


def _layer_counts(sd: Mapping[str, Tensor], pattern: str) -> tuple[int, ...]:
    counts: dict[int, int] = {}
    for key in sd:
        m = re.match(pattern, key)
        if m:
            stage, index = int(m.group(1)), int(m.group(2))
            counts[stage] = max(counts.get(stage, 0), index)
    return tuple(counts.get(s, 0) for s in range(1, 5))


def _guess(sd: Mapping[str, Tensor]) -> ArchInfo | None:
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:
        blocks = _layer_counts(sd, r"^layer(\d)\.(\d+)\.conv1\.weight$")
        blocks = tuple(b + 1 for b in blocks)  # block indices start at 0
        bottleneck = "layer1.0.conv3.weight" in sd
        arch = next((n for n, c in RESNET_CONFIGS.items() if c == (bottleneck, blocks)), None)
        head = infer_head(sd, "fc.")
        if arch is None or head is None:
            return None
        conv1 = sd["conv1.weight"]
        stem = "cifar" if conv1.shape[-1] == 3 else "imagenet"
        return ArchInfo(arch, head[0], head[1], int(conv1.shape[1]), stem)
    if "features.conv0.weight" in sd:
        blocks = _layer_counts(sd, r"^features\.denseblock(\d)\.denselayer(\d+)\.conv1\.weight$")
        growth_key = "features.denseblock1.denselayer1.conv2.weight"
        if growth_key not in sd:
            return None
        config = (int(sd[growth_key].shape[0]), blocks, int(sd["features.conv0.weight"].shape[0]))
        arch = next((n for n, c in DENSENET_CONFIGS.items() if c == config), None)
        head = infer_head(sd, "classifier.")
        if arch is None or head is None:
            return None
        return ArchInfo(arch, head[0], head[1], int(sd["features.conv0.weight"].shape[1]))
    return None


def _expected_keys(arch: str, head: str | None, num_classes: int) -> set[str]:
    with torch.device("meta"):  # names only: no memory, no initialisation cost
        model = build_arch(arch, num_classes, head)
    return set(model.state_dict())


def _mismatch_error(sd: Mapping[str, Tensor], wanted: str | None = None) -> QuantizeError:
    """Names the keys that differ from the closest known architecture (or from `wanted`); where the weights are
    plainly another known architecture than `wanted`, names that one instead."""
    held = _guess(sd) if wanted else None
    if held is not None and held.arch != wanted:
        return QuantizeError(f"the checkpoint holds {held.arch} weights, not {wanted}; give arch {held.arch}")
    given = {k for k in sd if not k.endswith("num_batches_tracked")}
    best: tuple[int, str, list[str], list[str]] | None = None
    for arch in [wanted] if wanted else ARCH_NAMES:
        head = infer_head(sd, head_attr(arch) + ".")
        try:
            expected = _expected_keys(arch, head[0] if head else None, head[1] if head else 7)
        except QuantizeError:
            expected = _expected_keys(arch, None, 7)
        expected = {k for k in expected if not k.endswith("num_batches_tracked")}
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        score = len(missing) + len(unexpected)
        if best is None or score < best[0]:
            best = (score, arch, missing, unexpected)
    assert best is not None
    _, arch, missing, unexpected = best
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
    if unexpected:
        parts.append(
            f"unexpected {', '.join(unexpected[:3])}"
            + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else "")
        )
    lead = (
        f"checkpoint does not match {arch}"
        if wanted
        else f"checkpoint matches no known architecture; closest is {arch}"
    )
    return QuantizeError(
        f"{lead}: {'; '.join(parts) or 'same keys, different layer sizes'}; "
        f"give the right arch in the teacher spec (known: {', '.join(ARCH_NAMES)})"
    )


def inspect_state_dict(sd: Mapping[str, Tensor]) -> ArchInfo:
    """Architecture, head, class count, input channels and stem of a torchvision-layout state_dict."""
    info = _guess(sd)
    if info is None:
        raise _mismatch_error(sd)
    return info


def infer_from_state_dict(sd: Mapping[str, Tensor]) -> tuple[str, str, int]:
    """(arch name, head spec, num_classes) of a torchvision-layout state_dict."""
    info = inspect_state_dict(sd)
    return info.arch, info.head, info.num_classes


def model_from_state_dict(
    sd: Mapping[str, Tensor], arch: str | None = None, head: str | None = None
) -> tuple[nn.Module, ArchInfo]:
    """The network of a state_dict with its weights loaded strictly; `arch`/`head` override what the keys say."""
    if arch:
        arch = arch.lower()
        if arch not in ARCH_NAMES:
            raise QuantizeError(f"unknown architecture {arch!r}; known: {', '.join(ARCH_NAMES)}")
        inferred_head = infer_head(sd, head_attr(arch) + ".")
        first_conv = sd.get("conv1.weight" if arch in RESNET_CONFIGS else "features.conv0.weight")
        if inferred_head is None or first_conv is None:
            raise _mismatch_error(sd, arch)
        stem = "cifar" if arch in RESNET_CONFIGS and first_conv.shape[-1] == 3 else "imagenet"
        info = ArchInfo(arch, head or inferred_head[0], inferred_head[1], int(first_conv.shape[1]), stem)
    else:
        info = inspect_state_dict(sd)
        if head:
            info = ArchInfo(info.arch, head, info.num_classes, info.in_channels, info.stem)
    model = build_arch(info.arch, info.num_classes, info.head, in_channels=info.in_channels, stem=info.stem)
    load_weights(model, sd, info.arch)
    return model, info


def load_weights(model: nn.Module, sd: Mapping[str, Tensor], arch: str) -> None:
    """`sd` into `model` (an `arch`), every key and shape matching; a QuantizeError naming what does not."""
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if expected != {k for k in sd if not k.endswith("num_batches_tracked")}:
        raise _mismatch_error(sd, arch)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).split("size mismatch for ", 1)[-1].splitlines()[0].strip()
        raise QuantizeError(f"checkpoint does not fit {arch}: size mismatch for {first}") from None
