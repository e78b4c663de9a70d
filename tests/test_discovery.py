"""Home Assistant MQTT discovery: the configs, their ids, the options, and how the publisher keeps them on
a real broker (retained, re-sent on Home Assistant's birth message, cleared when switched off).

Every config is checked against schemas/ha-discovery.schema.json, and every template is rendered with
Jinja2 (the engine behind Home Assistant's templates) against the payloads the daemon publishes.
bench/home_assistant.sh runs the same configs through a real Home Assistant.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import edge
from edge.config import ConfigError, load_config
from edge.discovery import DIAGNOSTICS, HomeAssistantOptions, discovery_messages, ha_slug, node_id, retired_topics
from edge.payloads import event_payload, state_payload, stats_payload
from edge.publisher import MqttSettings, Publisher
from edge.spool import Spool
from edge.topics import Topics
from tests.mqtt_support import wait_until
from tests.scenes import SHARED, Segment, write_video
from tests.test_daemon_e2e import edge as run_edge
from tests.test_daemon_e2e import write_config

jsonschema = pytest.importorskip("jsonschema")

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "ha-discovery.schema.json").read_text())
EXAMPLE = Path(__file__).resolve().parents[1] / "edge" / "config.example.toml"


def schema_errors(topic: str, config: dict) -> list[str]:
    """Why `config`, published on `topic`, is not what Home Assistant's documentation asks for."""
    errors = [e.message for e in jsonschema.Draft202012Validator(SCHEMA["$defs"]["discovery_topic"]).iter_errors(topic)]
    component = topic.split("/")[-4] if topic.count("/") >= 4 else topic.split("/")[1]
    validator = jsonschema.Draft202012Validator({**SCHEMA, "$ref": f"#/$defs/{component}"})
    return errors + [f"{topic}: {e.message}" for e in validator.iter_errors(config)]


def by_key(messages: list[tuple[str, dict]]) -> dict[str, dict]:
    """{'mood': config, 'fps': config, 'expression_happy': trigger, ...} from the topics' object ids."""
    return {topic.split("/")[-2]: config for topic, config in messages}


# -- ids ---------------------------------------------------------------------------------------------


def test_ha_slug():
    assert ha_slug("Living-Room 2") == "living_room_2"
    assert ha_slug("cam_1") == "cam_1"
    assert ha_slug("--") == "edge_mood"


@pytest.mark.parametrize(
    ("name", "slug"),
    [  # right: what Home Assistant's slugify (python-slugify 9.2, separator "_") makes of the name
        ("Küche", "kuche"),
        ("Salle à manger", "salle_a_manger"),
        ("Straße", "strasse"),
        ("Køkken", "kokken"),
        ("Łazienka", "lazienka"),
        ("Œuvre", "oeuvre"),
        ("Þórr", "thorr"),
        ("ﬁ 2²", "fi_22"),
        ("Bob's room", "bob_s_room"),
    ],
)
def test_entity_ids_of_latin_script_names_are_home_assistants(name, slug):
    configs = by_key(discovery_messages(Topics("edge-mood", "cam1"), options=HomeAssistantOptions(name=name)))
    assert configs["mood"]["default_entity_id"] == f"sensor.{slug}_mood"


@pytest.mark.parametrize(
    ("name", "slug"),
    [("客厅", "ke_ting"), ("Гостиная 2", "gostinaia_2"), ("Σαλόνι", "saloni"), ("1,000 rooms", "1000_rooms")],
)
def test_entity_ids_of_other_scripts_and_numbers_are_home_assistants(name, slug):
    # right: Home Assistant's slugify (python-slugify with text-unidecode, separator "_")
    configs = by_key(discovery_messages(Topics("edge-mood", "cam1"), options=HomeAssistantOptions(name=name)))
    assert configs["mood"]["default_entity_id"] == f"sensor.{slug}_mood"


def test_ids_keep_devices_apart_that_differ_only_in_case_punctuation_or_prefix():
    devices = [Topics("edge-mood", "Living-Room"), Topics("edge-mood", "living_room"), Topics("house2", "living_room")]
    nodes = [node_id(t) for t in devices]
    assert len(set(nodes)) == 3
    published = [discovery_messages(t, labels=LABELS) for t in devices]
    for field in ("topic", "unique_id", "identifiers"):
        seen: list[set] = []
        for messages in published:
            if field == "topic":
                values = {topic for topic, _ in messages}
            elif field == "unique_id":
                values = {config["unique_id"] for _, config in messages if "unique_id" in config}
            else:
                values = {tuple(config["device"]["identifiers"]) for _, config in messages}
            assert all(values.isdisjoint(other) for other in seen), field
            seen.append(values)


