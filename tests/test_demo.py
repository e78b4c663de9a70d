"""`edge demo` as a new user runs it: a real broker (the test's, or one the demo starts), the real daemon on
the clip shipped in edge/sample (no camera here), its events printed; Ctrl-C ends it cleanly.

No test here needs ../shared: the clip's face is found by the Haar cascade that comes with OpenCV.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.local_broker import answers, local_broker, mosquitto_binary

pytestmark = pytest.mark.slow

DEMO_TIMEOUT_S = 120  # the clip plays for 6 s; the rest is start-up on a busy machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def demo_env(tmp_path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp_path)}


def run_demo(tmp_path, *args: str) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "edge", "demo", *args],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        env=demo_env(tmp_path),
        stdin=subprocess.DEVNULL,
    )
    result.wall_s = time.monotonic() - started  # type: ignore[attr-defined]
    return result


def assert_face_events_printed(stdout: str) -> None:
    """The clip holds one smiling face: it arrives, settles on happy, leaves; then the daemon goes offline."""
    lines = stdout.splitlines()
    enter = [i for i, line in enumerate(lines) if re.search(r" demo +#\d+ face_enter track 1$", line)]
    happy = [i for i, line in enumerate(lines) if re.search(r" demo +#\d+ expression track 1: happy 0\.\d\d$", line)]
    leave = [i for i, line in enumerate(lines) if re.search(r" demo +#\d+ face_leave track 1: happy ", line)]
    offline = [i for i, line in enumerate(lines) if re.search(r" demo +status offline$", line)]
    assert enter and happy and leave and offline, stdout
    assert enter[0] < happy[0] < leave[0] < offline[-1], stdout
    assert not any("track 2" in line for line in lines), "one face in the clip, one track"


def test_demo_with_no_broker_starts_one_and_prints_the_events(tmp_path):
    nobody = free_port()
    result = run_demo(tmp_path, "--broker", f"127.0.0.1:{nobody}")
    assert result.returncode == 0, result.stdout + result.stderr
    started = re.search(r"started (mosquitto|amqtt) on 127\.0\.0\.1:(\d+) for this demo", result.stdout)
    assert started, result.stdout
    assert started.group(1) == ("mosquitto" if mosquitto_binary() else "amqtt")
    assert "playing the built-in clip" in result.stdout and "the clip ended" in result.stdout
    assert_face_events_printed(result.stdout)
    assert "Traceback" not in result.stderr
    assert not answers("127.0.0.1", int(started.group(2))), "the demo's broker outlived it"
    assert not list(tmp_path.glob("edge-demo-*")), "the demo left its spool behind"
    assert result.wall_s < 60  # type: ignore[attr-defined]


def test_demo_uses_a_broker_that_answers(tmp_path, broker, subscriber):
    sub = subscriber(broker, "edge-mood/demo/events", "homeassistant/#")
    result = run_demo(tmp_path, "--broker", f"{broker.host}:{broker.port}", "--set", f"mqtt.protocol={broker.protocol}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"using the MQTT broker at {broker.host}:{broker.port}" in result.stdout
    assert_face_events_printed(result.stdout)
    events = [m.json() for m in sub.wait_for(3, topic="edge-mood/demo/events")]
    assert [e["type"] for e in events] == ["face_enter", "expression", "face_leave"]
    assert sub.received("homeassistant/#") == [], "a demo must not create Home Assistant entities"


def test_ctrl_c_ends_the_demo_cleanly(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "demo", "--broker", f"127.0.0.1:{free_port()}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=demo_env(tmp_path),
    )
    seen = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # until the face is in view and has settled
            seen.append(line)
            if "expression track 1" in line:
                break
        process.send_signal(signal.SIGINT)
        rest, errors = process.communicate(timeout=30)
    finally:
        process.kill()
    stdout = "".join(seen) + rest
    assert process.returncode == 0, stdout + errors
    assert "edge demo: stopped" in stdout
    assert re.search(r"#\d+ face_leave track 1", rest), "the face in view leaves when the demo stops"
    assert "Traceback" not in errors and "KeyboardInterrupt" not in errors


@pytest.mark.skipif(importlib.util.find_spec("amqtt") is None, reason="amqtt not installed")
def test_amqtt_stands_in_where_mosquitto_is_missing(tmp_path):
    with local_broker(tmp_path, kinds=("amqtt",)) as broker:
        assert broker.name == "amqtt" and broker.protocol == "3.1.1"
        received = []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
        client.on_message = lambda _c, _u, msg: received.append(msg.payload)
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            client.subscribe("t/x", qos=1)
            time.sleep(0.3)
            client.publish("t/x", b"hello", qos=1).wait_for_publish(10)
            deadline = time.monotonic() + 10
            while not received and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            client.disconnect()
            client.loop_stop()
        assert received == [b"hello"]
    assert not answers(broker.host, broker.port)
