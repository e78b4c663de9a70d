"""End to end: `edge run` as a process on videos of real faces, a real mosquitto, a real ONNX model.

The scenes (tests/scenes.py) script a known expression sequence through the tiny test model, whose
prediction follows the face's brightness: bright -> happy, dark -> sad.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.scenes import SHARED, YUNET, Segment, write_images, write_video
from tests.tiny_model import write_tiny_model

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared (real photos and the YuNet model)")

jsonschema = pytest.importorskip("jsonschema")
SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"

BRIGHT, DARK = 2.4, 0.45
# face_enter, happy, sad, face_leave; then a second visit: enter, happy, leave.
SCRIPT = [
    Segment(5, None),
    Segment(15, BRIGHT),
    Segment(15, DARK),
    Segment(30, None),
    Segment(15, BRIGHT),
    Segment(10, None),
]
EXPECTED = [
    ("face_enter", None),
    ("expression", "happy"),
    ("expression", "sad"),
    ("face_leave", "sad"),
    ("face_enter", None),
    ("expression", "happy"),
    ("face_leave", "happy"),
]


def write_config(tmp_path: Path, broker, source_path: Path, **extra: dict) -> Path:
    model = write_tiny_model(tmp_path / "model", gain=8.0)
    sections = {
        "source": {"uri": str(source_path), "fps": 10.0},
        "detector": {"yunet_model": str(YUNET)},
        "model": {"path": str(model), "threads": 1},
        "tracking": {"enter_frames": 2, "settle_frames": 3, "leave_after_frames": 5, "leave_after_s": 0.5},
        "mqtt": {"host": broker.host, "port": broker.port, "device_id": "room1", "protocol": broker.protocol},
        "spool": {"dir": str(tmp_path / "state")},
        "stats": {"interval_s": 1.0},
    }
    for section, values in extra.items():
        sections.setdefault(section, {}).update(values)
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def edge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=timeout)


def start_edge(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edge", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def events_of(messages) -> list[dict]:
    return [m.json() for m in messages]


def deduplicated(events: list[dict]) -> list[dict]:
    seen: dict[int, dict] = {}
    for event in events:
        seen.setdefault(event["seq"], event)
    return [seen[seq] for seq in sorted(seen)]


def validate(payload: dict, kind: str) -> None:
    schema = json.loads((SCHEMAS / f"mqtt-{kind}.schema.json").read_text())
    jsonschema.validate(payload, schema)


def test_video_gives_the_scripted_events_in_order(tmp_path, broker, subscriber):
    video = tmp_path / "scene.avi"
    frames = write_video(video, SCRIPT)
    sub = subscriber(broker, "edge-mood/room1/#")
    result = edge("run", "--once", "--config", str(write_config(tmp_path, broker, video)))
    assert result.returncode == 0, result.stderr[-2000:]
    events = events_of(sub.wait_for(len(EXPECTED), topic="edge-mood/room1/events"))
    assert [(e["type"], e["expression"]) for e in events] == EXPECTED
    assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[0]["seq"] + len(events)))
    assert len({e["track_id"] for e in events[:4]}) == 1 and events[4]["track_id"] != events[0]["track_id"]
    for event in events:
        validate(event, "event")
        assert event["device"] == "room1" and 0 <= event["frame"] < frames or event["type"] == "face_leave"
        assert set(event["scores"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
        box = event["bbox"]
        assert 0 <= box["x"] < 1 and 0 < box["w"] < 1
    # The frame numbers follow the script: the first "sad" comes after the dark segment starts (frame 20).
    assert events[2]["frame"] >= 20
    statuses = [m.text for m in sub.received("edge-mood/room1/status")]
    assert statuses[0] == "online" and statuses[-1] == "offline"
    states = [m.json() for m in sub.received("edge-mood/room1/state")]
    for state in states:
        validate(state, "state")
    assert any(s["mood"] == "happy" for s in states) and states[-1]["face_count"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("realtime", [True, False])
def test_the_state_follows_a_settled_face_going_blank_between_events(tmp_path, broker, subscriber, realtime):
    """A happy face goes expressionless (every score about equal, none confident): no event is due, but the
    state Home Assistant reads must not keep the last event's confidence until the face leaves. Read at full
    speed (the frame clock is the file's), as played like a camera."""
    folder = tmp_path / "frames"
    write_images(folder, [Segment(5, None), Segment(15, BRIGHT), Segment(30, 1.5), Segment(10, None)])
    config = write_config(tmp_path, broker, folder, source={"realtime": realtime, "fps": 10.0})
    sub = subscriber(broker, "edge-mood/room1/state", "edge-mood/room1/events")
    result = edge("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    sub.wait_until(lambda got: any(m.json().get("type") == "face_leave" for m in got), 10)
    faces = [f for m in sub.received("edge-mood/room1/state") for f in m.json()["faces"]]
    happy = [f["confidence"] for f in faces if f["expression"] == "happy"]
    assert happy and max(happy) > 0.6 and min(happy) < 0.3, f"the state's confidences: {happy}"


@pytest.mark.slow
def test_results_do_not_depend_on_speed(tmp_path, broker, subscriber):
    """A folder is read frame by frame without drops: two runs give identical events."""
    folder = tmp_path / "frames"
    write_images(folder, SCRIPT[:4])
    config = write_config(tmp_path, broker, folder)
    runs = []
    for _ in range(2):
        sub = subscriber(broker, "edge-mood/room1/events")
        assert edge("run", "--once", "--config", str(config)).returncode == 0
        events = events_of(sub.wait_for(4))
        runs.append([(e["type"], e["expression"], e["frame"]) for e in events])
        sub.close()
    assert runs[0] == runs[1]
    assert [r[:2] for r in runs[0]] == EXPECTED[:4]


@pytest.mark.slow
def test_broker_outage_loses_nothing(tmp_path, broker_factory, subscriber):
    """The broker is killed mid-run and comes back: every event arrives, exactly once after de-duplication
    by seq, in order. The broker keeps the subscriber's session on disk, so what it accepted while the
    subscriber reconnects is not lost on the subscriber's side either."""
    broker = broker_factory(persistent=True)
    folder = tmp_path / "frames"
    cycles = [Segment(12, BRIGHT), Segment(12, None)] * 6
    write_images(folder, cycles)
    config = write_config(
        tmp_path, broker, folder, source={"realtime": True, "fps": 20.0}, tracking={"leave_after_s": 0.2}
    )
    sub = subscriber(broker, "edge-mood/room1/events", persistent=True)
    daemon = start_edge("run", "--once", "--config", str(config))
    sub.wait_for(2, timeout=30)
    broker.stop()
    time.sleep(2.5)  # the daemon keeps analysing and spooling meanwhile
    broker.start()
    output, _ = daemon.communicate(timeout=120)
    assert daemon.returncode == 0, output[-2000:]
    expected_count = 6 * 3  # enter, happy, leave per cycle
    events = deduplicated(
        events_of(sub.wait_until(lambda ms: len({m.json()["seq"] for m in ms}) >= expected_count, timeout=30))
    )
    assert len(events) == expected_count
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + expected_count))
    assert [e["type"] for e in events] == ["face_enter", "expression", "face_leave"] * 6


