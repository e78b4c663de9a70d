"""The daemon's idle rate: with no face in view it analyses `detector.idle_fps` frames a second, and the first
face brings back every frame. A real daemon (built by wiring.py, run in this process) on a folder of real-face
frames read at full speed (media time), a real mosquitto, the tiny test model; the detector is the real one,
wrapped only to count the frames it searched."""

from __future__ import annotations

import numpy as np
import pytest

from edge.config import load_config
from edge.wiring import build_daemon
from tests.scenes import PHOTO, YUNET, Segment, write_images
from tests.tiny_model import write_tiny_model

pytestmark = pytest.mark.skipif(
    not (PHOTO.is_file() and YUNET.is_file()), reason="needs ../shared (a real photo and the YuNet model)"
)

FPS = 15.0
EMPTY, FACE = 14, 10  # frames without, then with a face


class CountingDetector:
    def __init__(self, detector):
        self._detector = detector
        self.name = detector.name
        self.detect_width = detector.detect_width
        self.calls = 0

    def detect(self, image: np.ndarray, width: int | None = None):
        self.calls += 1
        return self._detector.detect(image, width)

    def at_width(self, detect_width: int):
        return self._detector.at_width(detect_width)


def run(tmp_path, broker, subscriber, idle_fps: float) -> tuple[int, list[dict]]:
    """Full detections made and the events published for EMPTY empty frames followed by FACE with a face."""
    folder = tmp_path / f"frames-{idle_fps:g}"
    write_images(folder, [Segment(EMPTY, None), Segment(FACE, 2.4)])
    overrides = {
        "source.uri": str(folder),
        "source.fps": FPS,
        "detector.yunet_model": str(YUNET),
        "detector.idle_fps": idle_fps,
        "detector.detect_every": 1,
        "model.path": str(write_tiny_model(tmp_path / "model", gain=8.0)),
        "mqtt.host": broker.host,
        "mqtt.port": broker.port,
        "mqtt.protocol": broker.protocol,
        "mqtt.device_id": "idle",
        "spool.dir": str(tmp_path / f"state-{idle_fps:g}"),
    }
    sub = subscriber(broker, "edge-mood/idle/events")
    daemon = build_daemon(load_config(overrides=overrides, environ={}), once=True)
    counting = CountingDetector(daemon.analyzer.detector)
    daemon.analyzer.detector = counting
    assert daemon.run() == 0
    events = [m.json() for m in sub.wait_for(2)]
    sub.close()
    return counting.calls, events


def test_idle_rate_searches_fewer_frames_and_still_finds_the_face(tmp_path, broker, subscriber) -> None:
    every_frame, baseline = run(tmp_path, broker, subscriber, idle_fps=0)
    idle, events = run(tmp_path, broker, subscriber, idle_fps=5)
    assert every_frame == EMPTY + FACE
    # 5 a second at 15 fps: frames 0, 3, 6, 9 and 12 of the empty part; the face comes at frame 14, between
    # two of those, is seen at 15 and from then on every frame is searched.
    assert idle == 5 + FACE - 1
    enter = next(e for e in events if e["type"] == "face_enter")
    assert enter["frame"] == next(e for e in baseline if e["type"] == "face_enter")["frame"] + 1
    assert [e["type"] for e in events[:2]] == ["face_enter", "expression"]
