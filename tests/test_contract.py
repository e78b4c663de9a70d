"""edge.contract, the module the daemon and the quantize tool share: it loads nothing heavy, and a card it
writes is one the daemon reads back, while a card the daemon would refuse is never written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge.contract import CANONICAL_LABELS, ModelError, card_path_for, file_sha256, load_card, new_card, save_card

REPO = Path(__file__).resolve().parents[1]


def test_importing_the_contract_loads_no_heavy_library():
    code = (
        "import sys, edge.contract; "
        "print(sorted({'numpy', 'cv2', 'onnxruntime', 'torch', 'paho'} & {m.split('.')[0] for m in sys.modules}))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _card(tmp_path: Path, labels: list[str]) -> dict:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really a model, but bytes to fingerprint")
    return new_card(
        name="m",
        labels=labels,
        channels=1,
        height=48,
        width=48,
        mean=[0.5],
        std=[0.5],
        crop_margin=0.1,
        precision="int8",
        variants={"int8": model.name},
        variant_sha256={"int8": file_sha256(model)},
        metrics={"top1": 0.5},
        student=None,
    )


def test_a_saved_card_reads_back_as_written(tmp_path):
    card = _card(tmp_path, list(CANONICAL_LABELS))
    parsed = save_card(card, tmp_path / "m.json")
    loaded = load_card(tmp_path / "m.json")
    assert loaded == parsed and loaded.raw == json.loads(json.dumps(card))
    assert (loaded.channels, loaded.height, loaded.width, loaded.color) == (1, 48, 48, "gray")
    assert loaded.sha256 == file_sha256(tmp_path / "m.onnx") and loaded.variants == {"int8": "m.onnx"}
    assert "student" not in loaded.raw, "details given as None are left out"


def test_a_card_the_daemon_would_refuse_is_not_written(tmp_path):
    with pytest.raises(ModelError, match="refusing to write a card the daemon would reject: .*`labels`"):
        save_card(_card(tmp_path, ["happy"]), tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_illumination_and_landmark_template_read_back(tmp_path):
    template = [[0.3, 0.38], [0.7, 0.38], [0.5, 0.58], [0.34, 0.75], [0.66, 0.75]]
    card = {**_card(tmp_path, list(CANONICAL_LABELS))}
    card["input"] = {**card["input"], "illumination": "clahe"}
    card["crop"] = {"margin": 0.0, "align_template": template}
    loaded = save_card(card, tmp_path / "m.json")
    assert loaded.illumination == "clahe"
    assert loaded.align_template == tuple(tuple(p) for p in template)
    assert load_card(tmp_path / "m.json") == loaded


@pytest.mark.parametrize(
    ("section", "value", "complaint"),
    [
        ("input", {"illumination": "sharpen"}, "`input.illumination` must be one of none, equalize, clahe"),
        ("crop", {"margin": 0.0, "align_template": [[0.3, 0.4]] * 4}, "`crop.align_template` must be 5"),
        ("crop", {"margin": 0.0, "align_template": [[0.3, 1.4]] * 5}, "`crop.align_template` must be 5"),
    ],
)
def test_a_bad_illumination_or_template_is_named(tmp_path, section, value, complaint):
    card = _card(tmp_path, list(CANONICAL_LABELS))
    card[section] = {**card[section], **value}
    with pytest.raises(ModelError, match=complaint.replace("`", "`").replace(".", r"\.")):
        save_card(card, tmp_path / "m.json")


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("sha256", 12345, "`sha256` must be 64 hex digits, got 12345"),
        ("sha256", "363f493e6bd6", "`sha256` must be 64 hex digits"),
        ("variant_sha256", ["f" * 64], "`variant_sha256` must map precision names to 64 hex digits"),
        ("variant_sha256", {"fp32": None}, "`variant_sha256` must map precision names to 64 hex digits"),
    ],
)
def test_a_fingerprint_that_is_no_sha256_is_named(tmp_path, field, value, complaint):
    card = {**_card(tmp_path, list(CANONICAL_LABELS)), field: value}
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=re.escape(complaint)):
        load_card(tmp_path / "m.json")


def test_a_card_saved_in_another_encoding_is_named(tmp_path):
    card = {**_card(tmp_path, list(CANONICAL_LABELS)), "name": "gem\u00fct"}
    (tmp_path / "m.json").write_bytes(json.dumps(card, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ModelError, match=r"m\.json: not UTF-8 text \(byte 0xfc at offset \d+\); save it as UTF-8"):
        load_card(tmp_path / "m.json")


def test_illumination_needs_a_gray_input(tmp_path):
    card = _card(tmp_path, list(CANONICAL_LABELS))
    card["input"] = {**card["input"], "shape": [1, 3, 48, 48], "color": "rgb", "illumination": "equalize"}
    with pytest.raises(ModelError, match="needs a gray input"):
        save_card(card, tmp_path / "m.json")


@pytest.mark.parametrize(
    ("labels", "complaint"),
    [
        (["Happy", "happy", "sad"], "labels ['Happy', 'happy'] differ only in case or punctuation"),
        (["sad", "so-so", "so so"], "labels ['so-so', 'so so'] differ only in case or punctuation"),
        (["happy", "none"], "label 'none' reads as 'none', the mood Home Assistant shows for no mood"),
        (["happy", "None"], "label 'None' reads as 'none'"),
        (["happy", " ", "?!"], "labels [' ', '?!'] have no letter a-z or digit"),
    ],
)
def test_labels_that_home_assistant_could_not_tell_apart_are_named(tmp_path, labels, complaint):
    # Discovery makes one device trigger per label id and lists the labels and "none" as the mood's options:
    # such labels would lose a trigger, repeat an option, or pass for "no mood".
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_card(tmp_path, labels)))
    with pytest.raises(ModelError, match=re.escape(complaint)) as refused:
        load_card(path)
    line = str(refused.value)
    assert line.startswith(f"model card {path}: ") and "rename" in line and "\n" not in line
    with pytest.raises(ModelError, match="refusing to write"):
        save_card(_card(tmp_path, labels), tmp_path / "written.json")


@pytest.mark.parametrize(
    ("model", "card"),
    [("x.onnx", "x.json"), ("x.fp32.onnx", "x.json"), ("x.qdq.onnx", "x.json"), ("fer.v2.int8.onnx", "fer.v2.json")],
)
def test_every_variant_of_a_model_finds_the_models_card(tmp_path, model, card):
    assert card_path_for(tmp_path / model) == tmp_path / card
