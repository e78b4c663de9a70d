"""Evaluate an ONNX expression model on labelled faces through the daemon's own loader and preprocessing.

The model is opened with edge.classifier.ExpressionModel, so its card decides everything (size, colour, mean,
std, output kind, sha256), never the training settings: a wrong card shows up here as an error or as lost
accuracy. Data-set faces are already cropped, so the card's crop margin does not apply; each face goes to
ExpressionModel.predict as the crop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.classifier import ExpressionModel
from edge.contract import CANONICAL_LABELS, card_path_for, load_card
from quantize.datasets import FaceSet
from quantize.errors import QuantizeError
from quantize.labels import map_label_name

PREDICT_CHUNK = 512


def card_precision(path: Path) -> str:
    """The precision the card beside `path` gives that file ("auto" when it says none)."""
    card = load_card(card_path_for(path))
    return next((p for p, f in card.variants.items() if f == path.name), None) or card.precision or "auto"


def load_daemon_model(path: Path, precision: str | None = None, threads: int = 2) -> ExpressionModel:
    """The daemon's loader, pinned to `precision` (by default the one its card gives `path`), never a timed choice."""
    path = existing_model(path)
    return ExpressionModel.load(path, precision=precision or card_precision(path), threads=threads)


def existing_model(path: Path) -> Path:
    """`path`, or a one-line error naming it when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise QuantizeError(f"model {path} not found; give the .onnx written by `quantize build`")
    return path


def predict(model: ExpressionModel, images: np.ndarray) -> np.ndarray:
    """Probabilities (N, L) for uint8 grey faces (N, h, w), in chunks to bound memory."""
    parts = [model.predict(list(images[i : i + PREDICT_CHUNK])) for i in range(0, len(images), PREDICT_CHUNK)]
    return np.concatenate(parts) if parts else np.zeros((0, len(model.labels)), np.float32)


def time_per_face(model: ExpressionModel, face: np.ndarray, runs: int = 200, warmup: int = 20) -> dict[str, float]:
    """Milliseconds per face (preprocessing included) at batch 1: median and 90th percentile."""
    for _ in range(warmup):
        model.predict([face])
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        model.predict([face])
        times[i] = time.perf_counter() - start
    return {"median": float(np.median(times) * 1e3), "p90": float(np.percentile(times, 90) * 1e3)}


def measure_latency(path: Path, face: np.ndarray, runs: int = 200, warmup: int = 20) -> dict[str, float]:
    """Milliseconds per face (preprocessing included) of the model at `path`, batch 1 on one thread."""
    return time_per_face(load_daemon_model(path, threads=1), face, runs, warmup)


@dataclass
class Evaluation:
    labels: list[str]  # the model's labels, in its output order
    confusion: np.ndarray  # (true, predicted) counts over the model's labels
    probs: np.ndarray  # (N, L) probabilities of the evaluated faces
    excluded: int  # faces of a class the model does not know
    size_bytes: int
    latency_ms: dict[str, float] | None = None

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.count, 1))

    @property
    def recall(self) -> dict[str, float]:
        support = self.confusion.sum(axis=1)
        return {name: float(self.confusion[i, i] / support[i]) for i, name in enumerate(self.labels) if support[i] > 0}

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the classes present in the evaluated faces."""
        support = self.confusion.sum(axis=1)
        predicted = self.confusion.sum(axis=0)
        scores = []
        for i in np.flatnonzero(support):
            tp = self.confusion[i, i]
            scores.append(2 * tp / (support[i] + predicted[i]) if tp else 0.0)
        return float(np.mean(scores)) if scores else 0.0

    def metrics(self) -> dict[str, Any]:
        """JSON-ready summary for the model card."""
        out: dict[str, Any] = {
            "top1": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "recall": {k: round(v, 4) for k, v in self.recall.items()},
            "faces": self.count,
            "size_bytes": self.size_bytes,
            "confusion": self.confusion.tolist(),
        }
        if self.excluded:
            out["excluded_unknown_class"] = self.excluded
        return out


def evaluate_onnx(
    model_path: Path, faces: FaceSet, *, precision: str | None = None, latency_runs: int = 200
) -> Evaluation:
    """Top-1, recall, F1 and confusion of the ONNX model at `model_path` (at `precision`, by default the one its
    card gives the file) on `faces`; latency too when latency_runs > 0.

    The model is loaded once, on one thread: the setting latency is quoted at. Faces of a class the model does
    not know (disgust for a six-class model) are left out and counted."""
    model = load_daemon_model(model_path, precision, threads=1)
    to_model = np.full(len(CANONICAL_LABELS), -1)
    to_model[[map_label_name(name) for name in model.labels]] = np.arange(len(model.labels))
    truth = to_model[faces.labels]
    known = truth >= 0
    probs = predict(model, faces.images[known])
    confusion = np.zeros((len(model.labels), len(model.labels)), dtype=np.int64)
    np.add.at(confusion, (truth[known], probs.argmax(axis=1)), 1)
    latency = time_per_face(model, faces.images[0], runs=latency_runs) if latency_runs > 0 else None
    return Evaluation(
        list(model.labels), confusion, probs, int((~known).sum()), Path(model_path).stat().st_size, latency
    )


def confusion_table(ev: Evaluation) -> str:
    """The confusion matrix as aligned text, rows true, columns predicted, with per-class recall."""
    width = max(7, *(len(n) for n in ev.labels)) + 1
    lines = ["true \\ pred".ljust(width) + "".join(n[: width - 1].rjust(width) for n in ev.labels) + "  recall"]
    recall = ev.recall
    for i, name in enumerate(ev.labels):
        row = "".join(str(v).rjust(width) for v in ev.confusion[i])
        r = f"{recall[name] * 100:6.1f}%" if name in recall else "     -"
        lines.append(name.ljust(width) + row + "  " + r)
    return "\n".join(lines)


def save_confusion_png(ev: Evaluation, path: Path, title: str) -> None:
    """Row-normalised confusion matrix as a PNG, counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ev.confusion.sum(axis=1, keepdims=True)
    share = np.divide(ev.confusion, rows, out=np.zeros(ev.confusion.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(ev.labels))
    ax.set_xticks(ticks, ev.labels, rotation=45, ha="right")
    ax.set_yticks(ticks, ev.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in ticks:
        for j in ticks:
            ax.text(
                j,
                i,
                str(ev.confusion[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.5 else "black",
            )
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
