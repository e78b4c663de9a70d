"""Someone walking past a camera analysed a few times a second: a real face crossing a folder of frames faster
than its box overlaps from one frame to the next, through the daemon as built by wiring.py (real YuNet, the tiny
test model, a real mosquitto). It is one person: one face_enter, one face_leave."""

from __future__ import annotations

import cv2
import pytest

from edge.config import load_config
from edge.wiring import build_daemon
from tests.scenes import PHOTO, YUNET, frame_with_faces
from tests.tiny_model import write_tiny_model

pytestmark = pytest.mark.skipif(
    not (PHOTO.is_file() and YUNET.is_file()), reason="needs ../shared (a real photo and the YuNet model)"
)

FPS = 5.0
SIDE = 150  # the pasted patch; YuNet's box is about 90 px of it
STEP = 110  # pixels per frame, 1.2 face boxes: consecutive boxes do not overlap
EMPTY_AFTER = 20  # 4 s of empty room: longer than tracking.leave_after_s


def walk_past(folder) -> None:
    folder.mkdir()
    xs = list(range(0, 640 - SIDE, STEP))
    for i, x in enumerate(xs):
        cv2.imwrite(str(folder / f"frame_{i:05d}.jpg"), frame_with_faces((x, 150), side=SIDE))
    for i in range(len(xs), len(xs) + EMPTY_AFTER):
        cv2.imwrite(str(folder / f"frame_{i:05d}.jpg"), frame_with_faces())


def events_of(tmp_path, broker, subscriber, max_jump: float) -> list[dict]:
    folder = tmp_path / "frames"
    if not folder.exists():
        walk_past(folder)
    device = f"walk{max_jump:g}".replace(".", "")
    overrides = {
        "source.uri": str(folder),
        "source.fps": FPS,
        "detector.yunet_model": str(YUNET),
        "detector.detect_every": 1,
        "model.path": str(write_tiny_model(tmp_path / "model", gain=8.0)),
        "model.classify_every": 1,
        "tracking.max_jump": max_jump,
        "mqtt.host": broker.host,
        "mqtt.port": broker.port,
        "mqtt.protocol": broker.protocol,
        "mqtt.device_id": device,
        "spool.dir": str(tmp_path / f"state-{device}"),
    }
    events, status = f"edge-mood/{device}/events", f"edge-mood/{device}/status"
    sub = subscriber(broker, events, status)
    assert build_daemon(load_config(overrides=overrides, environ={}), once=True).run() == 0
    # The daemon sends "offline" last, after its events have been acknowledged: once it is here, so are they.
    sub.wait_until(lambda got: any(m.text == "offline" for m in got), topic=status)
    return [m.json() for m in sub.received(events)]


def test_a_face_walking_past_is_one_person(tmp_path, broker, subscriber) -> None:
    events = events_of(tmp_path, broker, subscriber, max_jump=1.5)
    kinds = [e["type"] for e in events]
    assert kinds.count("face_enter") == 1 and kinds.count("face_leave") == 1, kinds
    assert len({e["track_id"] for e in events}) == 1
    # By overlap alone the walker is a new face in every frame, seen once each, and never announced.
    assert [e["type"] for e in events_of(tmp_path, broker, subscriber, max_jump=0)] == []
