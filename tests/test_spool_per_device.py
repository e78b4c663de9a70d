"""One spool per device id, and `edge run --once` that says when the broker did not take every event: the
real daemon on the clip shipped in edge/sample (Haar finds its face), a real broker, real spool files."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import load_config
from edge.errors import EXIT_EVENTS_UNSENT
from edge.spool import Spool
from edge.wiring import open_spool, spool_path

CLIP = Path(__file__).resolve().parents[1] / "edge" / "sample" / "astronaut.mp4"
ONE_VISIT = ["face_enter", "expression", "face_leave"]  # what the clip's one face gives


def run_once(state: Path, device: str, broker: str, protocol: str = "5") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "edge", "run", "--once", "--source", str(CLIP), "--broker", broker]
    command += ["--device-id", device, "--set", f"spool.dir={state}", "--set", f"mqtt.protocol={protocol}"]
    command += ["--set", "model.precision=int8"]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def test_each_device_id_has_its_own_spool(tmp_path):
    one = load_config(None, {"spool.dir": str(tmp_path), "mqtt.device_id": "kitchen"})
    other = load_config(None, {"spool.dir": str(tmp_path), "mqtt.device_id": "garage"})
    assert spool_path(one) == tmp_path / "kitchen" / "spool.sqlite3"
    assert spool_path(one) != spool_path(other)


def test_the_spool_of_an_earlier_version_is_taken_over_not_lost(tmp_path):
    with Spool(tmp_path / "spool.sqlite3") as shared:  # where every device id kept its events before
        shared.append({"type": "face_enter"})
        shared.append({"type": "face_leave"})
    config = load_config(None, {"spool.dir": str(tmp_path), "mqtt.device_id": "kitchen"})
    with open_spool(config) as spool:
        assert spool.path == tmp_path / "kitchen" / "spool.sqlite3"
        assert [seq for seq, _ in spool.pending(10)] == [1, 2]
    assert not (tmp_path / "spool.sqlite3").exists()
    garage = load_config(None, {"spool.dir": str(tmp_path), "mqtt.device_id": "garage"})
    with open_spool(garage) as spool:
        assert spool.depth == 0  # taken over once, by the first device that started


@pytest.mark.slow
def test_once_reports_unsent_events_and_another_device_never_replays_them(tmp_path, broker, subscriber):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{probe.getsockname()[1]}"
    state = tmp_path / "state"

    stranded = run_once(state, "kitchen", nobody)
    assert stranded.returncode == EXIT_EVENTS_UNSENT, stranded.stderr[-2000:]
    kitchen_spool = state / "kitchen" / "spool.sqlite3"
    line = f"3 events not taken by broker {nobody} wait in {kitchen_spool}; they are sent first by the next"
    assert line in stranded.stderr and "Traceback" not in stranded.stderr

    sub = subscriber(broker, "edge-mood/+/events")
    at = f"{broker.host}:{broker.port}"
    garage = run_once(state, "garage", at, broker.protocol)
    assert garage.returncode == 0, garage.stderr[-2000:]
    events = [m.json() for m in sub.wait_for(3)]
    assert [(e["device"], e["type"], e["seq"]) for e in events] == [
        ("garage", t, i + 1) for i, t in enumerate(ONE_VISIT)
    ]

    kitchen = run_once(state, "kitchen", at, broker.protocol)
    assert kitchen.returncode == 0, kitchen.stderr[-2000:]
    events = [m.json() for m in sub.wait_for(9)[3:]]
    # The stranded events go first, with their own seqs, then this run's.
    assert [(e["device"], e["seq"]) for e in events] == [("kitchen", seq) for seq in range(1, 7)]
    assert [e["type"] for e in events] == ONE_VISIT * 2
