"""A fleet on one broker: N `edge run` daemons, each its own device, against one mosquitto started here.

Each daemon reads the same scripted scene (tests/scenes.py: a real face from ../shared coming and going,
so every device makes events) as a paced image folder at `--fps`, and has its own device id, spool and,
unless `--anonymous`, its own broker login under the shipped ACL (docs/mosquitto/, logins made with
add-device.sh). After `--seconds` every daemon gets SIGTERM. A monitor subscribed to everything checks:

- unique client ids (from the broker's connection log) and no session take-over;
- per-device topics and no cross-talk: every message of edge-mood/<dev>/ names <dev>, each device's events
  come with one epoch of their own and seq 1, 2, 3, ... with nothing missing or foreign;
- retained state, status ("offline" after the stop) and discovery configs for every device, read by a
  fresh client after the stop;
- a clean stop: every daemon exits 0 within the unit's TimeoutStopSec (30 s);

and measures the broker's CPU and memory (from /proc, once a second) and the message rates.

    python bench/fleet.py                       # 20 daemons, 2 fps, 60 s, per-device logins and the ACL
    python bench/fleet.py --daemons 5 --seconds 20 --anonymous

Linux only (/proc); needs mosquitto, mosquitto_passwd and ../shared. Not part of the test suite: a fleet of
20 takes minutes of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/scenes.py makes the frames

from edge.discovery import discovery_messages  # noqa: E402
from edge.locations import default_model  # noqa: E402
from edge.topics import Topics  # noqa: E402
from tests.scenes import SHARED, YUNET, Segment, write_images  # noqa: E402

MOSQUITTO_DOCS = REPO / "docs" / "mosquitto"
STOP_TIMEOUT_S = 30.0  # the unit's TimeoutStopSec
# With use_username_as_clientid every client needs a login of its own (two clients on one login push each
# other off): the monitor and the reader of retained messages get two read-only logins of their own.
MONITOR = ("fleet_monitor", "monitor-password")
READER = ("fleet_reader", "reader-password")
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def device_ids(count: int) -> list[str]:
    return [f"fleet_{i:02d}" for i in range(count)]


def password(device: str) -> str:
    return f"pw-{device}"


def start_broker(work: Path, devices: list[str], acl: bool) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    log = work / "mosquitto.log"
    lines = [
        f"listener {port} 127.0.0.1",
        "persistence false",
        "max_queued_messages 100000",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    if acl:
        passwd, acl_file = work / "passwd", work / "edge-mood.acl"
        shutil.copy(MOSQUITTO_DOCS / "edge-mood.acl", acl_file)
        subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), *MONITOR], check=True)
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), *READER], check=True)
        with open(acl_file, "a") as out:
            for user, _ in (MONITOR, READER):
                out.write(f"\nuser {user}\ntopic read edge-mood/#\ntopic read homeassistant/#\n")
        for device in devices:
            env = {
                **os.environ,
                "MOSQUITTO_PASSWD_FILE": str(passwd),
                "MOSQUITTO_ACL_FILE": str(acl_file),
                "EDGE_MOOD_DEVICE_PASSWORD": password(device),
            }
            subprocess.run([str(MOSQUITTO_DOCS / "add-device.sh"), device], env=env, check=True, capture_output=True)
        for line in (MOSQUITTO_DOCS / "edge-mood.conf").read_text().splitlines():
            key = line.split(" ", 1)[0]
            if line and not line.startswith("#"):
                lines.append(
                    {"password_file": f"password_file {passwd}", "acl_file": f"acl_file {acl_file}"}.get(key, line)
                )
    else:
        lines.append("allow_anonymous true")
    (work / "mosquitto.conf").write_text("\n".join(lines) + "\n")
    with open(log, "wb") as out:
        broker = subprocess.Popen(
            ["mosquitto", "-c", str(work / "mosquitto.conf")], stdout=out, stderr=subprocess.STDOUT, cwd=work
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return broker, port, log
        except OSError:
            time.sleep(0.05)
    broker.kill()
    raise SystemExit(f"mosquitto did not start: {log.read_text()[-1000:]}")


def write_scene(folder: Path, fps: float, seconds: float) -> int:
    """Enough paced frames for the run: visits of a face (enter, happy, leave), over and over."""
    visit = [Segment(int(fps * 3), 2.4), Segment(int(fps * 3), None)]
    visits = int(seconds / 6) + 10  # and some to spare: the daemons are stopped before the scene ends
    return write_images(folder, [Segment(int(fps), None)] + visit * visits)


def write_config(work: Path, device: str, port: int, frames: Path, fps: float, acl: bool) -> Path:
    sections: dict[str, dict] = {
        "source": {"uri": str(frames), "fps": fps, "realtime": True},
        "detector": {"kind": "yunet", "yunet_model": str(YUNET)},
        "model": {"threads": 1},
        "tracking": {"leave_after_s": 1.0},
        "mqtt": {"host": "127.0.0.1", "port": port, "device_id": device},
        "spool": {"dir": str(work / "state" / device)},
        "stats": {"interval_s": 5.0},
    }
    if acl:
        secret = work / f"{device}.password"
        secret.write_text(password(device))
        sections["mqtt"].update(username=device, password_file=str(secret))
    path = work / f"{device}.toml"
    path.write_text(
        "\n".join(
            f"[{name}]\n" + "\n".join(f"{key} = {json.dumps(value)}" for key, value in keys.items())
            for name, keys in sections.items()
        )
        + "\n"
    )
    return path


@dataclass
class Monitor:
    """Everything the devices publish, checked as it arrives."""

    port: int
    acl: bool
    messages: Counter = field(default_factory=Counter)  # kind -> count
    events: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    foreign: list[str] = field(default_factory=list)  # messages whose payload names another device
    status: dict[str, str] = field(default_factory=dict)  # device -> its last status
    first_at: float | None = None
    last_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> mqtt.Client:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="fleet-monitor")
        if self.acl:
            client.username_pw_set(*MONITOR)
        subscribed = threading.Event()
        client.on_connect = lambda c, *_: c.subscribe([("edge-mood/#", 1)])
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = self.on_message
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        if not subscribed.wait(10):
            raise SystemExit("the monitor could not subscribe")
        return client

    def on_message(self, _client, _userdata, message: mqtt.MQTTMessage) -> None:
        _, device, kind = message.topic.split("/")
        now = time.monotonic()
        with self.lock:
            self.messages[kind] += 1
            self.first_at = self.first_at or now
            self.last_at = now
            if kind == "status":
                self.status[device] = message.payload.decode()
                return
            body = json.loads(message.payload)
            if body.get("device") != device:
                self.foreign.append(message.topic)
            if kind == "events":
                self.events[device].append(body)


def read_retained(port: int, acl: bool, topics: list[str], expected: int) -> dict[str, bytes]:
    """topic -> payload of the retained messages under `topics`, read by a fresh client."""
    got: dict[str, bytes] = {}
    done = threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="fleet-reader")
    if acl:
        client.username_pw_set(*READER)

    def on_message(_c, _u, message: mqtt.MQTTMessage) -> None:
        if message.retain:
            got[message.topic] = bytes(message.payload)
            if len(got) >= expected:
                done.set()

    client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.wait(10)
    client.disconnect()
    client.loop_stop()
    return got


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """CPU % and RSS of the broker and the daemons, once a second."""

    def __init__(self, broker: int, daemons: list[int]):
        super().__init__(daemon=True)
        self.broker, self.daemons = broker, daemons
        self.broker_cpu: list[float] = []
        self.broker_rss: list[float] = []
        self.daemon_rss: list[float] = []
        self.daemon_cpu: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        last = {pid: cpu_seconds(pid) for pid in [self.broker, *self.daemons]}
        at = time.monotonic()
        while not self.stop.wait(1.0):
            now = time.monotonic()
            try:
                cpu = {pid: cpu_seconds(pid) for pid in last}
                self.broker_rss.append(rss_mb(self.broker))
                self.daemon_rss.append(sum(rss_mb(pid) for pid in self.daemons) / len(self.daemons))
            except FileNotFoundError:
                return  # a process is gone: the run is over
            self.broker_cpu.append(100 * (cpu[self.broker] - last[self.broker]) / (now - at))
            self.daemon_cpu.append(100 * sum(cpu[p] - last[p] for p in self.daemons) / (now - at) / len(self.daemons))
            last, at = cpu, now


def check_events(devices: list[str], monitor: Monitor) -> list[str]:
    problems = []
    epochs = {}
    for device in devices:
        events = monitor.events.get(device, [])
        if not events:
            problems.append(f"{device}: no events")
            continue
        seqs = [e["seq"] for e in events]
        if sorted(set(seqs)) != list(range(1, max(seqs) + 1)):
            problems.append(f"{device}: seq {seqs[:10]}... not 1..{max(seqs)}")
        device_epochs = {e["epoch"] for e in events}
        if len(device_epochs) != 1:
            problems.append(f"{device}: {len(device_epochs)} epochs")
        epochs[device] = device_epochs.pop()
    if len(set(epochs.values())) != len(epochs):
        problems.append("two devices share an epoch")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemons", type=int, default=20)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="run time after the last daemon is online")
    parser.add_argument("--anonymous", action="store_true", help="no logins and no ACL")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, configs)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs {SHARED} (a real face for the scene and the YuNet model)")
    for tool in ("mosquitto", "mosquitto_passwd"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found (apt install mosquitto)")
    acl = not args.anonymous
    work = Path(tempfile.mkdtemp(prefix="edge-fleet-"))
    devices = device_ids(args.daemons)
    labels = json.loads(default_model().with_suffix(".json").read_text())["labels"]
    expected_discovery = sorted(
        topic for device in devices for topic, _ in discovery_messages(Topics("edge-mood", device), labels=labels)
    )
    frames = work / "frames"
    write_scene(frames, args.fps, args.seconds + args.daemons)
    broker, port, broker_log = start_broker(work, devices, acl)
    monitor = Monitor(port, acl)
    watcher = monitor.start()
    daemons: dict[str, subprocess.Popen] = {}
    logs = {}
    try:
        started = time.monotonic()
        for device in devices:
            logs[device] = open(work / f"{device}.log", "w")
            daemons[device] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge",
                    "run",
                    "--config",
                    str(write_config(work, device, port, frames, args.fps, acl)),
                ],
                stdout=logs[device],
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("EDGE_MOOD_")},
            )
            time.sleep(0.3)  # a little stagger: 20 model loads at once only slow each other down
        deadline = time.monotonic() + 120
        while sum(s == "online" for s in monitor.status.values()) < len(devices) and time.monotonic() < deadline:
            time.sleep(0.1)
        startup_s = time.monotonic() - started
        sampler = Sampler(broker.pid, [d.pid for d in daemons.values()])
        sampler.start()
        counted_from = dict(monitor.messages)
        window_start = time.monotonic()
        time.sleep(args.seconds)
        window = time.monotonic() - window_start
        in_window = {kind: monitor.messages[kind] - counted_from.get(kind, 0) for kind in monitor.messages}
        sampler.stop.set()
        sampler.join()
        stop_started = time.monotonic()
        for daemon in daemons.values():
            daemon.send_signal(signal.SIGTERM)
        exit_codes = {}
        for device, daemon in daemons.items():
            try:
                exit_codes[device] = daemon.wait(max(0.1, stop_started + STOP_TIMEOUT_S - time.monotonic()))
            except subprocess.TimeoutExpired:
                daemon.kill()
                exit_codes[device] = "killed"
        stop_s = time.monotonic() - stop_started
        time.sleep(1)  # the last events and the "offline" reach the monitor
        retained = read_retained(
            port,
            acl,
            ["edge-mood/+/status", "edge-mood/+/state", "homeassistant/+/+/+/config"],
            2 * len(devices) + len(expected_discovery),
        )
    finally:
        for daemon in daemons.values():
            if daemon.poll() is None:
                daemon.kill()
        for log in logs.values():
            log.close()
        watcher.disconnect()
        watcher.loop_stop()
        broker.terminate()
        broker.wait(10)

    log_text = broker_log.read_text(errors="replace")
    client_ids = re.findall(r"New client connected from \S+ as (\S+) ", log_text)
    ids = {*devices, *(f"edge-mood-{d}" for d in devices)}  # the login, or the default id without logins
    device_clients = [c for c in client_ids if c in ids]
    takeovers = len(re.findall(r"already connected, closing old connection", log_text))
    statuses = {t.split("/")[1]: v for t, v in retained.items() if t.endswith("/status")}
    states = [t for t in retained if t.endswith("/state")]
    discovery = [t for t in retained if t.startswith("homeassistant/")]
    problems = check_events(devices, monitor)
    problems += [f"cross-talk: {t}" for t in monitor.foreign[:5]]
    if len(set(device_clients)) != len(devices) or len(device_clients) != len(devices):
        problems.append(f"client ids: {len(device_clients)} connections, {len(set(device_clients))} distinct")
    if takeovers:
        problems.append(f"{takeovers} session take-overs")
    if [d for d in devices if statuses.get(d) != b"offline"]:
        problems.append(f"status not offline: {[d for d in devices if statuses.get(d) != b'offline']}")
    if len(states) != len(devices):
        problems.append(f"retained state for {len(states)} of {len(devices)} devices")
    if sorted(discovery) != expected_discovery:
        problems.append(f"{len(discovery)} discovery configs, expected {len(expected_discovery)}")
    if any(code != 0 for code in exit_codes.values()):
        problems.append(f"exit codes: {Counter(map(str, exit_codes.values()))}")
    for device in devices:
        text = (work / f"{device}.log").read_text(errors="replace")
        if "Traceback" in text or " ERROR " in text:
            problems.append(f"{device}: errors in its log")

    total_events = sum(len(v) for v in monitor.events.values())
    rows = [
        ("daemons", f"{len(devices)} at {args.fps:g} fps, {'per-device logins + ACL' if acl else 'anonymous'}"),
        ("all online after", f"{startup_s:.1f} s"),
        ("measured window", f"{window:.1f} s"),
        (
            "messages/s in window",
            f"{sum(in_window.values()) / window:.1f} "
            + "("
            + ", ".join(f"{k} {v / window:.2f}" for k, v in sorted(in_window.items()))
            + ")",
        ),
        ("events total / per device", f"{total_events} / {total_events / len(devices):.1f}"),
        ("broker CPU % mean / max", f"{statistics.mean(sampler.broker_cpu):.2f} / {max(sampler.broker_cpu):.2f}"),
        ("broker RSS MB max", f"{max(sampler.broker_rss):.1f}"),
        ("daemon CPU % mean (each)", f"{statistics.mean(sampler.daemon_cpu):.1f}"),
        ("daemon RSS MB mean (each)", f"{statistics.mean(sampler.daemon_rss):.1f}"),
        ("client ids", f"{len(set(device_clients))} distinct of {len(device_clients)} device connections"),
        ("session take-overs", str(takeovers)),
        ("cross-talk messages", str(len(monitor.foreign))),
        ("retained status offline", f"{sum(statuses.get(d) == b'offline' for d in devices)} / {len(devices)}"),
        ("retained state", f"{len(states)} / {len(devices)}"),
        ("retained discovery configs", f"{len(discovery)} / {len(expected_discovery)}"),
        ("clean stop (exit 0)", f"{sum(c == 0 for c in exit_codes.values())} / {len(devices)} in {stop_s:.1f} s"),
        ("checks", "ok" if not problems else "FAILED: " + "; ".join(problems)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'':{width}} | fleet on one mosquitto |\n| {'-' * width} | --- |")
    for name, value in rows:
        print(f"| {name:{width}} | {value} |")
    if args.keep:
        print(f"work folder: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
