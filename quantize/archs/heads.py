"""Classifier heads of the torchvision-layout networks: built from a spec, and read back from a checkpoint's keys.

A head spec names the classifier that replaces `fc` (ResNet) or `classifier` (DenseNet):
  "linear" (or None)                 plain nn.Linear(features, num_classes), keys fc.weight / fc.bias
  "dropout:0.3,linear"               nn.Sequential(Dropout(0.3), Linear(features, num_classes)), keys fc.1.*
  "linear:256,relu,dropout,linear"   nn.Sequential(Linear(features, 256), ReLU, Dropout, Linear(256, num_classes))
  "seq:linear"                       nn.Sequential(Linear(features, num_classes)), keys fc.0.*
Tokens: linear (the output layer, last), linear:N (hidden), bn (BatchNorm1d), relu, dropout[:p].
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from quantize.errors import QuantizeError


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


def infer_head(sd: Mapping[str, Tensor], prefix: str) -> tuple[str, int] | None:
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
