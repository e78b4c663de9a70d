"""The publisher against a real broker: order, outages, crashes, last will, state, bounds, MQTT 3.1.1."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from edge.payloads import state_payload
from edge.publisher import MqttSettings
from edge.spool import Spool
from tests.mqtt_support import sample_event, wait_until

DEVICE = "cam1"
EVENTS = f"edge-mood/{DEVICE}/events"
STATUS = f"edge-mood/{DEVICE}/status"
STATE = f"edge-mood/{DEVICE}/state"


def seqs(messages) -> list[int]:
    return [m.json()["seq"] for m in messages]


def first_seen(values: list[int]) -> list[int]:
    """De-duplicate as a consumer does: keep the first message of each seq."""
    seen: set[int] = set()
    return [v for v in values if not (v in seen or seen.add(v))]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_events_arrive_once_in_order_with_qos1(broker, subscriber, make_publisher, protocol):
    if protocol == "5" and broker.protocol != "5":
        pytest.skip(f"{broker.kind} speaks MQTT 3.1.1 only")
    sub = subscriber(broker, EVENTS)
    publisher = make_publisher(broker, protocol=protocol)
    for i in range(40):
        publisher.spool.append(sample_event(i))
        publisher.wake()
    got = sub.wait_for(40)
    assert seqs(got) == list(range(1, 41))
    assert {m.qos for m in got} == {1}
    assert [m.json()["frame"] for m in got] == list(range(40))
    assert publisher.wait_drained(20)
    assert publisher.spool.depth == 0 and publisher.in_flight == 0
    time.sleep(0.3)  # not a timing assertion: gives a duplicate the chance to show up
    assert len(sub.received()) == 40


def test_broker_killed_mid_stream_every_event_arrives_once_after_dedup_in_order(
    broker_factory, subscriber, make_publisher
):
    # A persistent broker and session, so the subscriber misses nothing while both reconnect. The broker is
    # stopped with SIGTERM: the publisher still loses its connection with events in flight, and the broker
    # keeps what it acknowledged. (After a SIGKILL, mosquitto loses messages it acknowledged but had not yet
    # saved or delivered; that is the broker's durability, not ours, and a loaded machine widens the window.)
    broker = broker_factory(persistent=True)
    sub = subscriber(broker, EVENTS, persistent=True)
    publisher = make_publisher(broker)
    total = 200

    def pipeline() -> None:  # bursts, so that events are in flight when the broker dies
        for i in range(total):
            publisher.spool.append(sample_event(i))
            if i % 50 == 49:
                publisher.wake()
                time.sleep(0.1)
        publisher.wake()

    producer = threading.Thread(target=pipeline)
    producer.start()
    sub.wait_for(25)  # in the middle of the first burst
    broker.stop(crash=False)
    outage_depth = publisher.spool.depth
    wait_until(lambda: publisher.spool.depth >= outage_depth + 15, "events spooling during the outage")
    broker.start()
    producer.join(60)
    got = sub.wait_until(lambda got: set(range(1, total + 1)) <= set(seqs(got)), timeout=40)
    assert first_seen(seqs(got)) == list(range(1, total + 1))
    assert publisher.wait_drained(20)
    assert publisher.spool.depth == 0


def test_an_event_that_gets_the_online_messages_id_after_the_ids_wrap_is_acknowledged(
    broker, subscriber, make_publisher
):
    # MQTT message ids wrap at 65535: about every two weeks at the daemon's rate. The event that is handed the
    # id the "online" status had must still leave the spool when the broker acknowledges it. (65,535 real
    # publishes would reach the wrap too; paho's counter is set just before it instead.)
    sub = subscriber(broker, "edge-mood/cam1/events")
    device = make_publisher(broker)
    wait_until(lambda: device.connected, "the device's connection")
    device.spool.append(sample_event(0))
    device.wake()
    assert device.wait_drained(20)
    device._client._last_mid = 65535  # the next id is 1, the online status's: the connection's first message
    device.spool.append(sample_event(1))
    device.wake()
    assert sub.wait_for(2)[1].json()["seq"] == 2
    assert device.wait_drained(10), f"event seq 2 still waiting: depth {device.spool.depth}"


def test_seq_continues_after_the_publisher_and_spool_are_reopened(broker, subscriber, make_publisher, tmp_path):
    sub = subscriber(broker, EVENTS)
    first = make_publisher(broker, spool=Spool(tmp_path / "spool.sqlite3"))
    for i in range(3):
        first.spool.append(sample_event(i))
        first.wake()
    assert first.wait_drained(20)
    first.stop()
    first.spool.close()
    second = make_publisher(broker, spool=Spool(tmp_path / "spool.sqlite3"))
    for i in range(3):
        second.spool.append(sample_event(i))
        second.wake()
    assert seqs(sub.wait_for(6)) == [1, 2, 3, 4, 5, 6]


def test_a_broker_restart_is_two_lines_lost_and_back(broker_factory, make_publisher, caplog):
    """A flapping broker or Wi-Fi must not fill the journal: the loss and the return, one line each."""
    broker = broker_factory()
    publisher = make_publisher(broker)
    wait_until(lambda: publisher.connected, "the first connection")
    caplog.set_level(logging.DEBUG, logger="edge")
    broker.stop()
    retries = lambda: sum("Connection failed, retrying" in r.getMessage() for r in caplog.records)  # noqa: E731
    wait_until(lambda: retries() >= 2, "two failed reconnection attempts")
    publisher.spool.append(sample_event(0))  # an event spooled meanwhile
    broker.start()
    wait_until(lambda: publisher.connected and publisher.spool.depth == 0, "the broker back, the event sent")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and r.name == "edge.publisher"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("lost connection") and "again after" in lines[1] and "1 events spooled" in lines[1]


def test_unreachable_broker_at_start_does_not_raise_and_spools(broker_factory, subscriber, make_publisher, caplog):
    broker = broker_factory(persistent=True)
    sub = subscriber(broker, EVENTS, persistent=True)
    broker.stop(crash=False)  # a clean stop saves the new session; a SIGKILL can beat mosquitto's autosave
    caplog.set_level(logging.DEBUG, logger="edge")
    publisher = make_publisher(broker)  # start() must not raise
    for i in range(5):
        publisher.spool.append(sample_event(i))
        publisher.wake()
    retries = lambda: sum("Connection failed, retrying" in r.getMessage() for r in caplog.records)  # noqa: E731
    wait_until(lambda: retries() >= 3, "three failed connection attempts")
    assert publisher.spool.depth == 5 and not publisher.connected
    unreachable = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert unreachable == [
        f"broker {broker.host}:{broker.port} unreachable (Connection refused); spooling events and retrying"
    ]
    broker.start()
    assert seqs(sub.wait_for(5)) == [1, 2, 3, 4, 5]
    assert publisher.wait_drained(20)
    again = [r.getMessage() for r in caplog.records if "connected to broker" in r.getMessage()]
    assert len(again) == 1 and "again after" in again[0]


def test_spool_bound_during_an_outage_drops_the_oldest_counts_and_warns_once(
    broker_factory, subscriber, make_publisher, tmp_path, caplog
):
    broker = broker_factory(persistent=True)
    sub = subscriber(broker, EVENTS, persistent=True)
    broker.stop(crash=False)  # a clean stop saves the new session; a SIGKILL can beat mosquitto's autosave
    spool = Spool(tmp_path / "spool.sqlite3", max_events=5)
    publisher = make_publisher(broker, spool=spool)
    for i in range(12):
        publisher.spool.append(sample_event(i))
        publisher.wake()
    assert [s for s, _ in spool.pending(100)] == [8, 9, 10, 11, 12]
    assert spool.dropped == 7
    warned = lambda: [r for r in caplog.records if "spool bound reached" in r.getMessage()]  # noqa: E731
    wait_until(lambda: warned(), "the spool-full warning")
    for i in range(3):
        publisher.spool.append(sample_event(i))
        publisher.wake()
    wait_until(lambda: publisher._dropped_seen == 10, "the publisher to see the new drops")
    assert len(warned()) == 1 and warned()[0].levelno == logging.WARNING
    broker.start()
    assert seqs(sub.wait_for(5)) == [11, 12, 13, 14, 15]  # the gap tells consumers what was dropped


def test_latest_state_is_retained_once_connected_and_older_ones_are_not_sent(broker, subscriber, make_publisher):
    broker.stop()
    publisher = make_publisher(broker)
    for count in (1, 2, 3):
        faces = [
            {"track_id": i, "expression": "sad", "confidence": 0.7, "bbox": (0.1, 0.1, 0.1, 0.1)} for i in range(count)
        ]
        publisher.publish_state(state_payload(device=DEVICE, ts=time.time(), faces=faces, model="m"))
    assert not publisher.publish_stats({"schema": 1})  # stats of an outage are not kept
    broker.start()
    wait_until(lambda: publisher.connected, "the connection")
    sub = subscriber(broker, STATE)
    got = sub.wait_for(1)
    assert got[0].json()["face_count"] == 3
    time.sleep(0.3)  # not a timing assertion: gives an older state the chance to show up
    assert {m.json()["face_count"] for m in sub.received()} == {3}


def test_clean_stop_sends_the_last_state_and_leaves_offline_retained(broker, subscriber, make_publisher):
    publisher = make_publisher(broker)
    wait_until(lambda: publisher.connected, "the connection")
    publisher.publish_state(state_payload(device=DEVICE, ts=time.time(), faces=[], model="m"))
    publisher.stop()
    got = subscriber(broker, STATUS).wait_for(1)
    assert got[0].text == "offline" and got[0].retain
    state = subscriber(broker, STATE).wait_for(1)
    assert state[0].json()["face_count"] == 0 and state[0].retain


def test_events_spooled_just_before_a_clean_stop_are_sent_by_it(broker, subscriber, make_publisher):
    events = subscriber(broker, EVENTS)
    publisher = make_publisher(broker)
    wait_until(lambda: publisher.connected, "the connection")
    for i in range(3):  # as the daemon's last step spools a face_leave for each face in view
        publisher.spool.append(sample_event(i))
    publisher.wake()
    publisher.publish_state(state_payload(device=DEVICE, ts=time.time(), faces=[], model="m"))
    publisher.stop()
    assert [m.json()["seq"] for m in events.wait_for(3)] == [1, 2, 3]
    assert publisher.spool.depth == 0


PUBLISHER_PROCESS = """
import sys, time
from pathlib import Path
from edge.payloads import event_payload
from edge.publisher import MqttSettings, Publisher
from edge.spool import Spool

