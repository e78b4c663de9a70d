"""torchvision-layout architectures: build them by name, and recognise them from a checkpoint's keys and shapes.

A head spec names the classifier that replaces `fc` (ResNet) or `classifier` (DenseNet):
  "linear" (or None)                 plain nn.Linear(features, num_classes), keys fc.weight / fc.bias
  "dropout:0.3,linear"               nn.Sequential(Dropout(0.3), Linear(features, num_classes)), keys fc.1.*
  "linear:256,relu,dropout,linear"   nn.Sequential(Linear(features, 256), ReLU, Dropout, Linear(256, num_classes))
  "seq:linear"                       nn.Sequential(Linear(features, num_classes)), keys fc.0.*
Tokens: linear (the output layer, last), linear:N (hidden), bn (BatchNorm1d), relu, dropout[:p].
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from quantize.archs.densenet import DENSENET_CONFIGS, DenseNet
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


def head_attr(arch: str) -> str:
    """Name of the replaceable classifier module of an architecture."""
    return "fc" if arch.startswith("resnet") else "classifier"


def _head_tokens(spec: str | None) -> tuple[bool, list[str]]:
    """(is a Sequential, tokens) of a head spec."""
    spec = (spec or "linear").strip().lower().replace(" ", "")
    sequential = spec.startswith("seq:")
    tokens = [t for t in spec.removeprefix("seq:").split(",") if t]
    return sequential or tokens != ["linear"], tokens


def make_head(spec: str | None, in_features: int, num_classes: int) -> nn.Module:
    """The classifier module a head spec describes."""
    sequential, tokens = _head_tokens(spec)
    if not tokens or tokens[-1] != "linear" or tokens.count("linear") != 1:
        raise QuantizeError(
            f"head spec {spec!r} must end with exactly one 'linear' (the output layer), "
            "e.g. 'linear' or 'dropout:0.3,linear' or 'linear:256,relu,dropout,linear'"
        )
    layers: list[nn.Module] = []
    width = in_features
    for token in tokens:
        kind, _, arg = token.partition(":")
        try:
            if kind == "linear":
                out = int(arg) if arg else num_classes
                layers.append(nn.Linear(width, out))
                width = out
            elif kind == "bn":
                layers.append(nn.BatchNorm1d(width))
            elif kind == "relu":
                layers.append(nn.ReLU(inplace=True))
            elif kind == "dropout":
                layers.append(nn.Dropout(float(arg) if arg else 0.5))
            else:
                raise ValueError(kind)
        except ValueError:
            raise QuantizeError(
                f"head spec {spec!r}: bad layer {token!r}; use linear, linear:N, bn, relu, dropout or dropout:P"
            ) from None
    return nn.Sequential(*layers) if sequential else layers[0]


def build_arch(
    name: str, num_classes: int, head_spec: str | None = None, *, in_channels: int = 3, stem: str = "imagenet"
) -> nn.Module:
    """A freshly initialised torchvision-layout network with the given classifier head."""
    name = name.lower()
    if name in RESNET_CONFIGS:
        model: nn.Module = ResNet(name, num_classes, in_channels=in_channels, stem=stem)
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


def _infer_head(sd: Mapping[str, Tensor], prefix: str) -> tuple[str, int] | None:
    """(head spec, num_classes) from the keys under `prefix` ("fc." or "classifier."), None if there are none."""
    sub = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if not sub:
        return None
    weight = sub.get("weight")
    if weight is not None and weight.ndim == 2:
        return "linear", int(weight.shape[0])
    layers: dict[int, dict[str, Tensor]] = {}
    for key, value in sub.items():
        index, _, param = key.partition(".")
        if not index.isdigit():
            return None
        layers.setdefault(int(index), {})[param] = value
    tokens: list[str] = []
    after_param_layer = False
    for i in range(max(layers) + 1):
        params = layers.get(i)
        if params is None:
            # Parameter-free slot: ReLU right after a layer with weights, Dropout elsewhere (ReLU is a no-op on the
            # non-negative pooled features, Dropout is one in eval mode, so the guess cannot change the output).
            tokens.append("relu" if after_param_layer else "dropout")
            after_param_layer = False
            continue
        if "running_mean" in params:
            tokens.append("bn")
        elif "weight" in params and params["weight"].ndim == 2:
            tokens.append(f"linear:{params['weight'].shape[0]}")
        else:
            return None
        after_param_layer = True
    last = max(i for i, t in enumerate(tokens) if t.startswith("linear") or t == "bn")
    if not tokens[last].startswith("linear:"):
        return None
    num_classes = int(tokens[last].split(":")[1])
    tokens[last] = "linear"
    del tokens[last + 1 :]
    return ("seq:" if tokens == ["linear"] else "") + ",".join(tokens), num_classes


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
        head = _infer_head(sd, "fc.")
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
        head = _infer_head(sd, "classifier.")
        if arch is None or head is None:
            return None
        return ArchInfo(arch, head[0], head[1], int(sd["features.conv0.weight"].shape[1]))
    return None


def _expected_keys(arch: str, head: str | None, num_classes: int) -> set[str]:
    with torch.device("meta"):  # names only: no memory, no initialisation cost
        model = build_arch(arch, num_classes, head)
    return set(model.state_dict())


def _mismatch_error(sd: Mapping[str, Tensor], wanted: str | None = None) -> QuantizeError:
    """Names the keys that differ from the closest known architecture (or from `wanted`)."""
    given = {k for k in sd if not k.endswith("num_batches_tracked")}
    best: tuple[int, str, list[str], list[str]] | None = None
    for arch in [wanted] if wanted else ARCH_NAMES:
        head = _infer_head(sd, head_attr(arch) + ".")
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
        inferred_head = _infer_head(sd, head_attr(arch) + ".")
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
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if expected != {k for k in sd if not k.endswith("num_batches_tracked")}:
        raise _mismatch_error(sd, info.arch)
    _load_strict(model, sd, info.arch)
    return model, info


def _load_strict(model: nn.Module, sd: Mapping[str, Tensor], arch: str) -> None:
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).split("size mismatch for ", 1)[-1].splitlines()[0].strip()
        raise QuantizeError(f"checkpoint does not fit {arch}: size mismatch for {first}") from None
