"""What the student learns from and how its faces are prepared: vote targets, landmark alignment, the camera
augmentation, grey-level normalisation and logit adjustment, end to end into a card the daemon follows."""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from edge.classifier import ExpressionModel  # noqa: E402
from edge.contract import CANONICAL_LABELS  # noqa: E402
from edge.crop import crop_face  # noqa: E402
from edge.faces import Face  # noqa: E402
from quantize.cli import main  # noqa: E402
from quantize.datasets import load_dataset  # noqa: E402
from quantize.errors import QuantizeError  # noqa: E402
from quantize.face_align import align_faces, detect_landmarks, landmark_template  # noqa: E402
from quantize.label_sources import with_vote_targets  # noqa: E402
from quantize.student_augment import StudentAugmentation  # noqa: E402
from tests.quantize_support import (  # noqa: E402
    FER_CSV,
    SHARED,
    VOTE_HEADER,
    real_fer_rows,
    synthetic_faces,
    write_fer_csv,
)
from tests.tiny_model import write_tiny_model  # noqa: E402

YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"
needs_shared = pytest.mark.skipif(
    not (FER_CSV.exists() and YUNET.exists()), reason=f"needs FER2013 and YuNet under {SHARED}"
)


def _votes_file(path: Path, rows: list[str]) -> Path:
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join([VOTE_HEADER, *rows]) + "\n")
    return path


# ---------------------------------------------------------------- label source


def test_votes_mix_with_each_faces_own_label_and_follow_the_csv_rows(tmp_path: Path) -> None:
    images, _ = synthetic_faces(1, seed=0)
    labels = np.array([CANONICAL_LABELS.index(n) for n in ("angry", "happy", "sad", "neutral")] * 2)
    csv = write_fer_csv(
        tmp_path / "d.csv", {"PublicTest": (images[:2], labels[:2]), "Training": (images[:4], labels[4:])}
    )
    votes = _votes_file(
        tmp_path / "v.csv.gz",
        [
            "PublicTest,0,10,0,0,0,0,0,0,0,0,0",
            "PublicTest,1,10,0,0,0,0,0,0,0,0,0",
            "Training,2,0,0,0,0,10,0,0,0,0,0",  # anger, and FER2013 says angry too
            "Training,3,8,0,0,2,0,0,0,0,0,0",  # mostly neutral, FER2013 says happy
            "Training,4,,,,,,,,,,",  # no votes: keeps its own label
            "Training,5,0,0,0,0,0,0,0,0,10,0",  # unknown only: keeps its own label
        ],
    )
    train = load_dataset(csv, "train", cache=False)
    assert train.rows is not None and train.rows.tolist() == [2, 3, 4, 5]
    mixed, record = with_vote_targets(train, votes, weight=0.75)
    angry, happy, sad, neutral = (CANONICAL_LABELS.index(n) for n in ("angry", "happy", "sad", "neutral"))
    assert mixed.targets is not None and np.allclose(mixed.targets.sum(axis=1), 1.0)
    assert mixed.targets[0, angry] == pytest.approx(1.0)
    assert mixed.targets[1, neutral] == pytest.approx(0.75 * 0.8)
    assert mixed.targets[1, sad] == pytest.approx(0.75 * 0.2)
    assert mixed.targets[1, happy] == pytest.approx(0.25)
    assert mixed.targets[2].argmax() == train.labels[2] and mixed.targets[2].max() == 1.0
    assert mixed.targets[3].argmax() == train.labels[3] and mixed.targets[3].max() == 1.0
    assert record["faces_with_votes"] == 2 and record["weight"] == 0.75
    # A subset keeps each face's rows and targets with it.
    assert np.array_equal(mixed.subset([1, 3]).targets, mixed.targets[[1, 3]])