def test_node_id_never_changes():
    # Home Assistant keys entities by unique_id: a changed node id would leave every user with a second,
    # orphaned copy of each entity.
    assert node_id(Topics("edge-mood", "Living-Room")) == "edge_mood_living_room_8b7eba48"
    assert node_id(Topics("edge-mood", "Küche")) == "edge_mood_k_che_d319673a"  # not transliterated, as ever


# -- the configs -------------------------------------------------------------------------------------


def test_every_config_follows_home_assistants_documentation():
    options = HomeAssistantOptions(name="Living room", suggested_area="Living Room", support_url="https://example.org")
    for labels in (LABELS, []):
        messages = discovery_messages(Topics("edge-mood", "Living-Room"), labels=labels, model="m@1", options=options)
        assert [e for topic, config in messages for e in schema_errors(topic, config)] == []


def test_schema_rejects_what_home_assistant_would_refuse_or_ignore():
    configs = by_key(discovery_messages(Topics("edge-mood", "cam"), labels=LABELS))
    topic = "homeassistant/sensor/edge_mood_cam_x/{}/config"
    assert schema_errors(topic.format("mood"), {**configs["mood"], "unit_of_measurement": "x"})  # enum with a unit
    assert schema_errors(topic.format("mood"), {**configs["mood"], "object_id": "cam_mood"})  # deprecated key
    assert schema_errors(topic.format("uptime_s"), {**configs["uptime_s"], "unit_of_measurement": "sec"})
    assert schema_errors(topic.format("fps"), {**configs["fps"], "entity_category": "config"})
    assert schema_errors("homeassistant/sensor/Living Room/mood/config", configs["mood"])  # space in a node id


def test_entities_of_one_device():
    topics = Topics("edge-mood", "Kitchen-Cam")
    messages = discovery_messages(topics, labels=LABELS, model="student_s@0123456789ab")
    node = node_id(topics)
    components = {topic.split("/")[1] + "/" + topic.split("/")[-2] for topic, _ in messages}
    assert {"sensor/mood", "sensor/mood_confidence", "sensor/faces", "binary_sensor/presence", "event/face_event"} <= (
        components
    )
    assert {f"sensor/{key}" for key in DIAGNOSTICS} <= components
    triggers = {c for c in components if c.startswith("device_automation/")}
    assert triggers == {"device_automation/entered_face", "device_automation/left_face"} | {
        f"device_automation/expression_{label}" for label in LABELS
    }
    for topic, config in messages:
        assert topic.startswith(f"homeassistant/{topic.split('/')[1]}/{node}/")
        assert config["device"]["identifiers"] == [node]
        assert config["device"]["serial_number"] == "Kitchen-Cam"
        assert config["device"]["hw_version"] == "student_s@0123456789ab"
        assert config["origin"] == {"name": "edge-mood", "sw_version": edge.__version__}
        if "unique_id" in config:  # every entity; device triggers have none
            assert config["unique_id"] == f"{node}_{topic.split('/')[-2]}"
            assert config["availability_topic"] == "edge-mood/Kitchen-Cam/status"
            assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
            assert not config["name"].startswith("Kitchen")  # Home Assistant prefixes the device name itself
    configs = by_key(messages)
    # As Home Assistant before 2025.10 makes them, from the device and entity names.
    assert configs["mood"]["default_entity_id"] == "sensor.kitchen_cam_mood"
    assert configs["presence"]["default_entity_id"] == "binary_sensor.kitchen_cam_presence"
    assert configs["fps"]["default_entity_id"] == "sensor.kitchen_cam_frame_rate"
    assert configs["total_ms"]["default_entity_id"] == "sensor.kitchen_cam_frame_time"
    assert configs["mood"]["device_class"] == "enum" and configs["mood"]["options"] == [*LABELS, "none"]
    assert configs["presence"]["device_class"] == "occupancy"
    assert configs["face_event"]["event_types"] == ["face_enter", "expression", "face_leave"]
    assert configs["face_event"]["state_topic"] == "edge-mood/Kitchen-Cam/events"
    assert configs["mood_confidence"]["unit_of_measurement"] == "%"
    for key in ("mood", "mood_confidence", "faces", "presence"):
        assert configs[key]["state_topic"] == "edge-mood/Kitchen-Cam/state"
        assert configs[key]["expire_after"] == 180
    for key in DIAGNOSTICS:
        assert configs[key]["entity_category"] == "diagnostic"
        assert configs[key]["state_topic"] == "edge-mood/Kitchen-Cam/stats"
        assert configs[key].get("enabled_by_default", True) == DIAGNOSTICS[key].enabled
    assert {key for key in DIAGNOSTICS if DIAGNOSTICS[key].enabled} == {
        "fps",
        "spool_depth",
        "spool_dropped",
        "cpu_percent",
    }


