"""Shared fixtures: a real MQTT broker process and a subscriber that records what arrives.

    def test_something(broker, subscriber):
        sub = subscriber(broker, "edge-mood/+/events")         # connected and subscribed on return
        ...publish to broker.host:broker.port...
        messages = sub.wait_for(3)                              # the first 3 messages (fails after a timeout)
        broker.stop()                                           # SIGKILL: an outage, no clean shutdown
        broker.start()                                          # same port again

The broker is mosquitto (found on PATH or in /usr/sbin) with a generated config: one listener on a free
127.0.0.1 port, anonymous access, no persistence. Where mosquitto is not installed, the pure-Python
amqtt broker (pip install amqtt, MQTT 3.1.1 only) stands in; with neither, broker tests are skipped.
EDGE_TEST_BROKER=mosquitto|amqtt picks one explicitly. `broker.protocol` is the newest MQTT version the
running broker speaks ("5" or "3.1.1"); `broker_factory(...)` makes brokers with a password file,
persistence or extra mosquitto config lines. `make_publisher(broker, ...)` starts the daemon's Publisher
against one (tests/mqtt_support.py has an event to publish and `wait_until`); `pki` is a folder of test
certificates made with openssl (tests/tls_support.py).

For the whole run, the daemon downloads nothing (detector.yunet_url is empty) and its data folder is a
fresh temporary one, so no test reaches the internet or sees a detector fetched on this machine before.
At the end, the run says how many tests were skipped because ../shared (the team's data) is absent, and
what they cover.
"""

from __future__ import annotations

import http.server
import importlib.util
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
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.publisher import MqttSettings, Publisher
from edge.spool import Spool
from tests.tls_support import make_pki

START_TIMEOUT_S = 15.0
WAIT_TIMEOUT_S = 20.0  # generous: the test machines are small and shared
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

_collected_per_module: Counter[str] = Counter()


def pytest_configure(config: pytest.Config) -> None:
    # Subprocesses started by tests inherit both.
    os.environ["EDGE_MOOD_DETECTOR_YUNET_URL"] = ""
    data_home = tempfile.mkdtemp(prefix="edge-mood-test-data-")
    os.environ["XDG_DATA_HOME"] = data_home
    config.add_cleanup(lambda: shutil.rmtree(data_home, ignore_errors=True))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _collected_per_module.update(item.nodeid.split("::")[0] for item in items)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _module_summary(path: str, width: int = 110) -> str:
    """The first sentence of a test module's docstring (what its tests cover), cut to `width` characters."""
    module = sys.modules.get(path.removesuffix(".py").replace("/", "."))
    paragraph = " ".join((getattr(module, "__doc__", None) or "").strip().split("\n\n")[0].split())
    sentence = paragraph.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= width else sentence[: width - 3].rsplit(" ", 1)[0] + "..."


def pytest_terminal_summary(terminalreporter) -> None:
    """How many tests did not run for lack of ../shared, and what they cover: a newcomer's run passes
    without it, and should say so rather than look complete."""
    lacking = [r for r in terminalreporter.stats.get("skipped", []) if "shared" in _skip_reason(r).lower()]
    if not lacking:
        return
    per_module = Counter(report.nodeid.split("::")[0] for report in lacking)
    where = "is absent" if not SHARED.is_dir() else "lacks some files"
    terminalreporter.write_sep("=", f"{len(lacking)} tests skipped because {SHARED} {where}")
    for module, count in sorted(per_module.items()):
        of = _collected_per_module.get(module, count)
        terminalreporter.write_line(f"  {module}: {count} of {of}. {_module_summary(module)}")
    terminalreporter.write_line(
        "  They need the team's real photos, FER2013, teachers or the YuNet model (../shared/README.md); "
        "every other test ran."
    )


