"""Confidence calibration: make the model's probabilities mean what they say, so the daemon's tracker
thresholds (an expression settles once its smoothed probability passes `tracking.min_confidence`) read the same
for every model.

A student trained on soft targets (annotator votes, teachers at a temperature) answers with flatter
probabilities than one trained on hard labels, although it is right as often. One temperature T, fitted on the
hold-out faces the student never trained on (least negative log-likelihood of their labels), rescales its
logits; dividing the classifier layer's weights and bias by T builds that into the exported graph, so the
daemon needs no code, and the predicted class never changes.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from quantize.student import Student, ViewAveraged

SEARCH = (math.log(0.2), math.log(5.0))  # temperatures searched, as log T
ECE_BINS = 15


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    log_probs = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature with the least negative log-likelihood of `labels` (golden-section search on log T;
    the likelihood is unimodal in it)."""
    low, high = SEARCH
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    for _ in range(60):
        if _nll(logits, labels, math.exp(a)) < _nll(logits, labels, math.exp(b)):
            high, b = b, a
            a = high - ratio * (high - low)
        else:
            low, a = a, b
            b = low + ratio * (high - low)
    return math.exp((low + high) / 2)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |confidence - accuracy| over equal-width confidence bins, weighted by the faces in each."""
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(confidence[inside].mean() - (predicted[inside] == labels[inside]).mean())
    return float(total)


def exported_logits(model: Student, inputs: np.ndarray, size: int, flip: bool, zooms: tuple[float, ...]) -> np.ndarray:
    """The logits the exported graph gives for prepared inputs (N, 1, S, S): the same views, averaged."""
    graph = ViewAveraged(model, size, flip, zooms).eval() if flip or zooms else model.eval()
    with torch.no_grad():
        return np.concatenate(
            [graph(torch.from_numpy(inputs[i : i + 512])).float().numpy() for i in range(0, len(inputs), 512)]
        )


def with_temperature(model: Student, temperature: float) -> Student:
    """A copy of `model` whose logits are divided by `temperature` (its classifier layer scaled)."""
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.classifier.weight.mul_(1.0 / temperature)
        scaled.classifier.bias.mul_(1.0 / temperature)
    return scaled