def test_options_shape_the_device_and_its_entities():
    topics = Topics("edge-mood", "cam")
    options = HomeAssistantOptions(
        name="Hall camera",
        suggested_area="Hall",
        expire_after_s=0,
        diagnostics=("fps",),
        device_triggers=False,
        support_url="https://wiki.example/cams",
    )
    configs = by_key(discovery_messages(topics, labels=LABELS, options=options))
    assert configs["mood"]["device"]["name"] == "Hall camera"
    assert configs["mood"]["device"]["suggested_area"] == "Hall"
    assert configs["mood"]["origin"]["support_url"] == "https://wiki.example/cams"
    assert configs["mood"]["default_entity_id"] == "sensor.hall_camera_mood"  # from the name users see
    assert all("expire_after" not in c for c in configs.values())
    assert set(configs) == {"mood", "mood_confidence", "faces", "presence", "face_event", "fps"}
    retired = retired_topics(topics, labels=LABELS, options=options)
    node = node_id(topics)
    assert f"homeassistant/sensor/{node}/rss_mb/config" in retired
    assert f"homeassistant/device_automation/{node}/expression_happy/config" in retired
    assert f"homeassistant/sensor/{node}/fps/config" not in retired
    assert retired_topics(topics, labels=LABELS) == []  # nothing is switched off by default
    with pytest.raises(ValueError, match="cpu_load"):
        HomeAssistantOptions(diagnostics=("cpu_load",))


def test_discovery_prefix_is_configurable():
    topics = {t.split("/")[0] for t, _ in discovery_messages(Topics("edge-mood", "cam"), discovery_prefix="ha")}
    assert topics == {"ha"}


def test_without_labels_the_mood_sensor_is_free_text():
    mood = by_key(discovery_messages(Topics("edge-mood", "cam")))["mood"]
    assert "device_class" not in mood and "options" not in mood


# -- templates against the payloads ------------------------------------------------------------------


def render(template: str, payload: dict) -> str:
    """What Home Assistant makes of `template` for a message. StrictUndefined turns the 'has no attribute'
    that Home Assistant logs as a warning into an error."""
    jinja2 = pytest.importorskip("jinja2")
    sandbox = pytest.importorskip("jinja2.sandbox")
    environment = sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    return environment.from_string(template).render(value_json=payload)


