"""ExpressionModel with real ONNX files through onnxruntime: loading checks, precision choice, predictions."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from edge.classifier import ExpressionModel
from edge.errors import ModelError
from tests.tiny_model import FER_LABELS, write_tiny_model


def grey(level: int, size: int = 48) -> np.ndarray:
    return np.full((size, size), level, np.uint8)


def edit_card(model: Path, **changes: object) -> None:
    card_path = model.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))


def one_line_error(model: Path, **load_args: object) -> str:
    with pytest.raises(ModelError) as caught:
        ExpressionModel.load(model, **load_args)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_predictions_follow_the_pixels(tmp_path: Path) -> None:
    model = ExpressionModel.load(write_tiny_model(tmp_path))
    assert model.labels == FER_LABELS
    probs = model.predict([grey(240), grey(15), grey(128)])
    assert probs.shape == (3, 7) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert FER_LABELS[int(probs[0].argmax())] == "happy"
    assert FER_LABELS[int(probs[1].argmax())] == "sad"
    assert probs[2].max() - probs[2].min() < 0.05  # mid-grey: nothing stands out


def test_batched_prediction_equals_one_by_one(tmp_path: Path) -> None:
    model = ExpressionModel.load(write_tiny_model(tmp_path))
    rng = np.random.default_rng(7)
    crops = [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(5)]
    batched = model.predict(crops)
    single = np.concatenate([model.predict([crop]) for crop in crops])
    assert np.allclose(batched, single, atol=1e-6)
    assert len({row.argmax() for row in batched}) > 1 or np.ptp(batched[:, 3]) > 1e-3  # rows differ


def test_empty_input_gives_an_empty_result(tmp_path: Path) -> None:
    model = ExpressionModel.load(write_tiny_model(tmp_path, labels=["happy", "sad", "neutral"]))
    assert model.predict([]).shape == (0, 3)


def test_fixed_batch_of_one_runs_faces_one_at_a_time(tmp_path: Path) -> None:
    dynamic = ExpressionModel.load(write_tiny_model(tmp_path / "a"))
    fixed = ExpressionModel.load(write_tiny_model(tmp_path / "b", batch=1))
    crops = [grey(30), grey(200), grey(90)]
    assert np.allclose(fixed.predict(crops), dynamic.predict(crops), atol=1e-6)


def test_crops_are_resized_and_converted_to_the_card(tmp_path: Path) -> None:
    model = ExpressionModel.load(write_tiny_model(tmp_path, color="rgb", size=(40, 32)))
    bright_rgb = np.full((80, 64, 3), 230, np.uint8)
    probs = model.predict([bright_rgb, grey(20, size=16)])
    assert [FER_LABELS[int(i)] for i in probs.argmax(axis=1)] == ["happy", "sad"]
    batch = model.preprocess([bright_rgb])
    assert batch.shape == (1, 3, 40, 32) and batch.dtype == np.float32
    assert np.allclose(batch, (230 / 255 - 0.5) / 0.5, atol=1e-6)


def _with_illumination(model_path: Path, illumination: str) -> ExpressionModel:
    card_path = model_path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["input"]["illumination"] = illumination
    card_path.write_text(json.dumps(card))
    return ExpressionModel.load(model_path)


def _smooth_face(low: int, high: int) -> np.ndarray:
    noise = np.random.default_rng(3).integers(0, 256, (48, 48)).astype(np.uint8)
    face = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2), None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)
    return (low + face * (high - low)).astype(np.uint8)


def test_equalized_crops_look_alike_whatever_the_light(tmp_path: Path) -> None:
    """A dim, low-contrast face and the same face in bright light reach the model alike once equalised."""
    dim, bright = _smooth_face(20, 80), _smooth_face(120, 250)
    plain = ExpressionModel.load(write_tiny_model(tmp_path))
    assert np.abs(plain.preprocess([dim]) - plain.preprocess([bright])).mean() > 0.5
    equalized = _with_illumination(plain.path, "equalize")
    assert np.abs(equalized.preprocess([dim]) - equalized.preprocess([bright])).mean() < 0.05


def test_clahe_stretches_the_contrast_of_a_flat_crop(tmp_path: Path) -> None:
    flat = _smooth_face(100, 140)
    plain = ExpressionModel.load(write_tiny_model(tmp_path))
    clahe = _with_illumination(plain.path, "clahe")
    assert clahe.preprocess([flat]).std() > 1.5 * plain.preprocess([flat]).std()


def test_probabilities_output_is_not_softmaxed_again(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path, output="probabilities")
    model = ExpressionModel.load(path)
    crop = grey(220)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = session.run(None, {"input": model.preprocess([crop])})[0]
    assert np.allclose(model.predict([crop]), raw, atol=1e-6)
    assert not np.allclose(raw.sum(), 1.0)


def test_model_id_names_the_card_and_the_file_hash(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path, name="mood-s")
    model = ExpressionModel.load(path)
    assert model.model_id == "mood-s@" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert model.path == path and model.precision == "fp32"


def test_missing_model_file(tmp_path: Path) -> None:
    message = one_line_error(tmp_path / "nothing.onnx")
    assert "nothing.onnx" in message and "not found" in message


def test_missing_card(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path)
    path.with_suffix(".json").unlink()
    assert "card" in one_line_error(path)


def test_corrupt_onnx(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path)
    path.write_bytes(path.read_bytes()[:60])  # a download cut short
    message = one_line_error(path)
    assert "not a valid ONNX model" in message and str(path) in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_a_model_the_daemon_may_not_read_is_not_called_corrupt(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path)
    path.chmod(0o000)
    message = one_line_error(path)
    assert "cannot be read (permission denied)" in message and "chgrp edge-mood-config" in message


def test_changed_file_fails_the_sha256_check(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path)
    edit_card(path, sha256="0" * 64)
    assert "sha256" in one_line_error(path)


@pytest.mark.parametrize(
    "card_changes, expected",
    [
        ({"input": {"shape": [1, 1, 64, 64], "color": "gray"}}, "[N, 1, 64, 64]"),
        ({"input": {"shape": [1, 3, 48, 48], "color": "rgb"}}, "[N, 3, 48, 48]"),
        ({"labels": ["happy", "sad", "angry", "neutral", "fear"]}, "5 labels"),
    ],
)
def test_card_that_disagrees_with_the_model(tmp_path: Path, card_changes: dict, expected: str) -> None:
    path = write_tiny_model(tmp_path)
    edit_card(path, **card_changes)
    assert expected in one_line_error(path)


def test_fixed_batch_other_than_one_is_refused(tmp_path: Path) -> None:
    assert "batch size fixed to 4" in one_line_error(write_tiny_model(tmp_path, batch=4))


def test_auto_precision_times_both_variants_and_logs_one_line(tmp_path: Path, caplog) -> None:
    path = write_tiny_model(tmp_path, variants=True)
    with caplog.at_level(logging.INFO, logger="edge.classifier"):
        model = ExpressionModel.load(path, precision="auto", threads=1)
    assert model.precision in ("int8", "fp32")
    assert model.path.name == {"int8": "tiny.onnx", "fp32": "tiny.fp32.onnx"}[model.precision]
    timing = [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()]
    assert len(timing) == 1 and "int8" in timing[0] and "fp32" in timing[0] and " ms" in timing[0]
    assert FER_LABELS[int(model.predict([grey(250)])[0].argmax())] == "happy"


@pytest.mark.parametrize("precision, file_name", [("int8", "tiny.onnx"), ("fp32", "tiny.fp32.onnx")])
def test_pinned_precision_picks_that_variant(tmp_path: Path, precision: str, file_name: str) -> None:
    path = write_tiny_model(tmp_path, variants=True)
    model = ExpressionModel.load(path, precision=precision)
    assert model.precision == precision and model.path.name == file_name


def test_a_name_with_dots_finds_its_own_card_not_another_models_beside_it(tmp_path: Path) -> None:
    write_tiny_model(tmp_path, "fer")  # another model's fer.json beside it
    write_tiny_model(tmp_path, "fer.v2", variants=True)
    for file_name in ("fer.v2.onnx", "fer.v2.fp32.onnx"):
        model = ExpressionModel.load(tmp_path / file_name, precision="fp32")
        assert model.card.name == "fer.v2" and model.path.name == "fer.v2.fp32.onnx"


def test_pinned_precision_the_card_does_not_have(tmp_path: Path) -> None:
    message = one_line_error(write_tiny_model(tmp_path), precision="int8")
    assert "no int8 variant" in message and "fp32" in message


def test_variant_with_the_wrong_hash_is_refused(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path, variants=True)
    edit_card(path, variant_sha256={"fp32": "f" * 64})
    message = one_line_error(path, precision="fp32")
    assert "tiny.fp32.onnx" in message and "sha256" in message


@pytest.mark.parametrize("spin_wait, expected", [(False, "0"), (True, "1")])
def test_onnxruntime_threads_spin_only_when_asked(tmp_path: Path, spin_wait: bool, expected: str) -> None:
    """Spinning threads keep a core busy between calls; the session must not allow it unless configured."""
    model = ExpressionModel.load(write_tiny_model(tmp_path), threads=2, spin_wait=spin_wait)
    options = model._session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == expected
    assert model.predict([grey(240)]).argmax() == FER_LABELS.index("happy")