def _mosquitto_binary() -> str | None:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _amqtt_command() -> list[str] | None:
    if importlib.util.find_spec("amqtt") is not None:
        return [sys.executable, "-m", "amqtt.scripts.broker_script"]
    found = shutil.which("amqtt")
    return [found] if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A broker process on 127.0.0.1:<port>. Keeps its port across stop()/start()."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        kind: str,
        *,
        users: dict[str, str] | None = None,
        persistent: bool = False,
        extra_config: tuple[str, ...] = (),
    ):
        self.kind = kind
        self.workdir = workdir
        self.users = dict(users or {})
        self.persistent = persistent
        self.extra_config = extra_config
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / f"{kind}.log"

    @property
    def protocol(self) -> str:
        """The newest MQTT version this broker speaks: "5" (mosquitto) or "3.1.1" (amqtt)."""
        return "5" if self.kind == "mosquitto" else "3.1.1"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start (or restart) on the same port; returns once the port accepts connections."""
        if self.running:
            return
        command = self._mosquitto_command() if self.kind == "mosquitto" else self._amqtt_command()
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start: {self.log_tail()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not accept connections on port {self.port}: {self.log_tail()}")

    def stop(self, crash: bool = True) -> None:
        """SIGKILL by default: the broker vanishes as in a crash or a power cut (no clean disconnects).
        crash=False sends SIGTERM: connections still drop, but a persistent broker saves what it acknowledged."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL if crash else signal.SIGTERM)
        if self.process is not None:
            self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _mosquitto_command(self) -> list[str]:
        config = [
            f"listener {self.port} {self.host}",
            "set_tcp_nodelay true",
            "max_queued_messages 100000",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            config.append("user root")  # else it drops to user mosquitto, who cannot write in our tmp folder
        if self.users:
            passwd = self.workdir / "passwd"
            passwd.unlink(missing_ok=True)
            for user, password in self.users.items():
                flags = ["-b"] if passwd.exists() else ["-c", "-b"]
                subprocess.run(
                    ["mosquitto_passwd", *flags, str(passwd), user, password], check=True, capture_output=True
                )
            config += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            config.append("allow_anonymous true")
        if self.persistent:
            # Save after every change, so a SIGKILL keeps sessions and queued messages.
            config += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        else:
            config.append("persistence false")
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join([*config, *self.extra_config]) + "\n")
        return [_mosquitto_binary() or "mosquitto", "-c", str(path)]

    def _amqtt_command(self) -> list[str]:
        path = self.workdir / "amqtt.yaml"
        path.write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: {self.host}:{self.port}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        return [*(_amqtt_command() or ["amqtt"]), "-c", str(path)]


def _broker_kind() -> str | None:
    wanted = os.environ.get("EDGE_TEST_BROKER", "").strip().lower()
    if wanted == "mosquitto":
        return "mosquitto" if _mosquitto_binary() else None
    if wanted == "amqtt":
        return "amqtt" if _amqtt_command() else None
    if _mosquitto_binary():
        return "mosquitto"
    return "amqtt" if _amqtt_command() else None


