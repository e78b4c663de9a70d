"""Face detection (real YuNet and Haar on real photos) and face cropping with eye levelling."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.classifier import ExpressionModel
from edge.config import load_config
from edge.contract import ModelCard, parse_card
from edge.crop import box_transform, crop_face, eye_angle, similarity_transform
from edge.errors import ConfigError, ModelError
from edge.faces import Face, make_detector
from edge.locations import default_model
from edge.wiring import build_detector
from tests.tiny_model import write_tiny_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PHOTO = SHARED / "data" / "photos" / "12_angry_men.jpg"
YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"

needs_shared = pytest.mark.skipif(
    not (PHOTO.is_file() and YUNET.is_file()), reason=f"needs the shared photos and YuNet model under {SHARED}"
)


TEMPLATE = [[0.3, 0.38], [0.7, 0.38], [0.5, 0.58], [0.34, 0.76], [0.66, 0.76]]


def card(size: int = 48, color: str = "gray", margin: float = 0.1, template: list | None = None) -> ModelCard:
    channels = 1 if color == "gray" else 3
    return parse_card(
        {
            "labels": ["happy", "sad"],
            "crop": {"margin": margin, **({"align_template": template} if template else {})},
            "input": {"shape": [1, channels, size, size], "color": color},
        },
        Path("test-card.json"),
    )


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0.0, min(ax1, bx1) - max(a[0], b[0])) * max(0.0, min(ay1, by1) - max(a[1], b[1]))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def nearest(faces: list[Face], x: float, y: float) -> Face:
    return min(faces, key=lambda f: (f.box[0] + f.box[2] / 2 - x) ** 2 + (f.box[1] + f.box[3] / 2 - y) ** 2)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    if not PHOTO.is_file():
        pytest.skip(f"needs {PHOTO}")
    return cv2.imread(str(PHOTO))


@needs_shared
def test_yunet_finds_the_jurors_inside_the_frame(photo: np.ndarray, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="edge.faces"):
        detector = make_detector("auto", search_dirs=[SHARED / "models"])
    assert detector.name == "yunet" and "YuNet" in caplog.text
    height, width = photo.shape[:2]
    for image in (photo, cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)):
        faces = detector.detect(image)
        assert len(faces) >= 10
        for face in faces:
            x, y, w, h = face.box
            assert 0 <= x and 0 <= y and x + w <= width and y + h <= height and w > 20 and h > 20
            assert 0.7 <= face.score <= 1.0
            assert face.landmarks is not None and face.landmarks.shape == (5, 2)
            eyes = face.landmarks[:2]
            assert np.all((eyes >= (x, y)) & (eyes <= (x + w, y + h)))  # eyes inside their own box


@needs_shared
def test_boxes_map_back_to_full_frame_pixels(photo: np.ndarray) -> None:
    coarse = make_detector("yunet", yunet_path=YUNET, detect_width=320).detect(photo)
    fine = make_detector("yunet", yunet_path=YUNET, detect_width=photo.shape[1]).detect(photo)
    matched = [c for c in coarse if max(iou(c.box, f.box) for f in fine) > 0.7]
    assert len(matched) >= 8


@needs_shared
def test_small_frames_are_not_upscaled(photo: np.ndarray) -> None:
    face = make_detector("yunet", yunet_path=YUNET).detect(photo)[0]
    cx, cy = (round(face.box[0] + face.box[2] / 2), round(face.box[1] + face.box[3] / 2))
    region = photo[max(0, cy - 150) : cy + 150, max(0, cx - 150) : cx + 150]
    assert region.shape[1] <= 300
    at_320 = make_detector("yunet", yunet_path=YUNET, detect_width=320).detect(region)
    at_960 = make_detector("yunet", yunet_path=YUNET, detect_width=960).detect(region)
    assert len(at_320) == 1 and [f.box for f in at_320] == [f.box for f in at_960]


@needs_shared
def test_haar_finds_faces_yunet_agrees_with(photo: np.ndarray, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="edge.faces"):
        haar = make_detector("auto", search_dirs=[SHARED / "data"])  # a folder without YuNet
    assert haar.name == "haar" and "Haar" in caplog.text
    faces = haar.detect(photo)
    assert len(faces) >= 5 and all(f.landmarks is None for f in faces)
    yunet_faces = make_detector("yunet", yunet_path=YUNET).detect(photo)
    agreeing = [f for f in faces if max(iou(f.box, y.box) for y in yunet_faces) > 0.3]
    assert len(agreeing) >= 5


def test_yunet_required_but_absent_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as caught:
        make_detector("yunet", search_dirs=[tmp_path])
    assert str(tmp_path) in str(caught.value) and "installer" in str(caught.value)
    with pytest.raises(ModelError, match="not found"):
        make_detector("yunet", yunet_path=tmp_path / "face_detection_yunet_x.onnx")


def test_corrupt_yunet_file_is_refused_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "face_detection_yunet_2023mar.onnx"
    broken.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(ModelError) as caught:
        make_detector("auto", search_dirs=[tmp_path])
    assert "not a YuNet face detector ONNX" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_a_yunet_file_the_daemon_may_not_read_is_not_called_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "face_detection_yunet_2023mar.onnx"
    path.write_bytes(b"a model the service may not read")
    path.chmod(0o000)
    with pytest.raises(ModelError, match=r"cannot be read \(permission denied\); .*chgrp edge-mood-config"):
        make_detector("yunet", yunet_path=path)


def test_another_onnx_model_named_as_yunet_is_refused_at_start_naming_the_key(tmp_path: Path) -> None:
    """OpenCV loads any ONNX file; an expression model given as YuNet failed only at the first frame, and the
    fix for a file the user named is the key, not the installer."""
    other = write_tiny_model(tmp_path / "models")
    with pytest.raises(ModelError, match="is not a YuNet face detector ONNX"):
        make_detector("yunet", yunet_path=other)
    config = load_config(None, {"detector.kind": "yunet", "detector.yunet_model": str(other)}, environ={})
    with pytest.raises(ModelError) as caught:
        build_detector(config, ExpressionModel.load(default_model(), precision="int8", threads=1))
    message = str(caught.value)
    assert message.startswith(f"detector.yunet_model = '{other}'") and "installer" not in message
    assert "face_detection_yunet_2023mar.onnx" in message and "\n" not in message


# The peak of this process's own memory (VmHWM: getrusage's maxrss keeps the forking parent's peak on Linux).
PEAK_MEMORY = """
import sys
from edge.faces import YuNetDetector
YuNetDetector(sys.argv[1], detect_width=4096, score_threshold=0.7, min_face_px=24)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmHWM"].split()[0]) // 1024)
"""


@pytest.mark.skipif(not YUNET.exists(), reason="needs ../shared (the YuNet model)")
def test_loading_yunet_for_a_wide_detect_width_costs_no_detection_at_that_width() -> None:
    """Trying YuNet once at load is on a tiny image: a 4096-pixel square took 1.2 GB and seconds on every start."""
    done = subprocess.run([sys.executable, "-c", PEAK_MEMORY, str(YUNET)], capture_output=True, text=True, check=True)
    assert int(done.stdout) < 400, f"{done.stdout.strip()} MB at load"


def test_unknown_detector_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="auto, yunet or haar"):
        make_detector("mtcnn")


# --- cropping -------------------------------------------------------------------------------------------


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def rotate_about(image: np.ndarray, centre: tuple[float, float], degrees: float) -> tuple[np.ndarray, np.ndarray]:
    matrix = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    size = (image.shape[1], image.shape[0])
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE), matrix


@needs_shared
def test_crop_levels_the_eyes_of_a_tilted_face(photo: np.ndarray) -> None:
    """Tilt the photo 20 degrees about a face and move its landmarks with it: the levelled crop matches."""
    face = max(make_detector("yunet", yunet_path=YUNET, detect_width=640).detect(photo), key=lambda f: f.box[2])
    x, y, w, h = face.box
    tilted, matrix = rotate_about(photo, (x + w / 2, y + h / 2), 20)
    moved = replace(face, landmarks=(face.landmarks @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32))
    assert math.degrees(eye_angle(moved.landmarks) - eye_angle(face.landmarks)) == pytest.approx(-20, abs=0.01)
    big = card(size=96)
    upright = crop_face(photo, face, big)
    levelled = crop_face(tilted, moved, big)
    naive = crop_face(tilted, replace(moved, landmarks=None), big)
    assert mse(levelled, upright) < 80  # only resampling differences left
    assert mse(naive, upright) > 10 * mse(levelled, upright)


@needs_shared
def test_crop_with_detected_landmarks_undoes_most_of_a_tilt(photo: np.ndarray) -> None:
    """Same with YuNet's own landmarks on the tilted photo, summed over the jurors (full-resolution detection:
    its landmarks follow a tilt only on faces of about 80 px and more)."""
    detector = make_detector("yunet", yunet_path=YUNET, detect_width=photo.shape[1])
    big = card(size=96)
    levelled_error = naive_error = 0.0
    rolls = []
    for face in detector.detect(photo)[:6]:
        x, y, w, h = face.box
        tilted, _ = rotate_about(photo, (x + w / 2, y + h / 2), 20)
        found = nearest(detector.detect(tilted), x + w / 2, y + h / 2)
        rolls.append(math.degrees(eye_angle(found.landmarks) - eye_angle(face.landmarks)))
        upright = crop_face(photo, face, big)
        levelled_error += mse(crop_face(tilted, found, big), upright)
        naive_error += mse(crop_face(tilted, replace(found, landmarks=None), big), upright)
    assert np.median(rolls) < -10  # the detector saw the tilt (negative: counter-clockwise on screen)
    assert levelled_error < 0.8 * naive_error


@needs_shared
def test_crop_size_colour_and_margin_follow_the_card(photo: np.ndarray) -> None:
    face = make_detector("yunet", yunet_path=YUNET).detect(photo)[0]
    grey = crop_face(photo, face, card(48, "gray"))
    assert grey.shape == (48, 48) and grey.dtype == np.uint8
    rgb = crop_face(photo, face, card(64, "rgb"))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    # RGB order: the red box drawn around each juror in this photo shows up in channel 0.
    assert rgb[..., 0].astype(int).sum() > rgb[..., 2].astype(int).sum()
    from_grey = crop_face(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), face, card(48, "gray"))
    assert mse(from_grey, grey) < 4
    # A wider margin shows more around the face: the tight crop reappears, smaller, in its middle.
    wide = crop_face(photo, face, card(96, "gray", margin=0.6))
    tight = crop_face(photo, face, card(96, "gray", margin=0.1))
    inner = round(96 * 1.2 / 2.2)
    middle = wide[48 - inner // 2 : 48 - inner // 2 + inner, 48 - inner // 2 : 48 - inner // 2 + inner]
    assert mse(cv2.resize(tight, (inner, inner), interpolation=cv2.INTER_AREA), middle) < 150
    assert mse(cv2.resize(tight, (inner, inner), interpolation=cv2.INTER_AREA), wide[:inner, :inner]) > 300


@needs_shared
def test_face_at_the_frame_edge_is_padded_by_replication(photo: np.ndarray) -> None:
    corner = Face(box=(0.0, 0.0, 80.0, 80.0), score=1.0, landmarks=None)
    crop = crop_face(photo, corner, card(48, "gray", margin=0.5))
    grey = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    # The first 12 of 48 rows/columns lie left/above the frame: copies of the frame's first row/column.
    assert crop.shape == (48, 48)
    assert np.abs(crop[:10, 20].astype(int) - int(crop[12, 20])).max() <= 3
    assert abs(int(crop[12, 12]) - int(grey[0, 0])) <= 12


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift() -> None:
    points = np.array(TEMPLATE) * 200 + 37
    angle = math.radians(25)
    truth = 0.4 * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = points @ truth.T + np.array([5.0, -3.0])
    found = similarity_transform(points, moved)
    assert np.allclose(found[:, :2], truth) and np.allclose(found[:, 2], [5.0, -3.0])


@needs_shared
def test_aligned_crop_puts_the_landmarks_on_the_template(photo: np.ndarray) -> None:
    """With a template in the card, YuNet's five points land where the template says, on a tilted face too.
    The template is this face's own points in its upright box crop, so a perfect fit exists."""
    detector = make_detector("yunet", yunet_path=YUNET, detect_width=photo.shape[1])
    face = max(detector.detect(photo), key=lambda f: f.box[2])
    boxed = card(96, "gray", margin=0.0)
    upright = face.landmarks @ box_transform(face, boxed)[:, :2].T + box_transform(face, boxed)[:, 2]
    aligned = card(96, "gray", template=(upright / 96).tolist())

    def miss(image: np.ndarray, found: Face, model_card: ModelCard) -> float:
        """Mean distance in pixels of 96 between where YuNet finds the points in the crop and the template."""
        crop = crop_face(image, found, model_card)
        again = nearest(detector.detect(cv2.copyMakeBorder(crop, 48, 48, 48, 48, cv2.BORDER_REPLICATE)), 96, 96)
        return float(np.linalg.norm(again.landmarks - 48 - upright, axis=1).mean())

    x, y, w, h = face.box
    tilted, _ = rotate_about(photo, (x + w / 2, y + h / 2), 20)
    found = nearest(detector.detect(tilted), x + w / 2, y + h / 2)
    assert miss(photo, face, aligned) < 4
    assert miss(tilted, found, aligned) < 0.5 * miss(tilted, replace(found, landmarks=None), boxed)
    # Haar gives no landmarks: the same card falls back to the box crop.
    no_points = replace(face, landmarks=None)
    assert np.array_equal(crop_face(photo, no_points, aligned), crop_face(photo, no_points, card(96, "gray")))