def test_templates_give_home_assistant_valid_states():
    topics = Topics("edge-mood", "cam")
    configs = by_key(discovery_messages(topics, labels=LABELS))
    ts = time.time()
    scores = dict.fromkeys(LABELS, 0.1) | {"surprise": 0.4}
    box = (0.1, 0.2, 0.3, 0.4)
    face = {"track_id": 1, "expression": "surprise", "confidence": 0.8, "bbox": box}
    settling = {"track_id": 2, "expression": None, "confidence": None, "bbox": box}
    states = [
        state_payload(device="cam", ts=ts, faces=[], model="m"),
        state_payload(device="cam", ts=ts, faces=[settling], model="m"),
        state_payload(device="cam", ts=ts, faces=[face, settling], model="m"),
    ]
    rendered = [
        {key: render(configs[key]["value_template"], s) for key in ("mood", "mood_confidence", "faces", "presence")}
        for s in states
    ]
    assert rendered[0] == {"mood": "none", "mood_confidence": "None", "faces": "0", "presence": "OFF"}
    assert rendered[1] == {"mood": "none", "mood_confidence": "None", "faces": "1", "presence": "ON"}
    assert rendered[2] == {"mood": "surprise", "mood_confidence": "80.0", "faces": "2", "presence": "ON"}
    for state in states:
        assert render(configs["mood"]["value_template"], state) in configs["mood"]["options"]
        for key in ("mood", "faces"):
            assert isinstance(json.loads(render(configs[key]["json_attributes_template"], state)), dict)

    events = [
        event_payload(device="cam", type="face_enter", frame=1, ts=ts, track_id=1, expression=None, confidence=None,
                      scores=scores, bbox_norm=box, model="m"),
        event_payload(device="cam", type="expression", frame=5, ts=ts, track_id=1, expression="surprise",
                      confidence=0.4, scores=scores, bbox_norm=box, model="m", extra={"previous": None}),
        event_payload(device="cam", type="face_leave", frame=9, ts=ts, track_id=1, expression="surprise",
                      confidence=0.4, scores=scores, bbox_norm=box, model="m", extra={"duration_s": 2.5}),
    ]  # fmt: skip
    for seq, event in enumerate(events, 1):
        event["seq"] = seq  # the spool adds it
        fired = json.loads(render(configs["face_event"]["value_template"], event))
        assert fired["event_type"] == event["type"] and fired["event_type"] in configs["face_event"]["event_types"]
        assert (fired["expression"], fired["seq"], fired["track_id"]) == (event["expression"], seq, 1)
        assert fired["ts"] == event["ts"] and fired["scores"] == event["scores"]
    assert json.loads(render(configs["face_event"]["value_template"], events[2]))["duration_s"] == 2.5

    # Each device trigger fires on exactly the events it names.
    triggers = {key: c for key, c in configs.items() if c.get("automation_type") == "trigger"}
    fired_by = {
        key: [e["type"] for e in events if render(c["value_template"], e) == c["payload"]]
        for key, c in triggers.items()
    }
    assert fired_by.pop("entered_face") == ["face_enter"]
    assert fired_by.pop("left_face") == ["face_leave"]
    assert fired_by.pop("expression_surprise") == ["expression"]
    assert all(fired == [] for fired in fired_by.values())

    stats = [
        stats_payload(device="cam", ts=ts),  # fields missing: unknown, not a template error
        stats_payload(device="cam", ts=ts, fps=14.5, stage_ms={"detect": 3.2, "total": 9.9}, frames_dropped=2,
                      frames_corrupt=0, source_reconnects=0, spool_depth=0, spool_dropped=0, cpu_percent=None,
                      rss_mb=98.2, uptime_s=30.0),
    ]  # fmt: skip
    for key in DIAGNOSTICS:
        assert render(configs[key]["value_template"], stats[0]) == "None"
    full = {key: render(configs[key]["value_template"], stats[1]) for key in DIAGNOSTICS}
    assert (full["fps"], full["detect_ms"], full["total_ms"], full["rss_mb"]) == ("14.5", "3.2", "9.9", "98.2")
    assert full["classify_ms"] == "None" and full["cpu_percent"] == "None"


# -- config ------------------------------------------------------------------------------------------


def test_homeassistant_config_section(tmp_path):
    assert (
        load_config(EXAMPLE, environ={}).homeassistant.as_dict()
        == load_config(None, environ={}).homeassistant.as_dict()
    )
    path = tmp_path / "config.toml"
    path.write_text('[homeassistant]\nname = "Hall"\ndiagnostics = ["fps", "spool_depth"]\nexpire_after_s = 0\n')
    config = load_config(path, environ={"EDGE_MOOD_HOMEASSISTANT_SUGGESTED_AREA": "Hall"})
    options = HomeAssistantOptions(**config.homeassistant.as_dict())
    assert (options.name, options.suggested_area, options.expire_after_s) == ("Hall", "Hall", 0)
    assert options.diagnostics == ("fps", "spool_depth")
    from_env = load_config(None, environ={"EDGE_MOOD_HOMEASSISTANT_DIAGNOSTICS": "fps, cpu_percent"})
    assert from_env.homeassistant.diagnostics == ("fps", "cpu_percent")
    assert load_config(None, {"homeassistant.diagnostics": ""}, environ={}).homeassistant.diagnostics == ()


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("diagnostics", "fps,cpu_load", ["homeassistant.diagnostics", "'cpu_load' unknown", "spool_depth"]),
        ("diagnostics", 5, ["homeassistant.diagnostics", "a list of names"]),
        ("expire_after_s", 30, ["homeassistant.expire_after_s", "more than 60"]),
        ("support_url", "wiki/cams", ["homeassistant.support_url", "https://"]),
    ],
)
def test_bad_homeassistant_values_are_one_clear_line(key, value, words):
    with pytest.raises(ConfigError) as caught:
        load_config(None, {f"homeassistant.{key}": value}, environ={})
    message = str(caught.value)
    assert "\n" not in message and all(word in message for word in words), message


# -- on a real broker --------------------------------------------------------------------------------