def test_votes_need_the_csv_they_were_made_for(tmp_path: Path) -> None:
    images, labels = synthetic_faces(1, seed=0)
    csv = write_fer_csv(tmp_path / "d.csv", {"Training": (images, labels)})
    short = _votes_file(tmp_path / "v.csv.gz", ["Training,0,10,0,0,0,0,0,0,0,0,0"])
    with pytest.raises(QuantizeError, match="give the vote file made for this CSV"):
        with_vote_targets(load_dataset(csv, "train", cache=False), short, 1.0)
    with pytest.raises(QuantizeError, match="weight"):
        with_vote_targets(load_dataset(csv, "train", cache=False), short, 1.5)
    # One row more than the CSV: every face would still find a row, and the rows would not be its own.
    longer = _votes_file(tmp_path / "v8.csv.gz", [f"Training,{i},10,0,0,0,0,0,0,0,0,0" for i in range(8)])
    with pytest.raises(QuantizeError, match=r"has 8 rows but .*d.csv has 7 data rows; give the vote file made"):
        with_vote_targets(load_dataset(csv, "train", cache=False), longer, 1.0)


def test_votes_for_other_faces_with_the_same_row_count_are_refused(tmp_path: Path) -> None:
    images, labels = synthetic_faces(1, seed=0)
    csv = write_fer_csv(tmp_path / "d.csv", {"PublicTest": (images[:3], labels[:3]), "Training": (images, labels)})
    train = load_dataset(csv, "train", cache=False)
    counts = "0,9,0,0,0,0,0,0,1,0"
    usages = ["PublicTest"] * 3 + ["Training"] * 7
    # Rows 0-6 of FER2013 as the shared vote file has them: seven Training rows, where this CSV has three tests.
    other = _votes_file(tmp_path / "other.csv.gz", [f"Training,{i},{counts}" for i in range(10)])
    with pytest.raises(QuantizeError, match=r"line 2 has usage 'Training', but data row 0 of .*d.csv has a Usage"):
        with_vote_targets(train, other, 0.5)
    last_test = _votes_file(
        tmp_path / "test.csv.gz", [f"{u},{i},{counts}" for i, u in enumerate(usages[:-1])] + [f"PublicTest,9,{counts}"]
    )
    with pytest.raises(QuantizeError, match=r"line 11 has usage 'PublicTest', but data row 9 of .*d.csv has Usage 'T"):
        with_vote_targets(train, last_test, 0.5)
    shifted = _votes_file(tmp_path / "shifted.csv.gz", [f"{u},{i + 1},{counts}" for i, u in enumerate(usages)])
    with pytest.raises(QuantizeError, match=r"line 2 is for data row 1, but it lines up with data row 0 of"):
        with_vote_targets(train, shifted, 0.5)
    # Microsoft's own layout (Usage, Image name), saved with a BOM: no name where FER+ dropped the face, and the
    # names after it one behind the data rows, as in its fer2013new.csv. Only its Usage column says anything.
    official = tmp_path / "fer2013new.csv"
    names = [f"fer{i - (i > 4):07d}.png" if i != 4 else "" for i in range(10)]
    rows = [f"{u},{name},{counts}" for u, name in zip(usages, names)]
    official.write_text("\n".join([VOTE_HEADER.replace("usage,row", "Usage,Image name"), *rows]), encoding="utf-8-sig")
    assert with_vote_targets(train, official, 0.5)[1]["faces_with_votes"] == 7


# ---------------------------------------------------------------- alignment


@pytest.mark.parametrize("wrong", ["an expression model", "the data set"])
def test_a_yunet_file_that_is_not_yunet_is_one_line_that_says_where_to_get_yunet(wrong, tmp_path, capsys) -> None:
    images, labels = synthetic_faces(2, seed=0)
    csv = write_fer_csv(tmp_path / "d.csv", {"Training": (images, labels), "PublicTest": (images, labels)})
    yunet = write_tiny_model(tmp_path / "models") if wrong == "an expression model" else csv
    argv = ["distill", "--data", str(csv), "--align", "--yunet", str(yunet), "--student", "xs", "--epochs", "1"]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "s.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: YuNet model {yunet} is not a YuNet face detector ONNX; give --yunet the path of "
        "face_detection_yunet_2023mar.onnx from the OpenCV Zoo (`edge models fetch` downloads it and prints its path)"
    )
    assert not any("Traceback" in line or "installer" in line for line in err)
    assert yunet.is_file() and not (tmp_path / "s.pt").exists()