@pytest.mark.slow
def test_sigkill_during_outage_replays_the_spool(tmp_path, broker, subscriber):
    folder = tmp_path / "frames"
    write_images(folder, SCRIPT[:4])
    config = write_config(tmp_path, broker, folder)
    broker.stop()
    daemon = start_edge("run", "--config", str(config))  # not --once: it waits for the broker forever
    spool = tmp_path / "state" / "room1" / "spool.sqlite3"  # one spool per device id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _spooled(spool) < 4:
        time.sleep(0.3)
    assert _spooled(spool) >= 4, "the daemon did not spool events while the broker was down"
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    broker.start()
    sub = subscriber(broker, "edge-mood/room1/events")
    # Started again on the same folder: the spooled events go out first, then this run's own.
    result = edge("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    events = deduplicated(events_of(sub.wait_for(8)))
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "seq must continue across the restart without gaps"
    assert [(e["type"], e["expression"]) for e in events[:4]] == EXPECTED[:4]


def _spooled(path: Path) -> int:
    import sqlite3

    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_unreachable_broker_at_start_keeps_running_and_spools(tmp_path, broker):
    folder = tmp_path / "frames"
    write_images(folder, SCRIPT[:3])
    config = write_config(tmp_path, broker, folder)
    broker.stop()
    daemon = start_edge("run", "--once", "--config", str(config))
    output, _ = daemon.communicate(timeout=120)
    # --once could not hand its events over: a status of its own, and one line saying how many wait where.
    assert daemon.returncode == 3, output[-2000:]
    assert "unreachable" in output and "Traceback" not in output
    spool = tmp_path / "state" / "room1" / "spool.sqlite3"
    left = _spooled(spool)
    assert left >= 2
    assert f"{left} events not taken by broker {broker.host}:{broker.port} wait in {spool}" in output


def test_corrupt_and_faceless_frames_are_skipped(tmp_path, broker, subscriber):
    folder = tmp_path / "frames"
    write_images(folder, [Segment(4, None), Segment(10, BRIGHT)])
    (folder / "frame_00002.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    sub = subscriber(broker, "edge-mood/room1/events")
    result = edge("run", "--once", "--config", str(write_config(tmp_path, broker, folder)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "frame_00002.jpg" in result.stderr and "Traceback" not in result.stderr
    assert [e["expression"] for e in events_of(sub.wait_for(3))] == [None, "happy", "happy"]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "not found"),
        ("corrupt", "not a valid ONNX model"),
    ],
)
def test_missing_or_corrupt_model_is_one_clear_line(tmp_path, broker, damage, message):
    folder = tmp_path / "frames"
    write_images(folder, [Segment(2, BRIGHT)])
    config = write_config(tmp_path, broker, folder)
    model = tmp_path / "model" / "tiny.onnx"
    if damage == "missing":
        model.unlink()
    else:
        model.write_bytes(b"garbage" * 100)
    result = edge("run", "--once", "--config", str(config))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


@pytest.mark.slow
def test_stats_are_published(tmp_path, broker, subscriber):
    folder = tmp_path / "frames"
    write_images(folder, [Segment(30, BRIGHT)])
    config = write_config(tmp_path, broker, folder, source={"realtime": True, "fps": 15.0})
    sub = subscriber(broker, "edge-mood/room1/stats")
    assert edge("run", "--once", "--config", str(config)).returncode == 0
    stats = sub.wait_for(1)[0].json()
    validate(stats, "stats")
    assert stats["frames"] > 0 and stats["stage_ms"]["classify"] > 0 and stats["detector"] == "yunet"


@pytest.mark.slow
def test_sigterm_closes_the_faces_in_view_publishes_offline_and_exits_0(tmp_path, broker, subscriber):
    folder = tmp_path / "frames"
    write_images(folder, [Segment(200, BRIGHT)])
    config = write_config(tmp_path, broker, folder, source={"realtime": True, "fps": 10.0})
    sub = subscriber(broker, "edge-mood/room1/status")
    events = subscriber(broker, "edge-mood/room1/events")
    daemon = start_edge("run", "--config", str(config))
    sub.wait_until(lambda ms: any(m.text == "online" for m in ms), timeout=30)
    events.wait_until(lambda ms: any(m.json()["type"] == "expression" for m in ms), timeout=30)
    daemon.send_signal(signal.SIGTERM)  # as `systemctl stop` does, the face still in view
    output, _ = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, output[-2000:]
    sub.wait_until(lambda ms: ms[-1].text == "offline", timeout=10)
    assert "Traceback" not in output
    leave = events.wait_until(lambda ms: ms[-1].json()["type"] == "face_leave", timeout=10)[-1].json()
    assert (leave["expression"], leave["frame"]) == ("happy", -1)
    state = subscriber(broker, "edge-mood/room1/state").wait_for(1)[0]
    assert state.retain and state.json()["face_count"] == 0, "the retained state must not keep a face in view"


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch):
    monkeypatch.delenv("EDGE_MOOD_CONFIG", raising=False)
    for name in list(os.environ):
        if name.startswith("EDGE_MOOD_"):
            monkeypatch.delenv(name)