@pytest.fixture
def broker_factory(tmp_path_factory) -> Iterator[Callable[..., Broker]]:
    """make(users={"u": "pw"}, persistent=False, extra_config=()) -> a started Broker.

    Password files, persistence and extra config need mosquitto; such tests are skipped under amqtt.
    """
    made: list[Broker] = []
    kind = _broker_kind()

    def make(
        *, users: dict[str, str] | None = None, persistent: bool = False, extra_config: tuple[str, ...] = ()
    ) -> Broker:
        if kind is None:
            pytest.skip("no MQTT broker: install mosquitto (apt install mosquitto) or `pip install amqtt`")
        if kind != "mosquitto" and (users or persistent or extra_config):
            pytest.skip("needs mosquitto (password file / persistence / extra config); only amqtt is installed")
        if users and not shutil.which("mosquitto_passwd"):
            pytest.skip("mosquitto_passwd not found (apt install mosquitto)")
        b = Broker(tmp_path_factory.mktemp(kind), kind, users=users, persistent=persistent, extra_config=extra_config)
        made.append(b)
        b.start()
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A running broker on a free 127.0.0.1 port (anonymous, no persistence); killed after the test."""
    return broker_factory()


@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_at: float = field(default_factory=time.monotonic)

    def json(self):
        return json.loads(self.payload)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")


class Subscriber:
    """A paho client subscribed to some topics that records every message, thread-safely.

    Re-subscribes by itself after the broker comes back. `persistent=True` keeps a session on the
    broker (MQTT 3.1.1, clean_session false), so with a persistent broker nothing published while it
    reconnects is missed.
    """

    def __init__(
        self,
        broker: Broker,
        *topics: str,
        qos: int = 1,
        protocol: str | None = None,
        username: str | None = None,
        password: str | None = None,
        persistent: bool = False,
        client_id: str | None = None,
    ):
        self.topics = topics
        self.qos = qos
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        protocol = "3.1.1" if persistent else (protocol or broker.protocol)
        kwargs = {"clean_session": False} if persistent else {}
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
            **kwargs,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(WAIT_TIMEOUT_S):
            self.close()
            raise RuntimeError(f"subscriber could not subscribe to {topics} on port {broker.port}")

    def _on_connect(self, client, _userdata, _flags, reason, _props) -> None:
        if not reason.is_failure:
            client.subscribe([(t, self.qos) for t in self.topics])

    def _on_message(self, _client, _userdata, msg: mqtt.MQTTMessage) -> None:
        # amqtt 0.12 also hands a new client the retained messages of other clients' subscriptions.
        if not any(mqtt.topic_matches_sub(t, msg.topic) for t in self.topics):
            return
        with self._cond:
            self.messages.append(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))
            self._cond.notify_all()

    def received(self, topic: str | None = None) -> list[Message]:
        """A snapshot of what has arrived so far (on `topic` only, if given)."""
        with self._cond:
            return [m for m in self.messages if topic is None or mqtt.topic_matches_sub(topic, m.topic)]

    def wait_until(
        self, predicate: Callable[[list[Message]], bool], timeout: float = WAIT_TIMEOUT_S, topic: str | None = None
    ) -> list[Message]:
        """Wait until predicate(messages so far) holds; fail the test (naming what arrived) otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [m for m in self.messages if topic is None or mqtt.topic_matches_sub(topic, m.topic)]
                if predicate(got):
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    shown = [(m.topic, m.payload[:80]) for m in got[-5:]]
                    pytest.fail(
                        f"timed out after {timeout} s waiting on {self.topics}: {len(got)} messages, last {shown}"
                    )
                self._cond.wait(left)

    def wait_for(self, count: int, timeout: float = WAIT_TIMEOUT_S, topic: str | None = None) -> list[Message]:
        """The first `count` messages (on `topic`, if given), waiting for them to arrive."""
        return self.wait_until(lambda got: len(got) >= count, timeout, topic)[:count]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber() -> Iterator[Callable[..., Subscriber]]:
    """make(broker, *topics, qos=1, protocol=None, username=None, password=None, persistent=False)
    -> a connected, subscribed Subscriber; closed after the test."""
    made: list[Subscriber] = []

    def make(broker: Broker, *topics: str, **options) -> Subscriber:
        s = Subscriber(broker, *topics, **options)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def make_publisher(tmp_path: Path) -> Iterator[Callable[..., Publisher]]:
    """make(broker, spool=None, labels=(), **settings) -> a started Publisher of device cam1 (unless
    settings say otherwise) that reconnects within 0.05-0.5 s, on its own spool unless one is given;
    stopped and its spool closed after the test."""
    made: list[Publisher] = []

    def make(broker: Broker, spool: Spool | None = None, labels: Sequence[str] = (), **changes) -> Publisher:
        values = dict(
            host=broker.host,
            port=broker.port,
            protocol=broker.protocol,
            device_id="cam1",
            reconnect_min_s=0.05,
            reconnect_max_s=0.5,
            discovery=False,
        )
        values.update(changes)
        spool = spool or Spool(tmp_path / f"spool{len(made)}.sqlite3")
        publisher = Publisher(MqttSettings(**values), spool, labels=labels)
        made.append(publisher)
        publisher.start()
        return publisher

    yield make
    for publisher in made:
        publisher.stop(timeout=2)
        publisher.spool.close()


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A folder of test certificates (tests/tls_support.py: ca, other-ca, server, wrong-name, client)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not found; it makes the test certificates (apt install openssl)")
    return make_pki(tmp_path / "pki")


Served = tuple[str, list[str]]  # base URL, paths requested so far


@pytest.fixture
def serve() -> Iterator[Callable[[Path], Served]]:
    """serve(folder) -> (base URL, requests): a real HTTP server on a free 127.0.0.1 port over `folder`."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(folder: Path) -> Served:
        requests: list[str] = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_message(self, *_args) -> None:  # called once per request
                requests.append(self.path)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
