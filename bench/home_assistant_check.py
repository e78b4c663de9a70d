"""edge-mood in a real Home Assistant Core: what HA makes of the daemon's discovery. Run by
bench/home_assistant.sh, which installs Home Assistant; not part of CI.

Starts its own mosquitto on a free port and a Home Assistant whose MQTT config entry points there (written
into .storage before the first start; no onboarding or UI needed). HA's own `mqtt_statestream` mirrors
every entity state back onto the broker under `hass/`, which is how this script reads states. Two
daemons run on a folder of photos (../shared/data/photos, alternating with empty frames so faces enter
and leave), device ids `Living-Room` and `living_room`, the shipped model. Then:

 1. HA must create both devices with mood, confidence, faces, presence, event and diagnostic entities,
    and a face entering must fire the event entity;
 2. HA is restarted with automations on each kind of entity (the triggers and conditions of the
    README's examples, each counting into a counter): its birth message must make the daemons announce
    again, the entities come back, and the event entity, a device trigger and presence fire;
 3. one daemon is stopped (SIGTERM), the other killed (SIGKILL, the broker's last will): every entity of
    both devices must become unavailable.

Prints the devices and entities from HA's registries, the states, the automations' counts, every
WARNING/ERROR line of HA's log plus its MQTT lines, and a PASS/FAIL line per check.

    python bench/home_assistant_check.py --hass ~/.cache/edge-mood/ha-2026.2.3/bin/hass
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"
DEVICES = {  # device id -> [homeassistant] settings
    "Living-Room": {"name": "Living Room", "suggested_area": "Living Room"},
    "living_room": {},
}
FPS = 4.0
CYCLE = [("12_angry_men.jpg", 12), (None, 8), ("test_image.jpg", 12), (None, 8)]  # (photo or empty, frames)
results: list[tuple[str, bool]] = []


def say(line: str) -> None:
    print(f"ha: {line}", flush=True)


def check(what: str, ok: bool) -> bool:
    results.append((what, ok))
    say(f"{'PASS' if ok else 'FAIL'}  {what}")
    return ok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """Every message on the broker, newest value per topic, with arrival times."""

    def __init__(self, port: int):
        self.latest: dict[str, tuple[float, str]] = {}
        self.log: list[tuple[float, str, str]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="ha-bench-recorder")
        self.client.on_connect = lambda c, *_: c.subscribe("#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c, _u, msg: mqtt.MQTTMessage) -> None:
        text = msg.payload.decode("utf-8", errors="replace")
        with self._cond:
            self.latest[msg.topic] = (time.monotonic(), text)
            self.log.append((time.monotonic(), msg.topic, text))
            self._cond.notify_all()

    def value(self, topic: str) -> str | None:
        with self._cond:
            return self.latest.get(topic, (0.0, None))[1]

    def seen_since(self, since: float, topic: str, payload: str | None = None) -> bool:
        with self._cond:
            return any(t >= since and tp == topic and (payload is None or p == payload) for t, tp, p in self.log)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
        return True


def start_mosquitto(work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = work / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "log_dest stdout"]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=open(work / "mosquitto.log", "wb"), stderr=subprocess.STDOUT
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit("ha: mosquitto did not start; see mosquitto.log")


def write_ha_config(config: Path, broker_port: int, automations: dict[str, dict] | None = None) -> None:
    """configuration.yaml, the automations with a counter each and, before the first start, the MQTT
    config entry."""
    config.mkdir(parents=True, exist_ok=True)
    counters = {name: {"initial": 0} for name in automations or {}}
    (config / "configuration.yaml").write_text(
        f"""homeassistant:
  name: edge-mood bench
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: NL
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {free_port()}
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: info
    homeassistant.components.mqtt.discovery: debug
mqtt_statestream:
  base_topic: hass
  publish_attributes: true
