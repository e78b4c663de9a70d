"""An event's identity (device, epoch, seq) against a real broker: seq never goes backwards, also after the
spool was moved aside; a device that lost its whole state starts a new epoch; and the consumer rule of
docs/reliability.md, written out here, keeps every event once and drops replays."""

from __future__ import annotations

import json
import shutil
import subprocess

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.publisher import MqttSettings, Publisher
from edge.seq_mark import RESERVE_BLOCK, read_mark
from edge.spool import Spool
from tests.mqtt_support import sample_event

DEVICE = "cam1"
EVENTS = f"edge-mood/{DEVICE}/events"


class Consumer:
    """docs/reliability.md: an event is (device, epoch, seq); keep the highest seq per (device, epoch) and
    drop an event whose seq is not above it (a replay)."""

    def __init__(self) -> None:
        self.highest: dict[tuple[str, str], int] = {}
        self.kept: list[dict] = []

    def offer(self, event: dict) -> bool:
        key = (event["device"], event["epoch"])
        if event["seq"] <= self.highest.get(key, 0):
            return False
        self.highest[key] = event["seq"]
        self.kept.append(event)
        return True


def highest_seq_per_device(events: list[dict]) -> list[dict]:
    """The older rule (highest seq per device only), which works as long as seq never goes backwards."""
    highest: dict[str, int] = {}
    kept = []
    for event in events:
        if event["seq"] > highest.get(event["device"], 0):
            highest[event["device"]] = event["seq"]
            kept.append(event)
    return kept


def publish_events(broker, spool_path, frames: range) -> None:
    """One daemon start: open the spool at `spool_path`, publish events for `frames`, wait for the acks, stop."""
    spool = Spool(spool_path)
    settings = MqttSettings(
        host=broker.host, port=broker.port, protocol=broker.protocol, device_id=DEVICE, discovery=False
    )
    publisher = Publisher(settings, spool)
    publisher.start()
    try:
        for i in frames:
            spool.append(sample_event(i))
            publisher.wake()
        assert publisher.wait_drained(20)
    finally:
        publisher.stop()
        spool.close()


def test_seq_goes_on_after_the_spool_is_moved_aside_so_consumers_keep_every_event(broker, subscriber, tmp_path):
    sub = subscriber(broker, EVENTS)
    state = tmp_path / "state"
    publish_events(broker, state / "spool.sqlite3", range(0, 5))
    # What the error line for a corrupt spool tells the user to do.
    subprocess.run(
        f"mkdir {state}/broken-spool && mv {state}/spool.sqlite3* {state}/broken-spool/", shell=True, check=True
    )
    publish_events(broker, state / "spool.sqlite3", range(5, 10))
    events = [m.json() for m in sub.wait_for(10)]
    seqs = [e["seq"] for e in events]
    assert seqs[:5] == [1, 2, 3, 4, 5]
    assert seqs[5] > 5 and seqs[5:] == list(range(seqs[5], seqs[5] + 5))  # never backwards; a jump is fine
    assert seqs[5] <= 5 + RESERVE_BLOCK
    assert len({e["epoch"] for e in events}) == 1  # the same counter: the mark outlived the spool
    consumer = Consumer()
    assert all(consumer.offer(e) for e in events)
    assert [e["frame"] for e in highest_seq_per_device(events)] == list(range(10))


def test_a_lost_state_dir_starts_a_new_epoch_and_the_consumer_tells_a_reset_from_a_replay(broker, subscriber, tmp_path):
    sub = subscriber(broker, EVENTS)
    state = tmp_path / "state"
    publish_events(broker, state / "spool.sqlite3", range(0, 3))
    first = sub.wait_for(3)
    # A replay: the broker or a restarted daemon delivers an event again, byte for byte.
    replayer = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="replay")
    replayer.connect(broker.host, broker.port)
    replayer.loop_start()
    try:
        shutil.rmtree(state)  # SD card replaced, or the state folder wiped: spool and mark are gone
        publish_events(broker, state / "spool.sqlite3", range(3, 6))
        replayer.publish(EVENTS, first[1].payload, qos=1).wait_for_publish(10)
    finally:
        replayer.disconnect()
        replayer.loop_stop()
    events = [m.json() for m in sub.wait_for(7)]
    old, new, replay = events[:3], events[3:6], events[6]
    assert replay == old[1]
    assert [e["seq"] for e in new] == [1, 2, 3]  # nothing could remember the old counter
    assert len({e["epoch"] for e in old}) == 1 and len({e["epoch"] for e in new}) == 1
    assert old[0]["epoch"] != new[0]["epoch"]
    consumer = Consumer()
    assert [consumer.offer(e) for e in events] == [True] * 6 + [False]
    assert [e["frame"] for e in consumer.kept] == list(range(6))
    # Keyed on the device alone, the reset would have cost the three new events.
    assert len(highest_seq_per_device(events)) == 3


def test_the_mark_is_written_before_a_seq_is_handed_out(tmp_path):
    with Spool(tmp_path / "spool.sqlite3") as spool:
        assert not spool.mark_path.exists()  # nothing handed out, nothing to remember
        spool.append({"device": DEVICE})
        mark = read_mark(spool.mark_path)
        assert mark is not None and mark.epoch == spool.epoch and mark.reserved >= spool.last_seq == 1
        assert spool.mark_path.name == "spool.seq"  # `mv spool.sqlite3*` leaves it in place
        body = json.loads(spool.pending(1)[0][1])
        assert list(body)[:3] == ["device", "seq", "epoch"] and body["epoch"] == spool.epoch
        for _ in range(RESERVE_BLOCK):
            spool.append({"device": DEVICE})
        assert read_mark(spool.mark_path).reserved >= spool.last_seq == RESERVE_BLOCK + 1
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_the_spool_keeps_its_epoch_and_seq_when_the_mark_is_lost_or_torn(tmp_path, caplog):
    path = tmp_path / "spool.sqlite3"
    with Spool(path) as spool:
        spool.append({"device": DEVICE})
        epoch = spool.epoch
    spool.mark_path.unlink()
    with Spool(path) as spool:
        assert spool.epoch == epoch and spool.append({"device": DEVICE}) == 2
    spool.mark_path.write_text('{"epoch": "0123')  # torn: cannot happen with the atomic write, but be safe
    with Spool(path) as spool:
        assert spool.epoch == epoch and spool.append({"device": DEVICE}) == 3
    assert "cannot be read" in caplog.text


@pytest.mark.parametrize("spool_name", ["spool.sqlite3", "room1.sqlite3"])
def test_a_fresh_spool_beside_an_old_mark_goes_on_above_it(tmp_path, spool_name):
    path = tmp_path / spool_name
    with Spool(path) as spool:
        for _ in range(3):
            spool.append({"device": DEVICE})
        epoch, reserved = spool.epoch, read_mark(spool.mark_path).reserved
    for leftover in tmp_path.glob(f"{path.name}*"):
        leftover.unlink()
    with Spool(path) as spool:
        assert spool.epoch == epoch
        assert spool.append({"device": DEVICE}) == reserved + 1