def run_publisher(
    broker, tmp_path, device: str, options: HomeAssistantOptions | None = None, labels=LABELS, **changes
) -> Publisher:
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
        settings,
        Spool(tmp_path / f"{device}.sqlite3"),
        labels=labels,
        model="student_s@0123456789ab",
        home_assistant=options,
    )
    publisher.start()
    # The state goes out after the discovery configs on the same connection: once it is retained,
    # the configs are too.
    publisher.publish_state(state_payload(device=device, ts=time.time(), faces=[], model="m"))
    return publisher


def stop(publisher: Publisher) -> None:
    publisher.stop()
    publisher.spool.close()


def retained_configs(broker, subscriber, count: int) -> dict[str, dict]:
    """What a Home Assistant that subscribes now gets: the retained configs, by topic."""
    late = subscriber(broker, "homeassistant/#")
    got = {m.topic: m for m in late.wait_for(count)}
    time.sleep(0.3)  # not a timing assertion: room for a config beyond `count` to show up
    got.update({m.topic: m for m in late.received()})
    late.close()
    assert all(m.retain for m in got.values())
    return {topic: m.json() for topic, m in got.items()}


def test_configs_are_retained_on_the_broker(broker, subscriber, tmp_path):
    publisher = run_publisher(broker, tmp_path, "Kitchen-Cam")
    expected = discovery_messages(Topics("edge-mood", "Kitchen-Cam"), labels=LABELS, model="student_s@0123456789ab")
    try:
        subscriber(broker, "edge-mood/Kitchen-Cam/state").wait_for(1)
        got = retained_configs(broker, subscriber, len(expected))
    finally:
        stop(publisher)
    assert got == dict(expected)


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


def test_home_assistant_coming_online_gets_the_configs_again(broker, subscriber, tmp_path):
    """A Home Assistant whose broker lost the retained configs announces itself on homeassistant/status;
    the daemon answers with every config again."""
    publisher = run_publisher(broker, tmp_path, "cam3")
    count = len(discovery_messages(Topics("edge-mood", "cam3"), labels=LABELS))
    ha = subscriber(broker, "homeassistant/#")
    try:
        configs = ha.wait_for(count)
        for message in configs:  # as if the broker restarted without persistence
            ha.client.publish(message.topic, b"", qos=1, retain=True).wait_for_publish(5)
        assert retained(broker, subscriber, "cam3") == set()
        seen = len(ha.received())
        ha.client.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        ha.wait_until(lambda ms: sum(1 for m in ms[seen:] if m.payload and m.topic.endswith("/config")) >= count)
        again = retained(broker, subscriber, "cam3")
    finally:
        stop(publisher)
    assert again == {m.topic for m in configs}


def retained(broker, subscriber, device: str) -> set[str]:
    """The discovery topics that hold a retained config now."""
    late = subscriber(broker, "homeassistant/#", f"edge-mood/{device}/status")
    late.wait_for(1, topic=f"edge-mood/{device}/status")  # retained messages arrive together after subscribing
    time.sleep(0.2)  # not a timing assertion: room for the last retained ones
    found = {m.topic for m in late.received("homeassistant/#") if m.payload and m.retain}
    late.close()
    return found


def test_entities_switched_off_are_removed(broker, subscriber, tmp_path):
    """An earlier run published every diagnostic; with `diagnostics = ["fps"]` the others' retained
    configs are cleared, which is how Home Assistant is told to remove an entity."""
    first = run_publisher(broker, tmp_path, "cam4")
    count = len(discovery_messages(Topics("edge-mood", "cam4"), labels=LABELS))
    subscriber(broker, "edge-mood/cam4/state").wait_for(1)
    assert len(retained(broker, subscriber, "cam4")) == count
    stop(first)
    watch = subscriber(broker, "homeassistant/#")
    watch.wait_for(count)  # the retained ones
    options = HomeAssistantOptions(diagnostics=("fps",), device_triggers=False)
    expected = {topic for topic, _ in discovery_messages(Topics("edge-mood", "cam4"), labels=LABELS, options=options)}
    second = run_publisher(broker, tmp_path, "cam4", options)
    try:
        # The clearing messages pass by live: one empty payload per retired topic, after the configs.
        watch.wait_until(lambda ms: sum(1 for m in ms if not m.payload) >= count - len(expected))
        got = retained(broker, subscriber, "cam4")
    finally:
        stop(second)
    assert got == expected