automation: !include automations.yaml
counter: {json.dumps(counters)}
"""
    )
    # JSON is YAML too.
    listed = [
        {"id": name, "alias": name, "mode": "queued", **body, "actions": [counted(name)]}
        for name, body in (automations or {}).items()
    ]
    (config / "automations.yaml").write_text(json.dumps(listed, indent=1) + "\n")
    entries = config / ".storage" / "core.config_entries"
    if not entries.exists():
        entries.parent.mkdir(exist_ok=True)
        # Storage version 1.1 with the fields every HA version has; HA migrates it to its own version.
        entry = {
            "entry_id": "edgemoodbenchmqtt0000000001",
            "version": 1,
            "minor_version": 1,
            "domain": "mqtt",
            "title": f"127.0.0.1:{broker_port}",
            "data": {"broker": "127.0.0.1", "port": broker_port},
            "options": {},
            "source": "user",
            "unique_id": None,
            "disabled_by": None,
            "pref_disable_new_entities": False,
            "pref_disable_polling": False,
        }
        doc = {"version": 1, "minor_version": 1, "key": "core.config_entries", "data": {"entries": [entry]}}
        entries.write_text(json.dumps(doc, indent=1))


def counted(name: str) -> dict:
    return {"action": "counter.increment", "target": {"entity_id": f"counter.{name}"}}


def example_automations(entity: dict[str, str], device_id: str, labels: list[str]) -> dict[str, dict]:
    """Automations with the triggers and conditions of the README's examples, by counter name."""

    def device_trigger(type_: str, subtype: str) -> dict:
        return {"trigger": "device", "domain": "mqtt", "device_id": device_id, "type": type_, "subtype": subtype}

    def on_event(event_type: str) -> dict:
        return {
            # not_from: a daemon coming back online restores the last event; that is not a new one.
            "triggers": [{"trigger": "state", "entity_id": entity["face_event"], "not_from": "unavailable"}],
            # The event that fired, not the entity's state by the time a queued run starts.
            "conditions": [f"{{{{ trigger.to_state.attributes.event_type == '{event_type}' }}}}"],
        }

    return {
        "mood_is_an_expression": {"triggers": [{"trigger": "state", "entity_id": entity["mood"], "to": labels}]},
        "confidence_above_40": {
            "triggers": [{"trigger": "numeric_state", "entity_id": entity["mood_confidence"], "above": 40}]
        },
        "faces_above_1": {"triggers": [{"trigger": "numeric_state", "entity_id": entity["faces"], "above": 1}]},
        "presence_on": {"triggers": [{"trigger": "state", "entity_id": entity["presence"], "to": "on"}]},
        "event_face_enter": on_event("face_enter"),
        "event_expression": on_event("expression"),
        "trigger_face_entered": {"triggers": [device_trigger("entered", "face")]},
        "trigger_any_expression": {"triggers": [device_trigger("expression", label) for label in labels]},
        "fps_above_0": {"triggers": [{"trigger": "numeric_state", "entity_id": entity["fps"], "above": 0}]},
    }


def write_frames(folder: Path, photos: Path, seconds: float) -> int:
    """Symlinks to the photos alternating with an empty frame, enough for `seconds` at FPS."""
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder.parent / "empty.jpg"
    cv2.imwrite(str(empty), np.full((720, 1280, 3), 96, np.uint8))
    count = 0
    while count < seconds * FPS:
        for photo, frames in CYCLE:
            for _ in range(frames):
                (folder / f"frame_{count:06d}.jpg").symlink_to(photos / photo if photo else empty)
                count += 1
    return count


