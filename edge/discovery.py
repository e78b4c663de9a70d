"""Home Assistant MQTT discovery: the retained configs that make each device appear in Home Assistant.

One device per daemon with mood, mood confidence, faces and presence entities (fed by the retained state
topic), an event entity and device triggers (fed by the events topic) and diagnostic sensors (fed by the
stats topic); every entity turns unavailable through the status topic. Field names follow Home
Assistant's MQTT documentation (sensor.mqtt, binary_sensor.mqtt, event.mqtt, device_trigger.mqtt);
schemas/ha-discovery.schema.json describes what is published.

Ids are namespaced by the topic prefix and the exact device id (`node_id`), so devices `Living-Room` and
`living_room`, or two daemons under different prefixes, never share a discovery topic, a unique_id or a
device. Entity ids are asked for with `default_entity_id` (Home Assistant 2025.10 and later), made the
way older versions make them, from the device name and the entity name, with Home Assistant's own slugify
library, so all versions agree in any script; Home Assistant appends `_2` where two devices ask for the
same one.

Templates reach into the JSON with `.get()` wherever a field may be missing: it renders "None", which
Home Assistant reads as unknown, where plain attribute access would log a template warning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slugify import slugify

import edge
from edge.contract import NO_MOOD, id_slug
from edge.payloads import EVENT_TYPES
from edge.stats import STAGES
from edge.topics import OFFLINE, ONLINE, Topics

MANUFACTURER = "edge-mood"
HA_STATUS_TOPIC = "homeassistant/status"  # Home Assistant publishes "online" here when it (re)starts


@dataclass(frozen=True)
class Diagnostic:
    """One number of the stats message, shown as a diagnostic sensor."""

    name: str
    field: str  # key in the stats message; "stage_ms.<stage>" for a stage's time
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = "measurement"
    precision: int | None = None
    icon: str | None = None
    enabled: bool = False  # enabled when Home Assistant first adds it; users can switch the others on

    @property
    def template(self) -> str:
        group, _, key = self.field.rpartition(".")
        if group:  # a field inside an object of the message, e.g. stage_ms.detect
            return f"{{{{ (value_json.get('{group}') or {{}}).get('{key}') }}}}"
        return f"{{{{ value_json.get('{key}') }}}}"


def _stage_name(stage: str) -> str:
    return "Frame time" if stage == "total" else f"Stage {stage.replace('_', ' ')}"


DIAGNOSTICS: dict[str, Diagnostic] = {
    "fps": Diagnostic("Frame rate", "fps", "fps", precision=1, icon="mdi:speedometer", enabled=True),
    **{
        f"{stage}_ms": Diagnostic(_stage_name(stage), f"stage_ms.{stage}", "ms", "duration", precision=1)
        for stage in STAGES
    },
    "frames_dropped": Diagnostic(
        "Frames dropped", "frames_dropped", state_class="total_increasing", icon="mdi:image-off-outline"
    ),
    "frames_corrupt": Diagnostic(
        "Frames unusable", "frames_corrupt", state_class="total_increasing", icon="mdi:image-broken-variant"
    ),
    "source_reconnects": Diagnostic(
        "Source reconnects", "source_reconnects", state_class="total_increasing", icon="mdi:camera-retake"
    ),
    "spool_depth": Diagnostic("Spooled events", "spool_depth", icon="mdi:tray-full", enabled=True),
    "spool_dropped": Diagnostic(
        "Events dropped", "spool_dropped", state_class="total_increasing", icon="mdi:tray-remove", enabled=True
    ),
    "cpu_percent": Diagnostic("CPU", "cpu_percent", "%", precision=0, icon="mdi:cpu-64-bit", enabled=True),
    "rss_mb": Diagnostic("Memory", "rss_mb", "MiB", "data_size", precision=0, icon="mdi:memory"),
    "uptime_s": Diagnostic("Uptime", "uptime_s", "s", "duration", state_class=None, precision=0),
}


@dataclass(frozen=True)
class HomeAssistantOptions:
    """What a user chooses about the device in Home Assistant (config section [homeassistant])."""

    name: str = ""  # the device's name; empty: the device id
    suggested_area: str = ""  # used by Home Assistant only when it first adds the device
    expire_after_s: int = 180  # state-fed entities turn unavailable after this long without a state; 0: never
    diagnostics: tuple[str, ...] = tuple(DIAGNOSTICS)
    device_triggers: bool = True
    status_topic: str = HA_STATUS_TOPIC  # Home Assistant's birth message; empty: not listened to
    support_url: str = ""  # linked from the origin of every config; empty: none

    def __post_init__(self) -> None:
        unknown = [key for key in self.diagnostics if key not in DIAGNOSTICS]
        if unknown:
            raise ValueError(f"unknown diagnostics {unknown}; known: {', '.join(DIAGNOSTICS)}")


def ha_slug(text: str) -> str:
    """'Living-Room 2' -> 'living_room_2', 'Küche' -> 'kuche', '客厅' -> 'ke_ting': the entity id Home Assistant
    makes of a name, by the library its own slugify uses (python-slugify, separator '_'); 'edge_mood' where
    nothing is left."""
    return slugify(text, separator="_") or "edge_mood"


def node_id(topics: Topics) -> str:
    """'edge_mood_living_room_1a2b3c4d': readable, and distinct for every (topic prefix, exact device id).

    The hash keeps `Living-Room` and `living_room` (one slug) apart; the slug lets people find the
    device among the discovery topics. It names the device's discovery topics, unique_ids and identifier.
    """
    digest = hashlib.sha256(f"{topics.prefix}/{topics.device}".encode()).hexdigest()[:8]
    # id_slug, not ha_slug: node ids were made so before ha_slug transliterated, and must never change.
    return f"edge_mood_{id_slug(topics.device) or 'edge_mood'}_{digest}"


def discovery_messages(
    topics: Topics,
    *,
    discovery_prefix: str = "homeassistant",
    labels: Sequence[str] = (),
    model: str | None = None,
    options: HomeAssistantOptions = HomeAssistantOptions(),
) -> list[tuple[str, dict[str, Any]]]:
    """(topic, config) pairs to publish retained on every connect and whenever Home Assistant restarts.

    `labels` (the model's expressions) make the mood an enum sensor and give one device trigger per
    expression; `model` (the model id) is shown as the device's hardware version.
    """
    node = node_id(topics)
    name = options.name or topics.device
    device: dict[str, Any] = {
        "identifiers": [node],
        "name": name,
        "manufacturer": MANUFACTURER,
        "model": "edge-mood camera",
        "serial_number": topics.device,
        "sw_version": edge.__version__,
    }
    if model:
        device["hw_version"] = model
    if options.suggested_area:
        device["suggested_area"] = options.suggested_area
    origin = {"name": "edge-mood", "sw_version": edge.__version__}
    if options.support_url:
        origin["support_url"] = options.support_url
    common = {
        "device": device,
        "origin": origin,
        "availability_topic": topics.status,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "qos": 1,
    }
    entity_slug = ha_slug(name)

    def entity(component: str, key: str, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return f"{discovery_prefix}/{component}/{node}/{key}/config", {
            **common,
            "unique_id": f"{node}_{key}",
            "default_entity_id": f"{component}.{entity_slug}_{ha_slug(config['name'])}",
            **config,
        }

    from_state: dict[str, Any] = {"state_topic": topics.state}
    if options.expire_after_s:
        from_state["expire_after"] = options.expire_after_s
    mood: dict[str, Any] = {
        **from_state,
        "name": "Mood",
        "icon": "mdi:emoticon-outline",
        "value_template": f"{{{{ value_json.mood if value_json.mood else '{NO_MOOD}' }}}}",
        "json_attributes_topic": topics.state,
        "json_attributes_template": "{{ {'mood_confidence': value_json.mood_confidence, "
        "'counts': value_json.counts, 'face_count': value_json.face_count} | tojson }}",
    }
    if labels:
        mood["device_class"] = "enum"
        mood["options"] = [*labels, NO_MOOD]
    messages = [
        entity("sensor", "mood", mood),
        entity(
            "sensor",
            "mood_confidence",
            {
                **from_state,
                "name": "Mood confidence",
                "icon": "mdi:gauge",
                "value_template": "{{ 'None' if value_json.mood_confidence is none "
                "else (100 * value_json.mood_confidence) | round(1) }}",
                "unit_of_measurement": "%",
                "state_class": "measurement",
                "suggested_display_precision": 0,
            },
        ),
        entity(
            "sensor",
            "faces",
            {
                **from_state,
                "name": "Faces",
                "icon": "mdi:account-group",
                "value_template": "{{ value_json.face_count }}",
                "unit_of_measurement": "faces",
                "state_class": "measurement",
                "json_attributes_topic": topics.state,
                "json_attributes_template": "{{ {'counts': value_json.counts} | tojson }}",
            },
        ),
        entity(
            "binary_sensor",
            "presence",
            {
                **from_state,
                "name": "Presence",
                "device_class": "occupancy",
                "value_template": "{{ 'ON' if value_json.face_count > 0 else 'OFF' }}",
            },
        ),
        entity(
            "event",
            "face_event",
            {
                "state_topic": topics.events,
                "name": "Face event",
                "icon": "mdi:face-recognition",
                "event_types": list(EVENT_TYPES),
                # Home Assistant wants {"event_type": ..., <attributes>}; our events carry "type".
                "value_template": "{{ {'event_type': value_json.type, 'expression': value_json.expression, "
                "'confidence': value_json.confidence, 'previous': value_json.get('previous'), "
                "'duration_s': value_json.get('duration_s'), 'track_id': value_json.track_id, "
                "'seq': value_json.seq, 'ts': value_json.ts, 'scores': value_json.scores} | tojson }}",
            },
        ),
    ]
    messages += [entity("sensor", key, _diagnostic(DIAGNOSTICS[key], topics)) for key in options.diagnostics]
    if options.device_triggers:
        messages += [
            (
                f"{discovery_prefix}/device_automation/{node}/{key}/config",
                {"device": device, "origin": origin, **config},
            )
            for key, config in _triggers(topics, labels).items()
        ]
    return messages


def retired_topics(
    topics: Topics,
    *,
    discovery_prefix: str = "homeassistant",
    labels: Sequence[str] = (),
    options: HomeAssistantOptions = HomeAssistantOptions(),
) -> list[str]:
    """Discovery topics of entities this device offers but is configured not to publish. Clearing them
    (an empty retained message) on connect removes what a user switched off from Home Assistant, also where
    the broker does not let the device read its configs back (an ACL that only lets it write them), which
    the sweep of node_configs_filter needs."""
    node = node_id(topics)
    topics_off = [
        f"{discovery_prefix}/sensor/{node}/{key}/config" for key in DIAGNOSTICS if key not in options.diagnostics
    ]
    if not options.device_triggers:
        topics_off += [f"{discovery_prefix}/device_automation/{node}/{key}/config" for key in _triggers(topics, labels)]
    return topics_off


def node_configs_filter(topics: Topics, discovery_prefix: str = "homeassistant") -> str:
    """The MQTT filter of every discovery config this device may ever have published, under any component and
    key: what the device has to clear of what it no longer offers (another model's labels, an entity
    switched off)."""
    return f"{discovery_prefix}/+/{node_id(topics)}/+/config"


def _diagnostic(diagnostic: Diagnostic, topics: Topics) -> dict[str, Any]:
    config: dict[str, Any] = {
        "state_topic": topics.stats,
        "name": diagnostic.name,
        "entity_category": "diagnostic",
        "value_template": diagnostic.template,
    }
    optional = {
        "unit_of_measurement": diagnostic.unit,
        "device_class": diagnostic.device_class,
        "state_class": diagnostic.state_class,
        "suggested_display_precision": diagnostic.precision,
        "icon": diagnostic.icon,
    }
    config.update({key: value for key, value in optional.items() if value is not None})
    if not diagnostic.enabled:
        config["enabled_by_default"] = False
    return config


def _triggers(topics: Topics, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Device triggers by discovery object id. Home Assistant shows them as "<subtype> <type>":
    "face entered", "face left", "surprise expression"."""

    def trigger(type_: str, subtype: str, value_template: str, payload: str) -> dict[str, Any]:
        return {
            "automation_type": "trigger",
            "topic": topics.events,
            "type": type_,
            "subtype": subtype,
            "value_template": value_template,
            "payload": payload,
            "qos": 1,
        }

    triggers = {
        "entered_face": trigger("entered", "face", "{{ value_json.type }}", "face_enter"),
        "left_face": trigger("left", "face", "{{ value_json.type }}", "face_leave"),
    }
    expression = "{{ value_json.expression if value_json.type == 'expression' else '' }}"
    for label in labels:
        triggers[f"expression_{id_slug(label)}"] = trigger("expression", label, expression, label)
    return triggers