@needs_shared
def test_alignment_moves_training_faces_onto_their_median_landmarks(tmp_path: Path) -> None:
    faces = load_dataset(FER_CSV, "test").subset(slice(0, 150))
    points = detect_landmarks(faces, YUNET, tmp_path, log=lambda _: None)
    found = np.isfinite(points[:, 0, 0])
    assert found.mean() > 0.7
    assert np.array_equal(detect_landmarks(faces, YUNET, tmp_path, log=lambda _: None), points, equal_nan=True)
    template = landmark_template(points, 48)
    eyes = np.array(template[:2])
    assert eyes[0, 0] < 0.5 < eyes[1, 0] and eyes[0, 1] == pytest.approx(eyes[1, 1])  # level and mirrored
    assert template[0][0] == pytest.approx(1 - template[1][0]) and template[2][0] == pytest.approx(0.5)
    aligned = align_faces(faces, points, template)
    after = detect_landmarks(aligned, YUNET, None, log=lambda _: None)
    both = found & np.isfinite(after[:, 0, 0])
    spread_before = np.linalg.norm(points[both] - np.array(template) * 48, axis=2).mean()
    spread_after = np.linalg.norm(after[both] - np.array(template) * 48, axis=2).mean()
    assert spread_after < 0.6 * spread_before
    assert np.array_equal(aligned.images[~found], faces.images[~found])  # faces YuNet missed stay as they were


# ---------------------------------------------------------------- augmentation


def test_camera_augmentation_is_reproducible_and_reports_the_mirror() -> None:
    face = synthetic_faces(1, seed=2)[0][3]
    camera = StudentAugmentation("camera")
    first = [camera(face, np.random.default_rng(5)) for _ in range(2)]
    assert np.array_equal(first[0][0], first[1][0]) and first[0][1] == first[1][1]
    outputs = [camera(face, np.random.default_rng(seed)) for seed in range(60)]
    assert all(out.shape == face.shape and out.dtype == np.uint8 for out, _ in outputs)
    assert 10 < sum(mirrored for _, mirrored in outputs) < 50
    sharpness = [cv2.Laplacian(out, cv2.CV_64F).var() for out, _ in outputs]
    assert min(sharpness) < 0.5 * np.median(sharpness)  # some faces came out blurred or low-resolution
    # Mirroring alone (no pose, no light change): the output is the mirror image.
    mirror_only = StudentAugmentation("basic", rotate_deg=0, scale=(1, 1), shift=0, mirror_p=1.0)
    out, mirrored = mirror_only(face, np.random.default_rng(0))
    assert mirrored and np.corrcoef(out.ravel(), face[:, ::-1].ravel())[0, 1] > 0.95
    assert StudentAugmentation("none")(face, np.random.default_rng(0)) == (face, False)


# ---------------------------------------------------------------- end to end


