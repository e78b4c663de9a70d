"""The expression model: an ONNX classifier run by onnxruntime, fed as its model card says."""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from edge.config import read_denied
from edge.contract import ModelCard, card_path_for, file_sha256, first_line, load_card
from edge.errors import ModelError
from edge.illumination import normalise_illumination

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "int8", "fp32")
WARMUP_RUNS = 10
TIMED_RUNS = 50
REBUILD_HINT = "re-run `quantize build` or restore the file shipped with its card"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, L) logits."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _variant_files(card: ModelCard, card_path: Path) -> dict[str, Path]:
    return {precision: card_path.parent / name for precision, name in card.variants.items()}


def _precision_of(path: Path, card: ModelCard, card_path: Path) -> str | None:
    """Which precision `path` is, as far as the card tells."""
    for precision, variant in _variant_files(card, card_path).items():
        if variant.resolve() == path.resolve():
            return precision
    return card.precision if path.resolve() == card_path.with_suffix(".onnx").resolve() else None


def _expected_sha256(path: Path, precision: str | None, card: ModelCard, card_path: Path) -> str | None:
    """The card's sha256 belongs to its main model (<card>.onnx); variants may carry their own."""
    if path.resolve() == card_path.with_suffix(".onnx").resolve():
        return card.sha256
    return card.variant_sha256.get(precision) if precision else None


