"""`edge tail` (edge.tail.run_tail) against a real broker."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from edge.mqtt_client import BrokerError
from edge.payloads import event_payload, state_payload
from edge.publisher import MqttSettings, Publisher
from edge.spool import Spool
from edge.tail import run_tail
from tests.mqtt_support import wait_until
from tests.test_mqtt_security import tls_broker


def settings(broker, device: str = "cam1", **changes) -> MqttSettings:
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        protocol=broker.protocol,
        device_id=device,
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
        discovery=False,
        **changes,
    )


class TailThread:
    def __init__(self, broker, count: int, **options):
        self.out = io.StringIO()
        self.result: list = []
        self.thread = threading.Thread(target=self._run, args=(broker, count, options), daemon=True)
        self.thread.start()

    def _run(self, broker, count, options):
        device = options.pop("device", "cam1")
        self.result.append(run_tail(settings(broker, device), count=count, out=self.out, **options))

    def lines(self) -> list[str]:
        return self.out.getvalue().splitlines()

    def wait_lines(self, n: int, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.lines()) < n:
            if time.monotonic() > deadline:
                pytest.fail(f"tail printed {self.lines()}")
            time.sleep(0.02)
        return self.lines()


def start_daemon_side(broker, tmp_path, device: str = "cam1") -> Publisher:
    publisher = Publisher(settings(broker, device), Spool(tmp_path / f"{device}.sqlite3"))
    publisher.start()
    faces = [{"track_id": 4, "expression": "happy", "confidence": 0.81, "bbox": (0.1, 0.1, 0.2, 0.2)}]
    publisher.publish_state(state_payload(device=device, ts=time.time(), faces=faces, model="m@1"))
    # The state goes out before any event queued after it, so once this event is acknowledged the
    # broker holds the retained state (no extra subscriber needed, which amqtt would mix in).
    emit(publisher, device, types=("face_enter",))
    assert publisher.wait_drained(20)
    return publisher


def emit(publisher: Publisher, device: str = "cam1", types=("face_enter", "expression")) -> None:
    common = dict(
        device=device,
        frame=10,
        ts=time.time(),
        track_id=4,
        scores={"happy": 0.81, "neutral": 0.19},
        bbox_norm=(0.1, 0.1, 0.2, 0.2),
        model="m@1",
    )
    if "face_enter" in types:
        publisher.spool.append(event_payload(type="face_enter", expression=None, confidence=None, **common))
        publisher.wake()
    if "expression" in types:
        publisher.spool.append(
            event_payload(
                type="expression", expression="happy", confidence=0.81, extra={"previous": "neutral"}, **common
            )
        )
        publisher.wake()


def stop(publisher: Publisher) -> None:
    publisher.stop()
    publisher.spool.close()


def test_prints_one_readable_line_per_message(broker, tmp_path):
    publisher = start_daemon_side(broker, tmp_path)
    try:
        tail = TailThread(broker, count=4)
        tail.wait_lines(2)  # retained status and state: subscribed now
        emit(publisher)
        tail.thread.join(20)
    finally:
        stop(publisher)
    assert tail.result == [0]
    lines = tail.lines()
    assert len(lines) == 4, lines
    assert any(line.split()[1:] == ["cam1", "status", "online", "(retained)"] for line in lines[:2])
    assert any("state 1 face, mood happy 0.81 (happy 1) (retained)" in line for line in lines[:2]), lines
    assert lines[2].split()[1:] == ["cam1", "#2", "face_enter", "track", "4"]
    assert lines[3].endswith("cam1         #3 expression track 4: happy 0.81 (was neutral)")


def test_raw_prints_json_lines_and_all_devices_sees_every_device(broker, tmp_path):
    one, two = start_daemon_side(broker, tmp_path, "cam1"), start_daemon_side(broker, tmp_path, "cam2")
    try:
        tail = TailThread(broker, count=4, raw=True, all_devices=True, kinds=("state", "status"))
        tail.thread.join(20)
    finally:
        stop(one)
        stop(two)
    records = [json.loads(line) for line in tail.lines()]
    assert {(r["topic"], r["retained"]) for r in records} == {
        ("edge-mood/cam1/status", True),
        ("edge-mood/cam1/state", True),
        ("edge-mood/cam2/status", True),
        ("edge-mood/cam2/state", True),
    }
    assert {r["payload"]["face_count"] for r in records if r["topic"].endswith("/state")} == {1}


def test_a_broker_restart_soon_after_connecting_is_not_read_as_a_take_over(broker, tmp_path):
    # Without a login no other client can be given the tail's own id: it reconnects and goes on printing.
    publisher = start_daemon_side(broker, tmp_path)
    try:
        tail = TailThread(broker, count=4)
        tail.wait_lines(2)  # retained status and state
        broker.stop()
        broker.start()
        time.sleep(1.0)  # not a timing assertion: the tail's reconnect within its 0.05-0.5 s back-off
        emit(publisher)
        tail.thread.join(20)
    finally:
        stop(publisher)
    assert tail.result == [0], tail.result


def test_broker_down_is_one_clear_error(broker):
    broker.stop()
    with pytest.raises(BrokerError) as caught:
        run_tail(settings(broker), count=1)
    message = str(caught.value)
    assert f"broker {broker.host}:{broker.port} unreachable" in message and "\n" not in message
    assert caught.value.exit_status == 2


def test_a_broker_that_speaks_tls_while_tls_is_off_is_one_clear_error(broker_factory, pki, capfd):
    """Such a port takes the connection and never answers MQTT: the tail must not wait in silence."""
    broker = tls_broker(broker_factory, pki)
    with pytest.raises(BrokerError, match=r"speaks TLS on port \d+ but mqtt.tls is off; set mqtt.tls = true"):
        run_tail(settings(broker), count=1)
    assert "lost connection" not in capfd.readouterr().err, "a connection that never came up was not lost"


def test_tls_sent_to_a_plain_port_is_one_clear_error(broker):
    """Such a port takes the connection and resets it: the broker is running, and the line must say what is wrong."""
    with pytest.raises(BrokerError, match=r"does not speak TLS on port \d+ but mqtt.tls is on; use the broker's TLS"):
        run_tail(settings(broker, tls=True), count=1)


def test_a_certificate_it_cannot_trust_names_mqtt_tls_ca(broker_factory, pki):
    broker = tls_broker(broker_factory, pki)
    with pytest.raises(BrokerError, match=r"certificate is not trusted .*mqtt.tls_ca must name the CA that signed"):
        run_tail(settings(broker, tls=True), count=1)


def test_losing_the_broker_and_its_return_are_said_on_stderr(broker, capfd):
    done, subscribed = threading.Event(), threading.Event()
    tail = TailThread(broker, count=None, stop=done, subscribed=subscribed)
    err: list[str] = []
    said = lambda text: err.append(capfd.readouterr().err) or text in "".join(err)  # noqa: E731
    try:
        assert subscribed.wait(10), "the tail did not subscribe"
        broker.stop()
        wait_until(lambda: said("edge tail: lost connection to broker"), "the loss")
        broker.start()
        wait_until(lambda: said("edge tail: connected to broker"), "the return")
    finally:
        done.set()
        tail.thread.join(10)
    assert tail.result == [0]


TAIL_PROCESS = """
import sys
from edge.publisher import MqttSettings
from edge.tail import run_tail
sys.exit(run_tail(MqttSettings(host="127.0.0.1", port=int(sys.argv[1]), protocol=sys.argv[2], device_id="cam1")))
"""


def test_ctrl_c_ends_it_with_status_0(broker, tmp_path):
    publisher = start_daemon_side(broker, tmp_path)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", TAIL_PROCESS, str(broker.port), broker.protocol],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = proc.stdout.readline()  # subscribed: Ctrl-C now hits the waiting loop
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)  # generous: the suite runs beside other jobs on two cores
    finally:
        stop(publisher)
    assert "cam1" in first
    assert proc.returncode == 0 and "Traceback" not in err