@needs_shared
def test_a_build_with_votes_alignment_equalisation_and_logit_adjustment_tells_the_daemon(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    rows = real_fer_rows(train=420, test=140)
    csv = write_fer_csv(tmp_path / "fer.csv.gz", rows)
    n_train, n_test = len(rows["Training"][1]), len(rows["PublicTest"][1])
    votes = _votes_file(
        tmp_path / "votes.csv.gz",
        [f"{'Training' if i < n_train else 'PublicTest'},{i},6,1,0,3,0,0,0,0,0,0" for i in range(n_train + n_test)],
    )
    out = tmp_path / "models" / "m"
    (tmp_path / "models").mkdir()
    status = main(
        ["build", "--data", str(csv)]
        + [
            "--votes",
            str(votes),
            "--votes-weight",
            "0.5",
            "--align",
            "--yunet",
            str(YUNET),
            "--illumination",
            "equalize",
            "--augment",
            "camera",
            "--logit-adjust",
            "1",
            "--student",
            "xs",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--calibration-faces",
            "60",
            "--latency-runs",
            "5",
            "--allow-drop",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(out),
        ]  # fmt: skip
    )
    assert status == 0
    model = ExpressionModel.load(out.with_suffix(".onnx"), precision="fp32", threads=1)
    card = model.card
    assert card.illumination == "equalize"
    assert card.align_template is not None and card.raw["alignment"]["found"] > 0.7
    assert card.raw["labels_source"]["kind"] == "votes" and card.raw["labels_source"]["weight"] == 0.5
    assert card.raw["distillation"]["logit_adjust"] == 1.0 and card.raw["distillation"]["augment"] == "camera"
    assert card.raw["calibration"]["temperature"] > 0 and card.raw["calibration"]["faces"] > 0
    # The daemon's crop of a face with landmarks now follows the card's template.
    face = Face(box=(10.0, 10.0, 100.0, 100.0), score=1.0, landmarks=np.array(card.align_template) * 100 + 10)
    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    frame = cv2.GaussianBlur(noise, (0, 0), 4)  # smooth, so resampling differences stay small

    def region(x: int, y: int) -> np.ndarray:
        grey = cv2.cvtColor(frame[y : y + 100, x : x + 100], cv2.COLOR_BGR2GRAY)
        return cv2.resize(grey, (48, 48), interpolation=cv2.INTER_AREA).astype(int)

    crop = crop_face(frame, face, card).astype(int)
    assert np.abs(crop - region(10, 10)).mean() < 0.3 * np.abs(crop - region(20, 10)).mean()
    # `quantize eval` frames the faces as the build did, so it repeats the card's figure.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    capsys.readouterr()
    args = ["eval", "--model", str(out.with_suffix(".onnx")), "--data", str(csv), "--yunet", str(YUNET)]
    assert main([*args, "--latency-runs", "0"]) == 0
    report = capsys.readouterr().out
    assert "aligned to the card's template" in report
    assert f"top-1 {card.raw['metrics']['int8']['top1'] * 100:.2f}%" in report, report.splitlines()[:2]
    # As a teacher the model goes by its card: its FP32 file finds the card that lists it, and it sees each
    # face aligned and equalised as it learnt them, answering as the daemon's classifier does on those crops.
    from edge.classifier import softmax
    from quantize.teachers import load_teacher
    from quantize.training_data import teacher_views

    teacher = load_teacher(out.with_name("m.fp32.onnx"))
    assert teacher.align_template == [list(p) for p in card.align_template]
    assert teacher.preprocessing.illumination == "equalize"
    faces = load_dataset(csv, "test")
    view = teacher_views(faces, [teacher], YUNET, tmp_path / "cache", log=lambda _: None)[0]
    assert np.abs(view.images.astype(int) - faces.images).mean() > 5  # aligned, not the data set's framing
    expected = model.predict(list(view.images))
    np.testing.assert_allclose(softmax(teacher.logits(view.images)), expected, atol=1e-4)


def test_teachers_answer_on_the_data_sets_own_faces_while_the_student_sees_its_own(tmp_path: Path) -> None:
    """A teacher is most accurate on the framing it was trained on, so with aligned student faces its targets
    come from the original faces: the logit cache holds those, and nothing for the student's faces."""
    from edge.contract import file_sha256
    from quantize.datasets import FaceSet, stratified_split
    from quantize.distill import distill
    from quantize.distill_config import DistillConfig
    from quantize.teacher_targets import teacher_logits
    from quantize.teachers import load_teacher
    from tests.quantize_support import save_teachers, train_tiny_teacher

    images, labels = synthetic_faces(30, seed=4)
    original = FaceSet(images, labels, "synthetic", "train")
    shifted = FaceSet(np.roll(images, 3, axis=2), labels, "synthetic", "train")  # stands in for aligned faces
    teacher = load_teacher(save_teachers(tmp_path / "t", train_tiny_teacher(images, labels))["torchscript"])
    sha = file_sha256(teacher.path)
    cfg = DistillConfig(student="xs", epochs=1, batch_size=32, augment="none")
    distill(shifted, [(teacher, sha)], cfg, cache_dir=tmp_path / "cache", progress=False, log=lambda _: None,
            teacher_faces=[original])  # fmt: skip
    cached = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1
    seen = []
    teacher_logits(teacher, sha, stratified_split(original, cfg.val_fraction, cfg.seed)[0], tmp_path / "cache",
                   log=seen.append)  # fmt: skip
    assert seen == [] and sorted((tmp_path / "cache").glob("*.npz")) == cached  # answered from the cache


def test_online_teachers_must_have_learnt_the_students_framing(tmp_path: Path) -> None:
    """--online-teacher shows teachers the student's faces: a teacher aligned to another template is refused in
    one line, before any training, where its cached answers would have been on faces aligned for it."""
    from quantize.datasets import FaceSet
    from quantize.teachers import load_teacher
    from quantize.training_data import TrainingData, check_online_framing, training_teacher_views
    from tests.quantize_support import save_teachers, train_tiny_teacher

    images, labels = synthetic_faces(30, seed=5)
    template = [[0.3, 0.38], [0.7, 0.38], [0.5, 0.58], [0.34, 0.75], [0.66, 0.75]]
    path = save_teachers(tmp_path / "t", train_tiny_teacher(images, labels))["torchscript"]
    teacher = load_teacher(path, spec={"crop": {"align_template": template}})
    check_online_framing([teacher], template)  # the student aligned the same way: accepted
    with pytest.raises(QuantizeError, match="leave out --online-teacher"):
        check_online_framing([teacher], None)
    faces = FaceSet(images, labels, "synthetic", "train")
    unaligned = TrainingData(faces, None, faces, None, {}, None, None)
    with pytest.raises(QuantizeError, match="leave out --online-teacher"):
        training_teacher_views(unaligned, [teacher], True, None, None, print)
    with pytest.raises(QuantizeError, match="five"):
        load_teacher(path, spec={"crop": {"align_template": template[:2]}})


def test_a_fitted_temperature_makes_confidence_match_accuracy_without_changing_any_answer() -> None:
    from edge.classifier import softmax
    from quantize.calibration import expected_calibration_error, fit_temperature, with_temperature
    from quantize.student import build_student

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 3000)
    # Logits whose softmax is twice as sure as it should be: the true temperature is 2.
    true = rng.normal(0, 1.0, (3000, 7))
    true[np.arange(3000), labels] += 1.5
    sampled = np.array([rng.choice(7, p=p) for p in softmax(true)])
    overconfident = 2.0 * true
    temperature = fit_temperature(overconfident, sampled)
    assert temperature == pytest.approx(2.0, rel=0.1)
    before = expected_calibration_error(softmax(overconfident), sampled)
    after = expected_calibration_error(softmax(overconfident / temperature), sampled)
    assert after < 0.5 * before
    student = build_student("xs").eval()
    x = torch.from_numpy(rng.normal(0, 1, (8, 1, 48, 48)).astype(np.float32))
    with torch.no_grad():
        plain, scaled = student(x), with_temperature(student, 2.5)(x)
    assert torch.allclose(scaled, plain / 2.5, atol=1e-5) and torch.equal(scaled.argmax(1), plain.argmax(1))