class ExpressionModel:
    """Use `ExpressionModel.load(path)`; `predict(crops)` returns (N, len(labels)) float32 probabilities."""

    def __init__(self, session: ort.InferenceSession, card: ModelCard, path: Path, precision: str, sha256: str) -> None:
        self._session = session
        self._input_name = session.get_inputs()[0].name
        self._one_at_a_time = session.get_inputs()[0].shape[0] == 1
        self._apply_softmax = card.raw.get("output", "logits") != "probabilities"
        self._mean = np.asarray(card.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        self._std = np.asarray(card.std, dtype=np.float32).reshape(1, -1, 1, 1)
        self.card = card
        self.labels = list(card.labels)
        self.path = path
        self.precision = precision
        self.model_id = f"{card.name}@{sha256[:12]}"

    @classmethod
    def load(cls, path: Path, precision: str = "auto", threads: int = 1, spin_wait: bool = False) -> ExpressionModel:
        """Load and check model + card; with precision "auto" time the card's variants and keep the faster.

        `threads` > 1 runs one model call on several cores; with `spin_wait` those threads keep a core busy
        between calls to start the next one a little sooner, which on a daemon that calls the model a few
        times a second costs far more CPU than the work itself."""
        if precision not in PRECISIONS:
            raise ModelError(f"model precision {precision!r} is unknown; use {', '.join(PRECISIONS)}")
        path = Path(path).expanduser()
        if not path.is_file():
            raise ModelError(
                f"expression model {path} not found; fix the model path, or build one with "
                f"`quantize build` (it writes the .onnx and its .json card)"
            )
        if why := read_denied(path):
            raise ModelError(f"expression model {path} {why}")
        card_path = card_path_for(path)
        card = load_card(card_path)
        variants = {p: f for p, f in _variant_files(card, card_path).items() if p in ("int8", "fp32")}
        given = _precision_of(path, card, card_path)
        if precision == "auto":
            present = {p: f for p, f in variants.items() if f.is_file()}
            candidates = present if len(present) == 2 else {given or card.precision or "unknown": path}
            for p, f in variants.items():
                if p not in present:
                    logger.warning(
                        "model card %s lists %s variant %s but the file is missing; not timing it", card_path, p, f
                    )
        elif precision in variants:
            candidates = {precision: variants[precision]}
            if not variants[precision].is_file():
                raise ModelError(
                    f"{precision} variant {variants[precision]} named by card {card_path} not "
                    f"found; restore it or set the model precision to auto"
                )
        elif given == precision:
            candidates = {precision: path}
        else:
            raise ModelError(
                f"model {path} is {given or 'of unknown precision'} and its card {card_path} has "
                f"no {precision} variant; set the model precision to auto or build an {precision} "
                f"model with `quantize build`"
            )
        models = [cls._open(f, p, card, card_path, threads, spin_wait) for p, f in candidates.items()]
        if len(models) == 1:
            chosen = models[0]
        else:
            timings = _median_run_ms(models)
            chosen = min(models, key=lambda m: timings[m.precision])
            logger.info(
                "model precision auto: %s -> %s",
                ", ".join(f"{p} {ms:.2f} ms" for p, ms in timings.items()),
                chosen.precision,
            )
        logger.info(
            "expression model %s (%s, %s) from %s",
            chosen.model_id,
            chosen.precision,
            "x".join(map(str, (card.channels, card.height, card.width))),
            chosen.path,
        )
        return chosen

    @classmethod
    def _open(
        cls, path: Path, precision: str, card: ModelCard, card_path: Path, threads: int, spin_wait: bool
    ) -> ExpressionModel:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        spinning = "1" if spin_wait else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # onnxruntime's own warnings would bypass our logging
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind types for bad files
            reason = first_line(exc)
            raise ModelError(f"{path} is not a valid ONNX model ({reason}); {REBUILD_HINT}") from None
        sha256 = file_sha256(path)
        expected = _expected_sha256(path, precision, card, card_path)
        if expected and expected.lower() != sha256:
            raise ModelError(
                f"{path} has sha256 {sha256[:12]}... but card {card_path} says {expected[:12]}...; "
                f"the file was changed or swapped - {REBUILD_HINT}"
            )
        _check_io(session, card, path, card_path)
        model = cls(session, card, path, precision, sha256)
        probe = model._run(np.zeros((1, card.channels, card.height, card.width), np.float32))
        if probe.shape != (1, len(card.labels)):
            raise ModelError(
                f"{path} outputs shape {list(probe.shape)} for one face but card {card_path} has "
                f"{len(card.labels)} labels; {REBUILD_HINT}"
            )
        return model

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._one_at_a_time and len(batch) > 1:
            return np.concatenate([self._run(batch[i : i + 1]) for i in range(len(batch))])
        outputs = self._session.run(None, {self._input_name: batch})[0]
        return np.asarray(outputs, dtype=np.float32).reshape(len(batch), -1)

    def preprocess(self, crops: list[np.ndarray]) -> np.ndarray:
        """Crops (uint8, card colour or grey/RGB) -> normalised NCHW float32 batch: the card's size, colour and
        grey-level normalisation (edge.illumination), then its mean and std."""
        card = self.card
        planes = []
        for crop in crops:
            if card.color == "gray" and crop.ndim == 3:
                crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)  # crop_face hands over RGB, not BGR
            elif card.color == "rgb" and crop.ndim == 2:
                crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2RGB)
            if crop.shape[:2] != (card.height, card.width):
                shrinking = crop.shape[0] > card.height or crop.shape[1] > card.width
                crop = cv2.resize(
                    crop, (card.width, card.height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
                )
            if card.illumination != "none":
                crop = normalise_illumination(crop, card.illumination)
            planes.append(crop.reshape(card.height, card.width, -1))
        batch = np.stack(planes).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
        return np.ascontiguousarray((batch - self._mean) / self._std)

    def predict(self, crops: list[np.ndarray]) -> np.ndarray:
        """Probabilities (N, len(labels)) float32 for N face crops, all in one batched run."""
        if not crops:
            return np.zeros((0, len(self.labels)), np.float32)
        scores = self._run(self.preprocess(crops))
        return (softmax(scores) if self._apply_softmax else scores).astype(np.float32)


def _check_io(session: ort.InferenceSession, card: ModelCard, path: Path, card_path: Path) -> None:
    """The card must describe the model's real input and output."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelError(
            f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; an expression model "
            f"takes one image batch and returns scores - {REBUILD_HINT}"
        )
    shape, kind = inputs[0].shape, inputs[0].type
    if kind != "tensor(float)":
        raise ModelError(
            f"{path} takes {kind} but the daemon feeds float32 images; export the model with a "
            f"float input (int8 models quantize inside the graph)"
        )
    expected = [card.channels, card.height, card.width]
    if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected)):
        raise ModelError(
            f"{path} takes input {shape} but card {card_path} says [N, {', '.join(map(str, expected))}]"
            f"; use the card built with this model ({REBUILD_HINT})"
        )
    if isinstance(shape[0], int) and shape[0] != 1:
        raise ModelError(f"{path} has its batch size fixed to {shape[0]}; export it with a dynamic batch or batch 1")
    out_shape = outputs[0].shape
    if out_shape and isinstance(out_shape[-1], int) and out_shape[-1] != len(card.labels):
        raise ModelError(
            f"{path} outputs {out_shape[-1]} scores but card {card_path} has {len(card.labels)} "
            f"labels; use the card built with this model ({REBUILD_HINT})"
        )


def _median_run_ms(models: list[ExpressionModel]) -> dict[str, float]:
    """Median ms of one blank face through each model. Runs alternate between the models, so a change of CPU
    clock or load during the measurement slows them alike instead of deciding the choice."""
    times: dict[str, list[float]] = {m.precision: [] for m in models}
    batches = {m.precision: np.zeros((1, m.card.channels, m.card.height, m.card.width), np.float32) for m in models}
    for i in range(WARMUP_RUNS + TIMED_RUNS):
        for model in models:
            start = time.perf_counter()
            model._run(batches[model.precision])
            if i >= WARMUP_RUNS:
                times[model.precision].append((time.perf_counter() - start) * 1000)
    return {precision: statistics.median(runs) for precision, runs in times.items()}
