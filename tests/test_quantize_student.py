"""The student family: documented sizes, shapes at both input sizes, BatchNorm folding, ONNX export parity, and
the test-time views (mirror image, centre zoom) built into the exported graph."""

from __future__ import annotations

import logging
import re

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
onnx = pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402

from quantize import student as student_module  # noqa: E402
from quantize.errors import QuantizeError  # noqa: E402
from quantize.export import PARITY_ATOL, export_student  # noqa: E402
from quantize.int8 import quantize_onnx  # noqa: E402
from quantize.student import STUDENTS, build_student, count_parameters, fold_batchnorm, zoom_crop  # noqa: E402

# Ops the INT8 path handles well; BatchNormalization must be gone (folded) and nothing exotic may appear.
QUANTIZATION_FRIENDLY = {
    "Constant",
    "Conv",
    "Clip",
    "Relu",
    "Add",
    "GlobalAveragePool",
    "ReduceMean",
    "Flatten",
    "Reshape",
    "Gemm",
}
# Flip averaging adds the mirror (Slice), the doubled batch (Concat) and the split and mean of its halves.
FLIP_AVERAGE_OPS = {"Slice", "Concat", "Shape", "Gather", "Unsqueeze", "Identity", "Mul"}
# A zoom view adds the enlargement of the centre crop.
ZOOM_VIEW_OPS = {"Resize"}


def _with_bn_statistics(name: str, size: int = 48):
    """A student whose BatchNorm layers hold non-trivial running statistics, as after training."""
    torch.manual_seed(0)
    model = build_student(name)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(32, 1, size, size) * 2 - 1)
    return model.eval()


def test_parameter_table_in_docstring_matches_the_models():
    rows = re.findall(r"^\s+(\w+)\s+([\d,]+)\s+\d+\s", student_module.__doc__, flags=re.M)
    documented = {name: int(count.replace(",", "")) for name, count in rows}
    assert set(documented) == set(STUDENTS)
    assert {name: count_parameters(build_student(name)) for name in STUDENTS} == documented


def test_sizes_grow_and_stay_small():
    counts = [count_parameters(build_student(name)) for name in ("xs", "s", "m", "l")]
    assert counts == sorted(counts)
    assert 40_000 < counts[0] < 70_000 and counts[-1] < 1_100_000


@pytest.mark.parametrize("size", [48, 64])
def test_logits_for_each_face_at_both_input_sizes(size):
    model = build_student("xs").eval()
    out = model(torch.rand(3, 1, size, size))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_unknown_student_names_the_known_ones():
    with pytest.raises(KeyError, match="xs, s, m, l"):
        build_student("huge")


@pytest.mark.slow
def test_folding_batchnorm_keeps_the_outputs():
    model = _with_bn_statistics("xs")
    folded = fold_batchnorm(model)
    x = torch.rand(8, 1, 48, 48) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the original must stay untouched"


@pytest.mark.parametrize("exporter", [pytest.param("dynamo", marks=pytest.mark.slow), "legacy"])
def test_export_matches_torch_with_dynamic_batch(tmp_path, exporter):
    model = _with_bn_statistics("xs")
    sample = np.random.default_rng(0).uniform(-1, 1, (6, 1, 48, 48)).astype(np.float32)
    path = tmp_path / "xs.fp32.onnx"
    report = export_student(model, path, sample, exporter)
    assert report.exporter == exporter and report.max_abs_diff < PARITY_ATOL
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch axis must be dynamic"
    ops = {node.op_type for node in graph.node}
    assert ops <= QUANTIZATION_FRIENDLY, ops - QUANTIZATION_FRIENDLY


