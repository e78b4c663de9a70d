"""Following faces between full detections (real YuNet on a real face), and the adaptive detect width."""

from __future__ import annotations

import numpy as np
import pytest

from edge.faces import ADAPTIVE_FACE_PX, WIDTH_STEP_PX, Face, adaptive_detect_width, make_detector
from edge.follow import RegionFollower
from edge.tracker import iou
from tests.scenes import PHOTO, YUNET, frame_with_faces

pytestmark = pytest.mark.skipif(
    not (PHOTO.is_file() and YUNET.is_file()), reason="needs ../shared (a real photo and the YuNet model)"
)


def only(faces: list[Face]) -> Face:
    assert len(faces) == 1, faces
    return faces[0]


@pytest.fixture(scope="module")
def detector():
    return make_detector("yunet", yunet_path=YUNET)


def test_a_moved_face_is_found_again_in_its_region_with_fresh_landmarks(detector) -> None:
    before = only(detector.detect(frame_with_faces((200, 140))))
    moved = frame_with_faces((212, 146))
    again = RegionFollower(detector, min_face_px=24).refind(moved, before)
    assert again is not None
    assert again.box[0] - before.box[0] == pytest.approx(12, abs=3)
    assert again.box[1] - before.box[1] == pytest.approx(6, abs=3)
    assert again.landmarks is not None and before.landmarks is not None
    np.testing.assert_allclose(again.landmarks - before.landmarks, np.tile([12, 6], (5, 1)), atol=4)
    # As good as a full-frame detection of the same frame, up to YuNet's own jitter between two placements of
    # the face on its grid (the region and the downscaled frame sample the face at different offsets).
    full = only(detector.detect(moved))
    assert iou(again.box, full.box) > 0.75
    np.testing.assert_allclose(again.landmarks, full.landmarks, atol=8)


def test_a_face_at_the_frame_edge_is_followed_through_the_padded_region(detector) -> None:
    before = only(detector.detect(frame_with_faces((455, 295))))
    again = RegionFollower(detector, min_face_px=24).refind(frame_with_faces((458, 298)), before)
    assert again is not None and again.box[0] + again.box[2] <= 640 and again.box[1] + again.box[3] <= 480
    assert again.box[0] - before.box[0] == pytest.approx(3, abs=3)


def test_a_face_that_left_is_not_found_again(detector) -> None:
    before = only(detector.detect(frame_with_faces((200, 140))))
    follower = RegionFollower(detector, min_face_px=24)
    assert follower.refind(frame_with_faces(), before) is None
    # Another face elsewhere in the frame is not the one followed.
    assert follower.refind(frame_with_faces((440, 280)), before) is None


def test_faces_smaller_than_the_minimum_are_not_followed(detector) -> None:
    before = only(detector.detect(frame_with_faces((200, 140))))
    assert RegionFollower(detector, min_face_px=300).refind(frame_with_faces((200, 140)), before) is None


@pytest.mark.parametrize(
    "face_px, expected",
    [
        (100, 320),  # needs 358 px: never wider than the configured width
        (200, 192),  # 179 px rounded up to a step
        (400, 96),
        (5000, WIDTH_STEP_PX),  # never narrower than one step
    ],
)
def test_adaptive_width_keeps_the_smallest_face_wide_enough(face_px: int, expected: int) -> None:
    width = adaptive_detect_width(face_px, 640, 320)
    assert width == expected and width % WIDTH_STEP_PX == 0
    assert face_px * width / 640 >= ADAPTIVE_FACE_PX or width == 320


def test_a_large_face_is_still_found_at_its_adapted_width(detector) -> None:
    frame = frame_with_faces((150, 60), side=360)
    face = only(detector.detect(frame))
    width = adaptive_detect_width(max(face.box[2], face.box[3]), 640, detector.detect_width)
    assert width < detector.detect_width
    narrow = only(detector.detect(frame, width))
    assert iou(narrow.box, face.box) > 0.75
