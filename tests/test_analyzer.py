"""The analyzer's cadence: full detections every few frames with faces followed in between, classification
every few frames with scores kept in between. Real YuNet, a real face, the tiny test model.

The detector and the model are the real ones, wrapped only to record which frames called them."""

from __future__ import annotations

import numpy as np
import pytest

from edge.analyzer import Cadence, FrameAnalyzer
from edge.classifier import ExpressionModel
from edge.faces import Detector, Face, make_detector
from edge.follow import RegionFollower
from edge.stats import StageTimer
from tests.scenes import PHOTO, YUNET, frame_with_faces
from tests.tiny_model import write_tiny_model

pytestmark = pytest.mark.skipif(
    not (PHOTO.is_file() and YUNET.is_file()), reason="needs ../shared (a real photo and the YuNet model)"
)


class RecordingDetector:
    """The real detector; remembers the width of each full-frame call."""

    def __init__(self, detector: Detector):
        self._detector = detector
        self.name = detector.name
        self.detect_width = detector.detect_width
        self.widths: list[int | None] = []

    def detect(self, image: np.ndarray, width: int | None = None) -> list[Face]:
        self.widths.append(width)
        return self._detector.detect(image, width)

    def at_width(self, detect_width: int) -> Detector:
        return self._detector.at_width(detect_width)


class RecordingModel:
    """The real model; remembers how many faces each call classified."""

    def __init__(self, model: ExpressionModel):
        self._model = model
        self.card = model.card
        self.batches: list[int] = []

    def predict(self, crops: list[np.ndarray]) -> np.ndarray:
        self.batches.append(len(crops))
        return self._model.predict(crops)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> ExpressionModel:
    return ExpressionModel.load(write_tiny_model(tmp_path_factory.mktemp("model"), gain=8.0), threads=1)


def analyzer_for(model: ExpressionModel, cadence: Cadence) -> tuple[FrameAnalyzer, RecordingDetector, RecordingModel]:
    detector = RecordingDetector(make_detector("yunet", yunet_path=YUNET))
    recording = RecordingModel(model)
    follower = RegionFollower(detector, min_face_px=24) if cadence.detect_every > 1 else None
    return FrameAnalyzer(detector, recording, StageTimer(), cadence, follower), detector, recording


def analyze_all(analyzer: FrameAnalyzer, detector: RecordingDetector, frames: list[np.ndarray]):
    """Per frame: the faces found and whether a full detection ran."""
    results, detected = [], []
    for frame in frames:
        calls = len(detector.widths)
        results.append(analyzer.analyze(frame))
        detected.append(len(detector.widths) > calls)
    return results, detected


def drifting(count: int, *extra: tuple[int, int]) -> list[np.ndarray]:
    return [frame_with_faces((200 + 3 * i, 140 + i), *extra) for i in range(count)]


def test_every_frame_by_default(model) -> None:
    analyzer, detector, recording = analyzer_for(model, Cadence())
    results, detected = analyze_all(analyzer, detector, drifting(4))
    assert detected == [True] * 4 and recording.batches == [1] * 4
    assert [len(r) for r in results] == [1] * 4


def test_detection_every_n_frames_and_classification_every_k(model) -> None:
    analyzer, detector, recording = analyzer_for(model, Cadence(detect_every=5, classify_every=2))
    results, detected = analyze_all(analyzer, detector, drifting(12))
    assert detected == [i % 5 == 0 for i in range(12)]
    assert recording.batches == [1 - i % 2 for i in range(12)]
    assert all(len(r) == 1 for r in results)
    # Between classifications a face keeps its scores; its box follows the face (3 px a frame).
    for i in range(1, 12, 2):
        np.testing.assert_array_equal(results[i][0].scores, results[i - 1][0].scores)
    assert results[11][0].face.box[0] - results[0][0].face.box[0] == pytest.approx(33, abs=8)


def test_a_face_that_leaves_brings_the_full_detection_forward(model) -> None:
    analyzer, detector, _ = analyzer_for(model, Cadence(detect_every=5))
    frames = drifting(2) + [frame_with_faces(), frame_with_faces()]
    results, detected = analyze_all(analyzer, detector, frames)
    assert [len(r) for r in results] == [1, 1, 0, 0]
    assert detected == [True, False, True, True]  # frame 2: following failed; frame 3: nothing to follow
    assert not analyzer.following


def test_a_new_face_waits_for_the_next_full_detection_and_is_classified_at_once(model) -> None:
    analyzer, detector, recording = analyzer_for(model, Cadence(detect_every=5, classify_every=3))
    frames = drifting(2) + drifting(6, (440, 280))[2:]
    results, detected = analyze_all(analyzer, detector, frames)
    assert [len(r) for r in results] == [1, 1, 1, 1, 1, 2]
    assert detected == [True, False, False, False, False, True]
    # Frame 5: the followed face is due (classified at 0 and 3: no), the new one is classified at once.
    assert recording.batches == [1, 0, 0, 1, 0, 1]


def test_adaptive_width_narrows_full_detections_while_a_large_face_is_in_view(model) -> None:
    analyzer, detector, _ = analyzer_for(model, Cadence(adaptive_width=True))
    big = [frame_with_faces((150 + 2 * i, 60), side=360) for i in range(3)] + [frame_with_faces()]
    results, _ = analyze_all(analyzer, detector, big + [frame_with_faces((200, 140))])
    assert detector.widths[0] is None  # nothing in view yet: the configured width
    assert all(w is not None and w < detector.detect_width for w in detector.widths[1:4])
    assert [len(r) for r in results] == [1, 1, 1, 0, 1]
    assert detector.widths[4] is None  # the face left: back to the configured width, which finds small faces


def test_detecting_every_few_frames_needs_a_follower(model) -> None:
    with pytest.raises(ValueError, match="RegionFollower"):
        FrameAnalyzer(make_detector("yunet", yunet_path=YUNET), model, StageTimer(), Cadence(detect_every=3))
