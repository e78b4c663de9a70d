"""FrameGrabber: newest-frame handoff for live sources, lossless handoff for files, reconnect with back-off.

Live behaviour is exercised with `StandInCamera`, a FrameSource subclass generating numbered frames: a stand-in
for a camera, because test machines have no camera attached. Files are real ones decoded by OpenCV.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture import FrameGrabber
from edge.errors import SourceError
from edge.sources import FrameSource, SourceLost, SourceUnavailable, open_source
from tests.mqtt_support import wait_until
from tests.test_sources import frame_number, numbered_frame, write_images


class StandInCamera(FrameSource):
    """Stands in for a camera (no hardware here): a live source producing frames whose pixels hold their number.

    `fail_after` makes it raise SourceLost after that many frames, like an unplugged camera.
    """

    live = True

    def __init__(self, start: int = 0, fail_after: int | None = None, frame_gap_s: float = 0.002) -> None:
        self.description = "stand-in camera"
        self.produced = start
        self._fail_after = fail_after
        self._gap = frame_gap_s
        self.closed = False

    def read(self) -> np.ndarray:
        if self._fail_after is not None and self.produced >= self._fail_after:
            raise SourceLost("cable pulled")
        time.sleep(self._gap)  # a camera delivers frames at its frame rate, it does not spin
        image = np.full((4, 4), self.produced, np.uint32).view(np.uint8).reshape(4, 16)
        self.produced += 1
        return image

    def close(self) -> None:
        self.closed = True


def stand_in_number(image: np.ndarray) -> int:
    return int(image.reshape(4, 4, 4).view(np.uint32)[0, 0, 0])


def test_live_source_hands_over_the_newest_frame_and_counts_drops() -> None:
    camera = StandInCamera()
    grabber = FrameGrabber(lambda: camera)
    grabber.start()
    try:
        received = []
        for _ in range(8):
            time.sleep(0.03)  # a consumer slower than the camera
            produced_before = camera.produced
            frame = grabber.get(timeout=2.0)
            assert frame is not None
            # Newest, not queued: at most the frame being read right now may be newer than this one.
            assert frame.index >= produced_before - 2
            assert stand_in_number(frame.image) == frame.index
            assert abs(frame.captured_at - time.monotonic()) < 2, "face timeouts run on the monotonic clock"
            received.append(frame.index)
    finally:
        grabber.stop()
    assert received == sorted(set(received))
    assert grabber.dropped > 0
    assert grabber.dropped + len(received) <= camera.produced
    assert camera.closed and grabber.connected is False


def test_file_source_hands_over_every_frame_to_a_slow_consumer(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    for number in range(20):
        writer.write(numbered_frame(number))
    writer.release()
    grabber = FrameGrabber(lambda: open_source(str(path)))
    grabber.start()
    numbers, indexes = [], []
    while (frame := grabber.get(timeout=5.0)) is not None:
        time.sleep(0.005)
        numbers.append(frame_number(frame.image))
        indexes.append(frame.index)
    assert grabber.finished
    assert numbers == list(range(20)) and indexes == list(range(20))
    assert grabber.dropped == 0
    grabber.stop()


def test_realtime_file_drops_stale_frames_like_a_camera(tmp_path: Path) -> None:
    for number in range(30):
        cv2.imwrite(str(tmp_path / f"{number}.png"), numbered_frame(number % 25))
    grabber = FrameGrabber(lambda: open_source(str(tmp_path), fps=200.0), realtime=True)
    grabber.start()
    indexes = []
    while (frame := grabber.get(timeout=5.0)) is not None:
        time.sleep(0.05)  # the file plays at 200 fps, this consumer manages 20
        indexes.append(frame.index)
    assert grabber.finished
    assert grabber.dropped > 0
    assert indexes == sorted(set(indexes)) and len(indexes) + grabber.dropped == 30


def test_corrupt_images_are_counted_by_the_grabber(tmp_path: Path) -> None:
    write_images(tmp_path, [1, 2, 3])
    (tmp_path / "frame2b.png").write_bytes(b"\x89PNG broken")
    grabber = FrameGrabber(lambda: open_source(str(tmp_path)))
    grabber.start()
    count = 0
    while grabber.get(timeout=5.0) is not None:
        count += 1
    assert count == 3 and grabber.corrupt == 1


def test_lost_live_source_is_reopened_with_one_log_line_per_state_change(caplog) -> None:
    opened: list[StandInCamera] = []
    attempts = {"n": 0}

    def open_camera() -> StandInCamera:
        attempts["n"] += 1
        if 2 <= attempts["n"] <= 4:  # the camera stays away for three attempts
            raise SourceUnavailable("camera /dev/video0 not found")
        camera = StandInCamera(start=sum(c.produced for c in opened), fail_after=None if opened else 5)
        opened.append(camera)
        return camera

    grabber = FrameGrabber(open_camera, reconnect_initial_s=0.01, reconnect_max_s=0.04)
    with caplog.at_level(logging.DEBUG, logger="edge.capture"):
        grabber.start()
        try:
            indexes, images = [], []
            while len(indexes) < 10:
                frame = grabber.get(timeout=5.0)
                assert frame is not None
                indexes.append(frame.index)
                images.append(frame.image)
        finally:
            grabber.stop()
    assert grabber.reconnects == 1 and attempts["n"] == 5
    # A loaded machine may drop a few frames (newest-frame semantics), so the check is on order and numbering:
    # strictly increasing, each frame numbered as its source counted it, and the second camera's frames
    # carry on after the first one's five instead of starting again at 0.
    assert indexes == sorted(set(indexes))
    assert [stand_in_number(f) for f in images] == indexes
    assert indexes[-1] >= 9 and any(i >= 5 for i in indexes)
    assert opened[0].closed
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert sum("lost stand-in camera" in m for m in messages) == 1
    assert sum("reconnected to stand-in camera" in m for m in messages) == 1
    assert len(messages) == 3  # reading ..., lost ..., reconnected ...


def test_a_stream_that_keeps_dropping_soon_after_it_opens_is_retried_with_growing_waits() -> None:
    # A flaky network camera: every connection dies after three frames. Reconnecting at the shortest wait
    # each time meant a reconnect and two log lines a second for as long as it flapped.
    opened_at: list[float] = []

    def open_flaky_camera() -> StandInCamera:
        opened_at.append(time.monotonic())
        return StandInCamera(fail_after=3)

    grabber = FrameGrabber(open_flaky_camera, reconnect_initial_s=0.05, reconnect_max_s=0.4)
    grabber.start()
    try:
        time.sleep(2.0)
    finally:
        grabber.stop()
    waits = [b - a for a, b in zip(opened_at, opened_at[1:])]
    # 0.05, 0.1, 0.2, 0.4, 0.4, ... (plus the three frames): about 7 opens in 2 s, against 30 at 0.05 s.
    assert 4 <= len(opened_at) <= 10, waits
    assert waits[3] > 0.3, waits


def test_a_camera_that_stayed_up_a_while_is_reconnected_at_the_shortest_wait_again() -> None:
    events: list[tuple[str, float]] = []

    class RecordedCamera(StandInCamera):
        def read(self) -> np.ndarray:
            try:
                return super().read()
            except SourceLost:
                events.append(("lost", time.monotonic()))
                raise

    def open_camera() -> StandInCamera:
        events.append(("open", time.monotonic()))
        # Five cameras flap (the waits grow 0.05, 0.1, 0.2, 0.4 s); the sixth stays up past reconnect_max_s.
        flapping = sum(kind == "open" for kind, _ in events) <= 5
        return RecordedCamera(fail_after=3 if flapping else 700)

    grabber = FrameGrabber(open_camera, reconnect_initial_s=0.05, reconnect_max_s=1.0)
    grabber.start()
    try:
        wait_until(lambda: sum(kind == "open" for kind, _ in events) >= 7, "the seventh camera", timeout=20)
    finally:
        grabber.stop()
    opens = [t for kind, t in events if kind == "open"]
    losses = [t for kind, t in events if kind == "lost"]
    assert opens[5] - losses[4] >= 0.4  # still growing after four flaps
    assert opens[6] - losses[5] < 0.3  # the sixth had stayed up: back to the shortest wait


def test_absent_camera_at_start_is_waited_for() -> None:
    attempts = {"n": 0}

    def open_camera() -> StandInCamera:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise SourceUnavailable("camera /dev/video0 not found")
        return StandInCamera()

    grabber = FrameGrabber(open_camera, reconnect_initial_s=0.01, reconnect_max_s=0.02)
    grabber.start()
    try:
        assert grabber.get(timeout=5.0) is not None
        assert grabber.connected and grabber.reconnects == 0
    finally:
        grabber.stop()


def test_a_camera_away_is_waited_for_but_one_whose_reopening_hangs_is_not() -> None:
    attempts, hang = {"n": 0}, threading.Event()

    def open_camera() -> StandInCamera:
        attempts["n"] += 1
        if attempts["n"] < 4:
            raise SourceUnavailable("camera /dev/video0 not found")
        hang.wait(30)  # a wedged driver: the open call does not return
        return StandInCamera()

    grabber = FrameGrabber(open_camera, reconnect_initial_s=0.01, reconnect_max_s=0.02)
    grabber.start()
    try:
        assert grabber.waiting_for_source(hung_after_s=0.3), "away and retried: no frame is due"
        deadline = time.monotonic() + 5
        while grabber.waiting_for_source(hung_after_s=0.3) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert attempts["n"] == 4 and not grabber.waiting_for_source(hung_after_s=0.3), "hung: no longer waiting"
    finally:
        hang.set()
        grabber.stop()


def test_source_that_cannot_work_fails_at_start(tmp_path: Path) -> None:
    grabber = FrameGrabber(lambda: open_source(str(tmp_path / "missing.mp4")))
    with pytest.raises(SourceError, match="missing.mp4"):
        grabber.start()


def test_stop_ends_the_capture_thread() -> None:
    grabber = FrameGrabber(lambda: StandInCamera())
    grabber.start()
    assert grabber.get(timeout=5.0) is not None
    grabber.stop()
    assert not any(t.name == "frame-grabber" and t.is_alive() for t in threading.enumerate())
    assert grabber.get(timeout=0.1) is None and grabber.finished