def start_daemon(work: Path, device: str, broker_port: int, frames: Path, python: str) -> subprocess.Popen:
    settings = {
        "source": {"uri": str(frames), "realtime": True, "fps": FPS},
        "detector": {"yunet_model": str(YUNET)},
        "model": {"threads": 1},
        "tracking": {"leave_after_s": 1.0},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "device_id": device},
        "homeassistant": DEVICES[device],
        "spool": {"dir": str(work / f"spool-{device}")},
        "stats": {"interval_s": 5.0},
    }
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    config = work / f"edge-{device}.toml"
    config.write_text("\n".join(lines) + "\n")
    log = open(work / f"edge-{device}.log", "wb")
    return subprocess.Popen(
        ["nice", "-n", "5", python, "-m", "edge", "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


class HomeAssistant:
    def __init__(self, hass: str, config: Path, recorder: Recorder):
        self.hass, self.config, self.recorder = hass, config, recorder
        self.process: subprocess.Popen | None = None
        self.log = config / "home-assistant.log"

    def start(self, timeout: float) -> bool:
        """Start and wait for its MQTT birth message (sent once HA has fully started)."""
        since = time.monotonic()
        self.process = subprocess.Popen(
            ["nice", "-n", "10", self.hass, "-c", str(self.config), "--log-file", str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return (
            self.recorder.wait(
                lambda: (
                    self.recorder.seen_since(since, "homeassistant/status", "online") or self.process.poll() is not None
                ),
                timeout,
            )
            and self.process.poll() is None
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(120)

    def storage(self, key: str) -> dict:
        path = self.config / ".storage" / key
        return json.loads(path.read_text())["data"] if path.exists() else {}


def our_registry(ha: HomeAssistant, nodes: dict[str, str]) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Our devices (by device id) and their entities, from HA's registries."""
    devices = {}
    for entry in ha.storage("core.device_registry").get("devices", []):
        for domain, identifier in entry.get("identifiers", []):
            for device, node in nodes.items():
                if domain == "mqtt" and identifier == node:
                    devices[device] = entry
    entities: dict[str, list[dict]] = {device: [] for device in nodes}
    for entry in ha.storage("core.entity_registry").get("entities", []):
        for device, node in nodes.items():
            if entry.get("platform") == "mqtt" and str(entry.get("unique_id", "")).startswith(node + "_"):
                entities[device].append(entry)
    return devices, entities


def state_topic(entity_id: str) -> str:
    domain, _, object_id = entity_id.partition(".")
    return f"hass/{domain}/{object_id}/state"


def ha_log_lines(ha: HomeAssistant) -> tuple[list[str], list[str]]:
    """(WARNING/ERROR lines, lines of the MQTT integration) of HA's logs, both runs (HA renames the
    previous run's log to .1 when it starts)."""
    lines = []
    for path in (ha.log.with_name(ha.log.name + ".1"), ha.log):
        if path.exists():
            lines += path.read_text(errors="replace").splitlines()
    problems = [line for line in lines if " WARNING " in line or " ERROR " in line or " CRITICAL " in line]
    mqtt_lines = [line for line in lines if "[homeassistant.components.mqtt" in line]
    return problems, mqtt_lines


def about_us(line: str, nodes: dict[str, str]) -> bool:
    """A log line of the MQTT integration, or one naming our devices or topics."""
    return (
        "[homeassistant.components.mqtt" in line
        or any(f"edge-mood/{device}/" in line for device in DEVICES)
        or any(node in line for node in nodes.values())
    )


def print_grouped(lines: list[str], width: int = 300) -> None:
    """Log lines without their time stamps, repeats counted."""
    counts: dict[str, int] = {}
    for line in lines:
        text = line[24:] if line[:4].isdigit() else line
        counts[text] = counts.get(text, 0) + 1
    for text, count in counts.items():
        print(f"  {count:>3} x {text[:width]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hass", required=True, help="the hass executable of a Home Assistant Core venv")
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--photos", type=Path, default=SHARED / "data" / "photos")
    parser.add_argument("--start-timeout", type=float, default=900.0, help="seconds for HA's first start")
    args = parser.parse_args()
    for needed in (YUNET, args.photos / "12_angry_men.jpg"):
        if not needed.exists():
            raise SystemExit(f"ha: needs {needed}")
    work = args.work or Path(tempfile.mkdtemp(prefix="edge-ha-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"working folder {work}")

    from edge.discovery import discovery_messages, node_id
    from edge.locations import default_model
    from edge.topics import Topics

    labels = json.loads(default_model().with_suffix(".json").read_text())["labels"]
    nodes = {device: node_id(Topics("edge-mood", device)) for device in DEVICES}
    expected = {
        device: {
            config["unique_id"]: config.get("enabled_by_default", True)
            for _, config in discovery_messages(Topics("edge-mood", device), labels=labels)
            if "unique_id" in config
        }
        for device in DEVICES
    }

    broker, broker_port = start_mosquitto(work)
    recorder = Recorder(broker_port)
    ha = HomeAssistant(args.hass, work / "config", recorder)
    daemons: dict[str, subprocess.Popen] = {}
    try:
        write_ha_config(ha.config, broker_port)
        started = time.monotonic()
        if not check("Home Assistant started and connected to the broker", ha.start(args.start_timeout)):
            return 1
        say(f"Home Assistant up after {time.monotonic() - started:.0f} s")
        frames = work / "frames"
        write_frames(frames, args.photos, seconds=1800)
        for device in DEVICES:
            daemons[device] = start_daemon(work, device, broker_port, frames, sys.executable)

        # 1. Devices and entities appear; a face entering fires the event entity.
        def registered() -> bool:
            devices, entities = our_registry(ha, nodes)
            return len(devices) == len(DEVICES) and all(
                {e["unique_id"] for e in entities[d]} >= set(expected[d]) for d in DEVICES
            )

        recorder.wait(registered, 240)  # HA writes its registries about 10 s after a change
        devices, entities = our_registry(ha, nodes)
        check("two devices (ids differ only in case and punctuation) stay two devices", len(devices) == 2)
        for device in DEVICES:
            got = {e["unique_id"] for e in entities[device]}
            check(f"{device}: all {len(expected[device])} entities created", got >= set(expected[device]))
        enabled = {
            device: [e["entity_id"] for e in entities[device] if expected[device].get(e["unique_id"], False)]
            for device in DEVICES
        }

        def all_have_states(since: float = 0.0) -> bool:
            return all(
                recorder.seen_since(since, state_topic(entity_id))
                and recorder.value(state_topic(entity_id)) != "unavailable"
                for device in DEVICES
                for entity_id in enabled[device]
                if not entity_id.startswith("event.")
            )

        check("every enabled sensor has a state", recorder.wait(all_have_states, 120))
        event_entity = {
            device: next(e["entity_id"] for e in entities[device] if e["unique_id"].endswith("_face_event"))
            for device in DEVICES
        }
        first = next(iter(DEVICES))
        fired = recorder.wait(
            lambda: recorder.value(state_topic(event_entity[first]).replace("/state", "/event_type")) == '"face_enter"',
            120,
        )
        check(f"a face entering fires {event_entity[first]}", fired)
        print_entities(ha, nodes, recorder)

        # 2. HA restarts with automations: birth -> discovery again -> entities back -> automations fire.
        ha.stop()
        by_key = {e["unique_id"].removeprefix(nodes[first] + "_"): e["entity_id"] for e in entities[first]}
        automations = example_automations(by_key, devices[first]["id"], labels)
        write_ha_config(ha.config, broker_port, automations)
        restarted = time.monotonic()
        check("Home Assistant restarted", ha.start(300))
        announced = recorder.wait(
            lambda: all("discovery configs sent again" in (work / f"edge-{d}.log").read_text() for d in DEVICES), 60
        )
        check("both daemons sent discovery again on HA's birth message", announced)
        check("entities back after the restart", recorder.wait(lambda: all_have_states(restarted), 120))

        def counters_fired() -> bool:
            return all(
                recorder.seen_since(restarted, f"hass/counter/{name}/state")
                and recorder.value(f"hass/counter/{name}/state") not in ("0", None)
                for name in ("event_face_enter", "trigger_face_entered", "presence_on")
            )

        recorder.wait(counters_fired, 180)
        say("automation runs, by counter:")
        for name in automations:
            say(f"  {name:<26} {recorder.value(f'hass/counter/{name}/state')}")
        check("the event entity, the device trigger and presence fired automations", counters_fired())

        # 3. Stop one daemon cleanly, kill the other: every entity unavailable.
        stopped = time.monotonic()
        daemons["Living-Room"].send_signal(signal.SIGTERM)
        daemons["living_room"].send_signal(signal.SIGKILL)
        for process in daemons.values():
            process.wait(60)
        every = [e["entity_id"] for device in DEVICES for e in entities[device] if not e.get("disabled_by")]
        gone = recorder.wait(lambda: all(recorder.value(state_topic(x)) == "unavailable" for x in every), 120)
        say(f"unavailable after {time.monotonic() - stopped:.1f} s" if gone else "not all unavailable")
        check(f"stopping the daemons makes all {len(every)} enabled entities unavailable", gone)
    finally:
        for process in daemons.values():
            if process.poll() is None:
                process.kill()
        ha.stop()
        recorder.client.loop_stop()
        broker.terminate()

    print_registry(ha, nodes)
    problems, mqtt_lines = ha_log_lines(ha)
    say(f"HA log: {len(problems)} WARNING/ERROR lines (both runs)")
    print_grouped(problems)
    found = [line for line in mqtt_lines if "Found new component:" in line]
    say(
        f"HA log: {len(mqtt_lines)} lines of the MQTT integration; {len(found)} 'Found new component' (debug), by kind:"
    )
    kinds: dict[str, int] = {}
    for line in found:
        kind = line.split("Found new component: ", 1)[1].split()[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    print("  " + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())))
    print("  first: " + (found[0][:300] if found else "none"))
    say("HA log: the MQTT integration's lines above DEBUG:")
    print_grouped([line for line in mqtt_lines if " DEBUG " not in line])
    ours = [line for line in problems if about_us(line, nodes)]
    check("no warning or error from HA's MQTT integration or about our devices in HA's log", not ours)
    failed = [what for what, ok in results if not ok]
    say(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def print_entities(ha: HomeAssistant, nodes: dict[str, str], recorder: Recorder) -> None:
    _, entities = our_registry(ha, nodes)
    say("entities and their states in Home Assistant:")
    for device, listed in entities.items():
        for entry in sorted(listed, key=lambda e: e["entity_id"]):
            state = recorder.value(state_topic(entry["entity_id"]))
            shown = "(disabled by default)" if entry.get("disabled_by") else state
            print(f"  {device:<12} {entry['entity_id']:<46} {shown}")


def print_registry(ha: HomeAssistant, nodes: dict[str, str]) -> None:
    devices, entities = our_registry(ha, nodes)
    say("devices in HA's device registry:")
    for device, entry in devices.items():
        fields = {
            k: entry.get(k) for k in ("name", "serial_number", "suggested_area", "area_id", "sw_version", "hw_version")
        }
        print(f"  {device:<12} identifiers={entry['identifiers']} {fields}")
    say("entities in HA's entity registry:")
    for device, listed in entities.items():
        for entry in sorted(listed, key=lambda e: e["entity_id"]):
            extra = [
                entry.get("entity_category") or "",
                f"disabled by {entry['disabled_by']}" if entry.get("disabled_by") else "",
            ]
            print(f"  {device:<12} {entry['entity_id']:<46} {entry['unique_id']:<52} {' '.join(x for x in extra if x)}")


if __name__ == "__main__":
    sys.exit(main())
