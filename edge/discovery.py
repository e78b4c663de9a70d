"""Home Assistant MQTT discovery: retained configs that make a "Mood" and a "Faces" sensor appear for
each device, fed by the retained state topic and marked unavailable through the status topic.

Field names follow https://www.home-assistant.io/integrations/sensor.mqtt/ (MQTT discovery). The entity
id is set with `default_entity_id` ("sensor.<id>"), which replaced `object_id` in Home Assistant 2025.10.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import edge
from edge.topics import OFFLINE, ONLINE, Topics

MANUFACTURER = "edge-mood"
NO_MOOD = "none"  # the mood sensor's state while no face has a settled expression


def ha_slug(text: str) -> str:
    """'Living-Room 2' -> 'living_room_2': the characters Home Assistant allows in entity ids."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "edge_mood"


def discovery_messages(
    topics: Topics, *, discovery_prefix: str = "homeassistant", labels: Sequence[str] = (), model: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(topic, config) pairs to publish retained on every connect.

    `labels` (the model's expressions) turns the mood sensor into an enum sensor, so automations can
    pick a mood from a list; `model` (the model id) is shown as the device's hardware version.
    """
    slug = ha_slug(topics.device)
    device: dict[str, Any] = {
        "identifiers": [f"edge_mood_{slug}"],
        "name": topics.device,
        "manufacturer": MANUFACTURER,
        "model": "edge-mood camera",
        "sw_version": edge.__version__,
    }
    if model:
        device["hw_version"] = model
    common = {
        "device": device,
        "origin": {"name": "edge-mood", "sw_version": edge.__version__},
        "state_topic": topics.state,
        "json_attributes_topic": topics.state,
        "availability_topic": topics.status,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "qos": 1,
    }
    mood: dict[str, Any] = {
        **common,
        "name": "Mood",
        "unique_id": f"{slug}_mood",
        "default_entity_id": f"sensor.{slug}_mood",
        "icon": "mdi:emoticon-outline",
        "value_template": f"{{{{ value_json.mood if value_json.mood else '{NO_MOOD}' }}}}",
        "json_attributes_template": "{{ {'mood_confidence': value_json.mood_confidence, "
        "'counts': value_json.counts, 'face_count': value_json.face_count} | tojson }}",
    }
    if labels:
        mood["device_class"] = "enum"
        mood["options"] = [*labels, NO_MOOD]
    faces = {
        **common,
        "name": "Faces",
        "unique_id": f"{slug}_faces",
        "default_entity_id": f"sensor.{slug}_faces",
        "icon": "mdi:account-group",
        "value_template": "{{ value_json.face_count }}",
        "state_class": "measurement",
        "unit_of_measurement": "faces",
        "json_attributes_template": "{{ {'counts': value_json.counts} | tojson }}",
    }
    return [
        (f"{discovery_prefix}/sensor/{slug}_mood/config", mood),
        (f"{discovery_prefix}/sensor/{slug}_faces/config", faces),
    ]