def test_configs_an_earlier_run_published_and_this_one_does_not_offer_are_removed(broker, subscriber, tmp_path):
    """A model with other labels leaves no device trigger of the old labels behind: every retained config
    under the node id that a run does not offer is cleared. A run with discovery off (`edge demo` on an
    installed device, with its device id) removes nothing."""
    topics = Topics("edge-mood", "cam5")
    first = run_publisher(broker, tmp_path, "cam5")
    subscriber(broker, "edge-mood/cam5/state").wait_for(1)
    assert len(retained(broker, subscriber, "cam5")) == len(discovery_messages(topics, labels=LABELS))
    stop(first)
    six = [label for label in LABELS if label != "disgust"]
    expected = {topic for topic, _ in discovery_messages(topics, labels=six)}
    second = run_publisher(broker, tmp_path, "cam5", labels=six)
    try:
        wait_until(lambda: retained(broker, subscriber, "cam5") == expected, "only the six labels' configs")
    finally:
        stop(second)
    third = run_publisher(broker, tmp_path, "cam5", discovery=False)
    try:
        status = subscriber(broker, "edge-mood/cam5/status")
        status.wait_until(lambda got: bool(got) and got[-1].text == "online")  # connected
        time.sleep(0.5)  # not a timing assertion: room for clears that must not come
        assert retained(broker, subscriber, "cam5") == expected
    finally:
        stop(third)


# -- the real daemon ---------------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared (real photos and the YuNet model)")
def test_daemon_publishes_valid_configs_whose_templates_read_its_payloads(tmp_path, broker, subscriber, monkeypatch):
    """`edge run` on a video of a real face: every retained discovery config follows the schema, and every
    entity's template turns each state, event and stats message the daemon published into a state Home
    Assistant accepts."""
    for name in [n for n in os.environ if n.startswith("EDGE_MOOD_")]:
        monkeypatch.delenv(name)
    video = tmp_path / "scene.avi"
    write_video(video, [Segment(5, None), Segment(15, 2.4), Segment(15, 0.45), Segment(20, None)])
    options = {"name": "Room one", "suggested_area": "Hall"}
    config = write_config(tmp_path, broker, video, source={"realtime": True, "fps": 20.0}, homeassistant=options)
    sub = subscriber(broker, "edge-mood/room1/#")
    result = run_edge("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    expected = discovery_messages(Topics("edge-mood", "room1"), labels=LABELS, options=HomeAssistantOptions(**options))
    late = subscriber(broker, "homeassistant/#")
    got = {m.topic: m for m in late.wait_for(len(expected))}
    time.sleep(0.3)  # not a timing assertion: room for a config beyond the expected ones
    assert set(got) == {m.topic for m in late.received()} == {topic for topic, _ in expected}
    assert all(m.retain for m in got.values())
    configs = {topic: m.json() for topic, m in got.items()}
    assert [e for topic, config in configs.items() for e in schema_errors(topic, config)] == []
    assert {c["device"]["name"] for c in configs.values()} == {"Room one"}

    published = {
        kind: [m.json() for m in sub.received(f"edge-mood/room1/{kind}")] for kind in ("state", "events", "stats")
    }
    assert all(published.values()), {kind: len(messages) for kind, messages in published.items()}
    assert {e["type"] for e in published["events"]} == {"face_enter", "expression", "face_leave"}
    fired: set[str] = set()
    for topic, config in configs.items():
        if config.get("automation_type") == "trigger":
            fired |= {
                topic for event in published["events"] if render(config["value_template"], event) == config["payload"]
            }
            continue
        for payload in published[config["state_topic"].rsplit("/", 1)[1]]:
            assert_valid_state(topic, config, render(config["value_template"], payload))
    assert {topic.split("/")[-2] for topic in fired} == {
        "entered_face",
        "left_face",
        "expression_happy",
        "expression_sad",
    }
    assert sub.received("edge-mood/room1/status")[-1].text == "offline"


def assert_valid_state(topic: str, config: dict, state: str) -> None:
    """`state` is what Home Assistant would set from the rendered template (see sensor.mqtt & co.)."""
    component = topic.split("/")[-4]
    if component == "event":
        fired = json.loads(state)
        assert fired["event_type"] in config["event_types"], (topic, state)
    elif component == "binary_sensor":
        assert state in ("ON", "OFF"), (topic, state)
    elif "options" in config:
        assert state in config["options"], (topic, state)
    elif "unit_of_measurement" in config or "state_class" in config:
        assert state == "None" or float(state) >= 0, (topic, state)  # "None": unknown