port, spool_path, protocol, mode, count = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
spool = Spool(Path(spool_path))
publisher = Publisher(MqttSettings(host="127.0.0.1", port=port, protocol=protocol, device_id="cam1",
                                   reconnect_min_s=0.05, reconnect_max_s=0.5, discovery=False), spool)
publisher.start()
for i in range(count):
    publisher.spool.append(event_payload(device="cam1", type="face_enter", frame=i, ts=time.time(), track_id=i,
                                         expression=None, confidence=None, scores={"happy": 0.5, "sad": 0.5},
                                         bbox_norm=(0.1, 0.1, 0.2, 0.2), model="m@1"))
    publisher.wake()
if mode == "connected":
    while not publisher.connected:
        time.sleep(0.02)
if mode == "drain":
    drained = publisher.wait_drained(30)
    publisher.stop()
    print("drained" if drained else f"left {spool.depth}", flush=True)
    sys.exit(0)
print(mode, flush=True)
time.sleep(120)
"""


def run_publisher_process(tmp_path, broker, mode: str, count: int) -> subprocess.Popen:
    script = tmp_path / "publisher_process.py"
    script.write_text(PUBLISHER_PROCESS)
    return subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(broker.port),
            str(tmp_path / "spool.sqlite3"),
            broker.protocol,
            mode,
            str(count),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_last_will_offline_is_retained_after_sigkill(broker, subscriber, tmp_path):
    sub = subscriber(broker, STATUS)
    proc = run_publisher_process(tmp_path, broker, "connected", 0)
    try:
        assert proc.stdout.readline().strip() == "connected"
        sub.wait_until(lambda got: [m.text for m in got] == ["online"])
    finally:
        sigkill(proc)
    sub.wait_until(lambda got: [m.text for m in got] == ["online", "offline"])  # sent by the broker
    late = subscriber(broker, STATUS).wait_for(1)
    assert late[0].text == "offline" and late[0].retain


def test_process_sigkilled_during_an_outage_replays_its_spool_on_start(broker_factory, subscriber, tmp_path):
    broker = broker_factory(persistent=True)
    sub = subscriber(broker, EVENTS, persistent=True)
    broker.stop(crash=False)  # a clean stop saves the new session; a SIGKILL can beat mosquitto's autosave
    proc = run_publisher_process(tmp_path, broker, "spooled", 25)
    try:
        assert proc.stdout.readline().strip() == "spooled"
    finally:
        sigkill(proc)
    broker.start()
    proc = run_publisher_process(tmp_path, broker, "drain", 0)
    out, _ = proc.communicate(timeout=60)
    assert out.strip() == "drained"
    assert seqs(sub.wait_for(25)) == list(range(1, 26))
    with Spool(tmp_path / "spool.sqlite3") as spool:
        assert spool.depth == 0 and spool.last_seq == 25


def test_settings_never_show_the_password():
    settings = MqttSettings(device_id=DEVICE, username="edge", password="hunter2-secret")
    assert "hunter2-secret" not in repr(settings) and "***" in repr(settings)
    assert "hunter2-secret" not in settings.description
    assert "password=None" in repr(MqttSettings(device_id=DEVICE))
