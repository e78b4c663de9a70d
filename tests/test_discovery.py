"""Home Assistant MQTT discovery: retained configs as a real broker hands them to a late subscriber."""

from __future__ import annotations

import time

import edge
from edge.discovery import discovery_messages, ha_slug
from edge.payloads import state_payload
from edge.publisher import MqttSettings, Publisher
from edge.spool import Spool
from edge.topics import Topics

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def run_publisher(broker, tmp_path, device: str, **changes) -> Publisher:
    settings = MqttSettings(
        host=broker.host,
        port=broker.port,
        protocol=broker.protocol,
        device_id=device,
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
        **changes,
    )
    publisher = Publisher(
        settings, Spool(tmp_path / f"{device}.sqlite3"), labels=LABELS, model="student_s@0123456789ab"
    )
    publisher.start()
    # The state goes out after the discovery configs on the same connection: once it is retained,
    # the configs are too.
    publisher.publish_state(state_payload(device=device, ts=time.time(), faces=[], model="m"))
    return publisher


def stop(publisher: Publisher) -> None:
    publisher.stop()
    publisher.spool.close()


def test_ha_slug():
    assert ha_slug("Living-Room 2") == "living_room_2"
    assert ha_slug("cam_1") == "cam_1"
    assert ha_slug("--") == "edge_mood"


def test_discovery_configs_are_retained_and_complete(broker, subscriber, tmp_path):
    publisher = run_publisher(broker, tmp_path, "Kitchen-Cam")
    try:
        subscriber(broker, "edge-mood/Kitchen-Cam/state").wait_for(1)
        got = {m.topic: m for m in subscriber(broker, "homeassistant/#").wait_for(2)}
    finally:
        stop(publisher)
    assert set(got) == {"homeassistant/sensor/kitchen_cam_mood/config", "homeassistant/sensor/kitchen_cam_faces/config"}
    assert all(m.retain for m in got.values())
    mood = got["homeassistant/sensor/kitchen_cam_mood/config"].json()
    faces = got["homeassistant/sensor/kitchen_cam_faces/config"].json()
    for config in (mood, faces):
        assert config["state_topic"] == "edge-mood/Kitchen-Cam/state"
        assert config["json_attributes_topic"] == "edge-mood/Kitchen-Cam/state"
        assert config["availability_topic"] == "edge-mood/Kitchen-Cam/status"
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
        assert config["device"]["identifiers"] == ["edge_mood_kitchen_cam"]
        assert config["device"]["name"] == "Kitchen-Cam"
        assert config["device"]["sw_version"] == edge.__version__
        assert config["device"]["hw_version"] == "student_s@0123456789ab"
        assert config["icon"].startswith("mdi:")
        assert not config["name"].startswith("Kitchen")  # Home Assistant prefixes the device name itself
    assert (mood["unique_id"], mood["default_entity_id"]) == ("kitchen_cam_mood", "sensor.kitchen_cam_mood")
    assert (faces["unique_id"], faces["default_entity_id"]) == ("kitchen_cam_faces", "sensor.kitchen_cam_faces")
    assert "value_json.mood" in mood["value_template"]
    assert faces["value_template"] == "{{ value_json.face_count }}"
    assert mood["device_class"] == "enum" and mood["options"] == [*LABELS, "none"]
    assert faces["state_class"] == "measurement"


def test_discovery_can_be_turned_off(broker, subscriber, tmp_path):
    publisher = run_publisher(broker, tmp_path, "cam2", discovery=False)
    try:
        subscriber(broker, "edge-mood/cam2/state").wait_for(1)
        late = subscriber(broker, "homeassistant/#", "edge-mood/cam2/status")
        late.wait_for(1, topic="edge-mood/cam2/status")  # retained messages arrive together after subscribing
        time.sleep(0.2)  # not a timing assertion: room for a stray config to arrive
        assert late.received("homeassistant/#") == []
    finally:
        stop(publisher)


def test_discovery_prefix_is_configurable():
    topics = [t for t, _ in discovery_messages(Topics("edge-mood", "cam"), discovery_prefix="ha")]
    assert topics == ["ha/sensor/cam_mood/config", "ha/sensor/cam_faces/config"]


def test_without_labels_the_mood_sensor_is_free_text():
    (_, mood), _ = discovery_messages(Topics("edge-mood", "cam"))
    assert "device_class" not in mood and "options" not in mood
