"""Nobody else on the broker can disturb a device: the shipped mosquitto ACL and per-device logins
(docs/mosquitto/) against a real mosquitto, both documented ways of removing a device, and a session
take-over (another client with the daemon's client id) detected and logged once with the fix."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.discovery import HomeAssistantOptions, discovery_messages, node_id
from edge.mqtt_client import BrokerError
from edge.publisher import TAKEOVER_DROPS, MqttSettings, Publisher
from edge.spool import Spool
from edge.tail import run_tail
from edge.topics import Topics
from tests.mqtt_support import sample_event, wait_until

DOCS = Path(__file__).resolve().parents[1] / "docs" / "mosquitto"
LOGINS = {"cam1": "pw-cam1", "cam2": "pw-cam2", "consumer": "pw-consumer", "homeassistant": "pw-ha"}
LABELS = ["happy", "sad"]


def acl_broker(broker_factory, tmp_path: Path, devices: tuple[str, ...]):
    """mosquitto with docs/mosquitto/edge-mood.conf and a copy of edge-mood.acl, the consumer logins made
    by the fixture and each device added by add-device.sh, as the docs tell; then reloaded (SIGHUP)."""
    acl = tmp_path / "edge-mood.acl"
    shutil.copy(DOCS / "edge-mood.acl", acl)
    settings = []
    for line in (DOCS / "edge-mood.conf").read_text().splitlines():
        key = line.split(" ", 1)[0]
        if not line or line.startswith("#") or key in ("password_file", "allow_anonymous", "listener"):
            continue  # the fixture sets these (its own password file, its listener on a free port)
        settings.append(f"acl_file {acl}" if key == "acl_file" else line)
    assert f"acl_file {acl}" in settings and "use_username_as_clientid true" in settings
    consumers = {name: LOGINS[name] for name in ("consumer", "homeassistant")}
    broker = broker_factory(users=consumers, extra_config=tuple(settings))
    for device in devices:
        added = subprocess.run(
            [str(DOCS / "add-device.sh"), device],
            env={
                **os.environ,
                "MOSQUITTO_PASSWD_FILE": str(broker.workdir / "passwd"),
                "MOSQUITTO_ACL_FILE": str(acl),
                "EDGE_MOOD_DEVICE_PASSWORD": LOGINS[device],
            },
            capture_output=True,
            text=True,
        )
        assert added.returncode == 0, added.stderr
    os.kill(broker.process.pid, signal.SIGHUP)
    time.sleep(0.5)  # mosquitto reloads between two network loops
    return broker


def test_with_an_older_write_only_acl_an_entity_switched_off_is_still_removed(broker_factory, subscriber, tmp_path):
    """An ACL block from an older add-device.sh lets the device write its configs but not read them back, so
    the daemon cannot see what the broker holds: what it knows it switched off it clears anyway."""
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd not found (apt install mosquitto)")
    broker = acl_broker(broker_factory, tmp_path, devices=("cam1",))
    acl = tmp_path / "edge-mood.acl"
    acl.write_text(acl.read_text().replace("topic readwrite homeassistant/", "topic write homeassistant/"))
    os.kill(broker.process.pid, signal.SIGHUP)
    time.sleep(0.5)  # mosquitto reloads between two network loops
    settings = MqttSettings(
        host=broker.host, port=broker.port, protocol=broker.protocol, device_id="cam1", username="cam1",
        password=LOGINS["cam1"], reconnect_min_s=0.05, reconnect_max_s=0.5,
    )  # fmt: skip
    ha = ("homeassistant", LOGINS["homeassistant"])
    memory = Topics("edge-mood", "cam1")
    memory_topic = f"homeassistant/sensor/{node_id(memory)}/rss_mb/config"

    def run(options: HomeAssistantOptions) -> None:
        publisher = Publisher(settings, Spool(tmp_path / "spool.sqlite3"), labels=LABELS, home_assistant=options)
        publisher.start()
        try:
            wait_until(lambda: publisher.connected, "the device connected")
            time.sleep(0.5)  # not a timing assertion: room for its configs
        finally:
            publisher.stop(timeout=2)
            publisher.spool.close()

    def held() -> set[str]:
        late = subscriber(broker, "homeassistant/#", username=ha[0], password=ha[1])
        time.sleep(0.5)  # not a timing assertion: the retained ones arrive at once
        return {m.topic for m in late.received() if m.payload and m.retain}

    run(HomeAssistantOptions())
    assert memory_topic in held()
    run(HomeAssistantOptions(diagnostics=("fps",)))
    assert memory_topic not in held()


def test_use_username_as_clientid_follows_a_listener_in_the_shipped_config():
    # mosquitto applies it to the listener defined before it; above every listener it opens a listener on
    # 1883 of its own, which fails where the devices' listener is 1883, and leaves the others unprotected.
    lines = [line.split()[0] for line in (DOCS / "edge-mood.conf").read_text().splitlines() if line[:1].isalpha()]
    assert "use_username_as_clientid" in lines and "listener" in lines[: lines.index("use_username_as_clientid")]


@pytest.mark.parametrize("device", ["livingroom", "Pi-Kitchen", "pi--2_", "-_-"])
def test_add_device_lets_each_device_id_write_the_discovery_topics_the_daemon_uses(tmp_path, device):
    # Any id the installer makes of a host name; the ACL line must name the daemon's own node id.
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd not found (apt install mosquitto)")
    acl = tmp_path / "edge-mood.acl"
    shutil.copy(DOCS / "edge-mood.acl", acl)
    env = {**os.environ, "MOSQUITTO_PASSWD_FILE": str(tmp_path / "passwd"), "MOSQUITTO_ACL_FILE": str(acl)}
    added = subprocess.run(
        [str(DOCS / "add-device.sh"), device], env={**env, "EDGE_MOOD_DEVICE_PASSWORD": "pw"}, capture_output=True
    )
    assert added.returncode == 0, added.stderr
    node = node_id(Topics("edge-mood", device))
    block = [f"user {device}", f"topic readwrite homeassistant/+/{node}/+/config"]
    assert acl.read_text().splitlines()[-2:] == block
    # Run again over the block an earlier version wrote (write only): it is made readwrite, not doubled.
    acl.write_text(acl.read_text().replace("topic readwrite homeassistant/+/", "topic write homeassistant/+/"))
    again = subprocess.run(
        [str(DOCS / "add-device.sh"), device], env={**env, "EDGE_MOOD_DEVICE_PASSWORD": "pw2"}, capture_output=True
    )
    assert again.returncode == 0, again.stderr
    assert acl.read_text().splitlines()[-2:] == block and acl.read_text().splitlines().count(f"user {device}") == 1


def client(broker, client_id: str, username: str | None = None, protocol: str = "5") -> mqtt.Client:
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
    )
    if username:
        c.username_pw_set(username, LOGINS[username])
    connected = threading.Event()
    c.on_connect = lambda *args: connected.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert connected.wait(10)
    return c


def test_with_the_shipped_acl_a_device_writes_only_its_own_topics_and_no_one_else_can(
    broker_factory, subscriber, make_publisher, caplog, tmp_path
):
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd not found (apt install mosquitto)")
    broker = acl_broker(broker_factory, tmp_path, devices=("cam1", "cam2"))
    ha = LOGINS["homeassistant"]
    sub = subscriber(broker, "edge-mood/#", "homeassistant/#", username="homeassistant", password=ha)
    caplog.set_level(logging.INFO, logger="edge")
    device = make_publisher(broker, labels=LABELS, username="cam1", password=LOGINS["cam1"], discovery=True)
    device.spool.append(sample_event(0))
    device.wake()
    assert device.wait_drained(20)
    # Everything the device publishes gets through: events, status, and the discovery configs.
    sub.wait_for(1, topic="edge-mood/cam1/events")
    sub.wait_until(lambda ms: [m.text for m in ms] == ["online"], topic="edge-mood/cam1/status")
    configs = {topic for topic, payload in device._discovery if payload}  # what the publisher sends, retired ones aside
    assert {topic for topic, _ in discovery_messages(device.topics, labels=LABELS)} <= configs
    sub.wait_until(lambda ms: {m.topic for m in ms if m.payload} == configs, topic="homeassistant/#")
    device.publish_state({"schema": 1, "device": "cam1", "faces": []})
    sub.wait_for(1, topic="edge-mood/cam1/state")
    assert "refused" not in caplog.text
    # The device may read Home Assistant's birth message, which makes it send the configs again. (Sent by
    # the subscriber itself: a second client on the homeassistant login would take over its session.)
    sub.client.publish("homeassistant/status", "online", qos=1).wait_for_publish(10)
    wait_until(lambda: "discovery configs sent again" in caplog.text, "the configs sent again")

    # Another device's login, even asking for cam1's client id, and a consumer's login cannot write there.
    forged = json.dumps({**sample_event(99), "seq": 999999, "epoch": "0123456789ab"})
    intruders = [client(broker, "edge-mood-cam1", "cam2"), client(broker, "sneaky", "consumer")]
    for intruder in intruders:
        intruder.publish("edge-mood/cam1/events", forged, qos=1).wait_for_publish(10)
        intruder.publish("edge-mood/cam1/status", "offline", qos=1, retain=True).wait_for_publish(10)
    device.spool.append(sample_event(1))
    device.wake()
    assert device.wait_drained(20)
    events = [m.json() for m in sub.wait_for(2, topic="edge-mood/cam1/events")]
    time.sleep(0.5)  # not a timing assertion: gives a forged message the chance to show up
    assert [e["seq"] for e in events] == [1, 2]
    assert len(sub.received("edge-mood/cam1/events")) == 2
    assert [m.text for m in sub.received("edge-mood/cam1/status")] == ["online"]
    # use_username_as_clientid: cam2 asking for "edge-mood-cam1" did not push the device off.
    assert device.connected and "take-over" not in caplog.text and "lost connection" not in caplog.text
    for intruder in intruders:
        intruder.disconnect()
        intruder.loop_stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_session_take_over_is_logged_once_with_the_fix(broker, subscriber, make_publisher, caplog, protocol):
    if protocol == "5" and broker.protocol != "5":
        pytest.skip(f"{broker.kind} speaks MQTT 3.1.1 only")
    sub = subscriber(broker, "edge-mood/cam1/events")
    caplog.set_level(logging.INFO, logger="edge")
    device = make_publisher(broker, protocol=protocol)
    wait_until(lambda: device.connected, "the device's connection")
    # A second client with the same id that reconnects by itself, as a second camera with the same
    # device id would: the two push each other off again and again.
    rogue = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=device.settings.daemon_client_id,
        protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
    )
    rogue.reconnect_delay_set(0.2, 0.2)
    drops = []
    rogue.on_disconnect = lambda *args: drops.append(time.monotonic())
    rogue.connect(broker.host, broker.port)
    rogue.loop_start()
    try:
        wait_until(lambda: len(drops) >= 2 * TAKEOVER_DROPS, "the two clients to push each other off")
    finally:
        rogue.disconnect()
        rogue.loop_stop()
    takeovers = [r for r in caplog.records if "take-over" in r.getMessage()]
    assert len(takeovers) == 1 and takeovers[0].levelno == logging.ERROR
    line = takeovers[0].getMessage()
    assert "edge-mood-cam1" in line and "mqtt.device_id" in line and "ACL" in line
    if protocol == "3.1.1":  # no reason given: a broker restarting again and again looks the same
        assert "or the broker keeps restarting" in line
    # Until the take-over is recognised, the first drops look like ordinary outages (a broker that names
    # the reason, MQTT 5 "Session taken over", is recognised at the first).
    lost = [r for r in caplog.records if "lost connection" in r.getMessage()]
    assert len(lost) <= TAKEOVER_DROPS - 1
    # Once the other client is gone, the device is back and publishing.
    wait_until(lambda: device.connected, "the device's connection after the take-overs")
    device.spool.append(sample_event(0))
    device.wake()
    assert sub.wait_for(1)[0].json()["seq"] == 1


def stopped_devices_with_configs(broker_factory, subscriber, make_publisher, tmp_path):
    """A broker with the shipped ACL on which the daemons cam1 and cam2 left their discovery configs and
    stopped, as the docs ask before removing a device; and {device: its config topics}."""
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd not found (apt install mosquitto)")
    broker = acl_broker(broker_factory, tmp_path, devices=("cam1", "cam2"))
    sub = subscriber(broker, "homeassistant/#", username="homeassistant", password=LOGINS["homeassistant"])
    mine: dict[str, set[str]] = {}
    for name in ("cam1", "cam2"):
        device = make_publisher(
            broker, labels=LABELS, device_id=name, username=name, password=LOGINS[name], discovery=True
        )
        configs = mine[name] = {topic for topic, payload in device._discovery if payload}
        sub.wait_until(lambda ms, configs=configs: configs <= {m.topic for m in ms if m.payload})
        device.stop(timeout=2)  # its login is also its client id: nothing else may use it while it runs
    sub.close()
    assert set(retained_configs(broker, subscriber)) == mine["cam1"] | mine["cam2"]
    return broker, mine


def retained_configs(broker, subscriber) -> dict[str, bytes]:
    """The discovery configs retained on the broker now, as a fresh Home Assistant login sees them."""
    sub = subscriber(broker, "homeassistant/+/+/+/config", username="homeassistant", password=LOGINS["homeassistant"])
    time.sleep(1.0)  # not a timing assertion: the broker sends the retained ones right after subscribing
    sub.close()  # one client per login at a time (use_username_as_clientid)
    return {m.topic: m.payload for m in sub.received() if m.retain}


def test_with_the_shipped_acl_deleting_a_device_in_home_assistant_clears_its_configs_and_no_one_else_can(
    broker_factory, subscriber, make_publisher, tmp_path
):
    broker, mine = stopped_devices_with_configs(broker_factory, subscriber, make_publisher, tmp_path)
    every = mine["cam1"] | mine["cam2"]
    for login in ("cam2", "consumer"):
        intruder = client(broker, f"sneaky-{login}", login)
        for topic in mine["cam1"]:
            intruder.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        intruder.disconnect()
        intruder.loop_stop()
    assert set(retained_configs(broker, subscriber)) == every
    # What Home Assistant does when a user deletes the device: an empty retained config on each topic.
    ha = client(broker, "homeassistant", "homeassistant")
    for topic in mine["cam1"]:
        ha.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    ha.disconnect()
    ha.loop_stop()
    assert set(retained_configs(broker, subscriber)) == mine["cam2"]


def test_with_the_shipped_acl_the_documented_command_clears_a_stopped_devices_configs_with_its_login(
    broker_factory, subscriber, make_publisher, tmp_path
):
    if not shutil.which("mosquitto_sub"):
        pytest.skip("mosquitto_sub not found (apt install mosquitto-clients)")
    broker, mine = stopped_devices_with_configs(broker_factory, subscriber, make_publisher, tmp_path)
    cam1_node = next(iter(mine["cam1"])).split("/")[2]

    def remove_retained(login: str) -> None:  # docs/home-assistant.md, "To remove a device for good"
        subprocess.run(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-u", login, "-P", LOGINS[login]]
            + ["-t", f"homeassistant/+/{cam1_node}/+/config", "--remove-retained", "-W", "2"],
            capture_output=True,
            timeout=20,
        )

    remove_retained("cam2")  # another device's login cannot
    assert set(retained_configs(broker, subscriber)) == mine["cam1"] | mine["cam2"]
    remove_retained("cam1")
    assert set(retained_configs(broker, subscriber)) == mine["cam2"]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_edge_tail_on_a_devices_login_stops_with_the_fix_and_leaves_the_daemon_connected(
    broker_factory, make_publisher, caplog, tmp_path, protocol
):
    # With use_username_as_clientid the device's login is the daemon's client id: `edge tail --config <the
    # device's config>` pushes the daemon off, and must stop soon with the fix, not push it off again and
    # again (nor wait for messages its login may not read).
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd not found (apt install mosquitto)")
    broker = acl_broker(broker_factory, tmp_path, devices=("cam1",))
    caplog.set_level(logging.INFO, logger="edge")
    device = make_publisher(broker, username="cam1", password=LOGINS["cam1"], protocol=protocol)
    wait_until(lambda: device.connected, "the device's connection")
    tail_settings = MqttSettings(
        host=broker.host,
        port=broker.port,
        protocol=protocol,
        device_id="cam1",
        username="cam1",
        password=LOGINS["cam1"],
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
        discovery=False,
    )
    outcome: list = []
    stop = threading.Event()

    def tail() -> None:
        try:
            outcome.append(run_tail(tail_settings, stop=stop))
        except BrokerError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=tail, daemon=True)
    thread.start()
    thread.join(10)
    stop.set()
    thread.join(5)
    assert outcome and isinstance(outcome[0], BrokerError), f"the tail kept waiting ({outcome})"
    line = str(outcome[0])
    assert "took its session" in line and "login 'cam1'" in line and "mqtt.username=consumer" in line
    wait_until(lambda: device.connected, "the device's connection after the tail")
    time.sleep(1.0)  # not a timing assertion: a tail still trying would push the device off in this second
    assert device.connected and "take-over" not in caplog.text