def _tells_left_from_right() -> tuple[torch.nn.Module, np.ndarray]:
    """A student briefly trained to say which side of a face is brighter (so mirroring changes its answer),
    and five such faces. An untrained student answers almost the same for any input."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    ramp = np.linspace(-1, 1, 48, dtype=np.float32)
    sides = rng.choice([-1.0, 1.0], 64).astype(np.float32)
    faces = (ramp * sides[:, None, None, None] + rng.uniform(-0.3, 0.3, (64, 1, 48, 48))).astype(np.float32)
    labels = torch.from_numpy((sides > 0).astype(np.int64))
    model = build_student("xs")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(faces)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), faces[:5]


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_flip_averaged_export_answers_the_mean_of_face_and_mirror(tmp_path, exporter):
    model, faces = _tells_left_from_right()
    path = tmp_path / "xs.fp32.onnx"
    report = export_student(model, path, faces, exporter, flip_average=True)
    assert report.max_abs_diff < PARITY_ATOL
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": faces})[0]
    mirrored = session.run(["logits"], {"input": np.ascontiguousarray(faces[..., ::-1])})[0]
    single = session.run(["logits"], {"input": faces[2:3]})[0]
    with torch.no_grad():
        plain = model(torch.from_numpy(faces)).numpy()
        plain_mirror = model(torch.from_numpy(faces).flip(-1)).numpy()
    assert np.allclose(got, (plain + plain_mirror) / 2, atol=PARITY_ATOL)
    assert not np.allclose(plain, plain_mirror, atol=1e-3), "the test faces must not be symmetric"
    assert np.allclose(got, mirrored, atol=1e-5) and np.allclose(single, got[2:3], atol=1e-5)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ops <= QUANTIZATION_FRIENDLY | FLIP_AVERAGE_OPS, ops - QUANTIZATION_FRIENDLY - FLIP_AVERAGE_OPS


def _zoomed(faces: np.ndarray, first: int, side: int) -> np.ndarray:
    """Each face's centre square enlarged back to full size with OpenCV (an independent bilinear resize)."""
    size = faces.shape[-1]
    return np.stack(
        [
            cv2.resize(
                face[0, first : first + side, first : first + side], (size, size), interpolation=cv2.INTER_LINEAR
            )[None]
            for face in faces
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_zoom_view_export_answers_the_mean_of_face_zoom_and_their_mirrors(tmp_path, exporter):
    model, faces = _tells_left_from_right()
    path = tmp_path / "xs.fp32.onnx"
    report = export_student(model, path, faces, exporter, flip_average=True, zooms=(1.2,))
    assert report.max_abs_diff < PARITY_ATOL
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"input": faces})[0]
    assert zoom_crop(48, 1.2) == (4, 40)
    views = [faces, _zoomed(faces, 4, 40)]
    views += [np.ascontiguousarray(v[..., ::-1]) for v in views]
    with torch.no_grad():
        each = [model(torch.from_numpy(v)).numpy() for v in views]
    assert np.allclose(got, np.mean(each, axis=0), atol=1e-3)
    assert not np.allclose(got, (each[0] + each[2]) / 2, atol=1e-3), "the zoom view must count"
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    allowed = QUANTIZATION_FRIENDLY | FLIP_AVERAGE_OPS | ZOOM_VIEW_OPS
    assert "Resize" in ops and ops <= allowed, ops - allowed


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_zoom_view_quantizes_without_warnings_and_keeps_its_answers(tmp_path, caplog, fmt):
    model, faces = _tells_left_from_right()
    fp32, int8 = tmp_path / "xs.fp32.onnx", tmp_path / "xs.onnx"
    export_student(model, fp32, faces, "dynamo", flip_average=True, zooms=(1.2,))
    calibration = np.concatenate([faces] * 4)
    with caplog.at_level(logging.WARNING):
        quantize_onnx(fp32, int8, calibration, activations="uint8", fmt=fmt)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    answers = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(["logits"], {"input": faces})[0]
        for p in (fp32, int8)
    ]
    assert (answers[0].argmax(1) == answers[1].argmax(1)).all()


@pytest.mark.parametrize("zoom", [1.0, 0.8, 2.5])
def test_zoom_views_outside_one_to_two_are_refused(zoom):
    with pytest.raises(QuantizeError, match=f"zoom view {zoom:g} must lie in"):
        zoom_crop(48, zoom)


@pytest.mark.slow
def test_export_refuses_when_onnxruntime_disagrees(tmp_path, monkeypatch):
    """Parity is really checked: a model whose torch output differs from its export is rejected, file removed."""
    model = _with_bn_statistics("xs")
    sample = np.random.default_rng(0).uniform(-1, 1, (4, 1, 48, 48)).astype(np.float32)
    real_fold = student_module.fold_batchnorm

    def fold_and_perturb(m):
        folded = real_fold(m)
        with torch.no_grad():
            folded.classifier.bias += 0.01
        return folded

    monkeypatch.setattr("quantize.export.fold_batchnorm", fold_and_perturb)
    with pytest.raises(QuantizeError, match="differs from torch"):
        export_student(model, tmp_path / "bad.onnx", sample, "legacy")
    assert not (tmp_path / "bad.onnx").exists()
