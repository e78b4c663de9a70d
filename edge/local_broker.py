"""A throwaway MQTT broker for `edge demo` where none answers: mosquitto when it is installed, else the
pure-Python amqtt (a dependency of edge-mood). A child process on a free 127.0.0.1 port, anonymous, without
persistence, that ends with the demo.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edge.mqtt_client import BrokerError

HOST = "127.0.0.1"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LocalBroker:
    name: str  # "mosquitto" or "amqtt"
    port: int
    protocol: str  # the newest MQTT version it speaks: "5" or "3.1.1"
    host: str = HOST


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def mosquitto_binary() -> str | None:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _mosquitto(workdir: Path, port: int) -> list[str] | None:
    binary = mosquitto_binary()
    if binary is None:
        return None
    config = workdir / "mosquitto.conf"
    config.write_text(f"listener {port} {HOST}\nallow_anonymous true\npersistence false\nlog_dest stdout\n")
    return [binary, "-c", str(config)]


def _amqtt(workdir: Path, port: int) -> list[str]:
    config = workdir / "amqtt.yaml"
    config.write_text(
        "listeners:\n  default:\n    type: tcp\n"
        f"    bind: {HOST}:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
    )
    return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(config)]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _started(process: subprocess.Popen, port: int) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        if answers(HOST, port, timeout=0.5):
            return True
        time.sleep(0.05)
    return False


# name -> (newest MQTT version it speaks, its command line for a workdir and a port; None: not installed)
BROKERS: dict[str, tuple[str, Callable[[Path, int], list[str] | None]]] = {
    "mosquitto": ("5", _mosquitto),
    "amqtt": ("3.1.1", _amqtt),
}


@contextmanager
def local_broker(workdir: Path, kinds: Sequence[str] = tuple(BROKERS)) -> Iterator[LocalBroker]:
    """The first of `kinds` that starts, running until the block ends. Raises BrokerError when none starts."""
    failures = []
    for name in kinds:
        protocol, make_command = BROKERS[name]
        port = _free_port()
        command = make_command(workdir, port)
        if command is None:
            continue
        log = workdir / f"{name}.log"
        with log.open("wb") as out:
            # Its own session: the terminal's Ctrl-C goes to the demo, which then stops the broker last.
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if _started(process, port):
            break
        _stop(process)
        last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        failures.append(f"{name}: {last[0]}")
    else:
        raise BrokerError(
            f"no MQTT broker could be started here ({'; '.join(failures) or 'none installed'}); install mosquitto "
            f"(apt install mosquitto) or give a running broker with --broker HOST[:PORT]"
        )
    try:
        yield LocalBroker(name, port, protocol)
    finally:
        _stop(process)
