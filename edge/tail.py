"""`edge tail`: watch what the daemons publish, one human-readable line per message (or raw JSON)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from edge.mqtt_client import (
    ANSWER_TIMEOUT_S,
    SHORT_CONNECTION_S,
    BrokerError,
    MqttSettings,
    TakeOverWatch,
    connect_or_raise,
    make_client,
    no_answer_error,
    refused_error,
)
from edge.topics import OFFLINE, parse, subscription

DEFAULT_KINDS = ("events", "state", "status")


def run_tail(
    settings: MqttSettings,
    *,
    all_devices: bool = False,
    raw: bool = False,
    kinds: Sequence[str] = DEFAULT_KINDS,
    count: int | None = None,
    out: TextIO | None = None,
    subscribed: threading.Event | None = None,
    until_offline: bool = False,
    stop: threading.Event | None = None,
) -> int:
    """Print messages of this device (or of every device under the prefix) until Ctrl-C, until `count`
    messages were printed, until a device says it went offline (`until_offline`; a retained `offline` from
    an earlier run does not count) or until `stop` is set. `subscribed` is set once messages can arrive.
    Returns the exit status; raises BrokerError when the broker cannot be reached or refuses the credentials."""
    out = out or sys.stdout
    filters = [subscription(settings.prefix, kind, None if all_devices else settings.device_id) for kind in kinds]
    # Its own client id: reusing the daemon's would make the broker disconnect the daemon.
    client = make_client(settings, f"edge-mood-tail-{uuid.uuid4().hex[:8]}")
    done = threading.Event()
    failed: list[BrokerError] = []
    printed = 0
    # Two short connections in a row: the tail stops before the daemon's own watch (three) would blame the
    # daemon's setup for a take-over the tail caused.
    takeover = TakeOverWatch(drops=2)

    def fail(error: BrokerError) -> None:
        failed.append(error)
        done.set()

    answered = threading.Event()
    lost = threading.Event()  # the connection dropped and paho is reconnecting: said once, and its return
    up_since: list[float] = []  # when the current connection came up (empty while down)

    def on_connect(client: mqtt.Client, _userdata, _flags, reason: mqtt.ReasonCode, _props) -> None:
        answered.set()
        if reason.is_failure:
            fail(refused_error(settings, reason))
            return
        if lost.is_set():
            lost.clear()
            print(f"edge tail: connected to broker {settings.broker} again", file=sys.stderr, flush=True)
        up_since[:] = [time.monotonic()]
        takeover.connected()
        client.subscribe([(f, 1) for f in filters])

    def on_subscribe(*_args) -> None:
        if subscribed is not None:
            subscribed.set()

    def on_disconnect(_client: mqtt.Client, _userdata, _flags, reason: mqtt.ReasonCode, _props) -> None:
        # Where the broker makes the login the client id (use_username_as_clientid), the tail on the daemon's
        # login takes the daemon's session, the daemon takes it back, and so on. Without a login no broker
        # can give the tail's own random id to anyone else.
        lasted = time.monotonic() - up_since[0] if up_since else None
        up_since.clear()
        if reason.value == 0 or done.is_set():  # our own disconnect
            return
        if settings.username and takeover.taken_over(reason):  # without a login nobody can share our id
            fail(_taken_over_error(settings))
        # Not for a connection that never came up (the answer to CONNECT tells why), nor, with a login, for
        # one closed within seconds, which may be the start of a take-over with its own line.
        elif lasted is not None and (not settings.username or lasted >= SHORT_CONNECTION_S) and not lost.is_set():
            lost.set()
            print(
                f"edge tail: lost connection to broker {settings.broker} ({reason}); reconnecting",
                file=sys.stderr,
                flush=True,
            )

    def on_message(_client: mqtt.Client, _userdata, msg: mqtt.MQTTMessage) -> None:
        nonlocal printed
        line = raw_line(msg) if raw else human_line(settings.prefix, msg)
        print(line, file=out, flush=True)
        printed += 1
        went_offline = msg.topic.endswith("/status") and msg.payload == OFFLINE.encode() and not msg.retain
        if (count is not None and printed >= count) or (until_offline and went_offline):
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    with _ctrl_c_sets(done):
        connect_or_raise(client, settings)
        client.loop_start()
        try:
            deadline = time.monotonic() + ANSWER_TIMEOUT_S
            while not (answered.wait(0.2) or done.is_set()):  # Ctrl-C meanwhile sets done
                if time.monotonic() > deadline:
                    fail(no_answer_error(settings))
            while not done.wait(0.2):
                if stop is not None and stop.is_set():
                    break
        finally:
            client.disconnect()
            client.loop_stop()
    if failed:
        raise failed[0]
    return 0


def _taken_over_error(settings: MqttSettings) -> BrokerError:
    return BrokerError(
        f"broker {settings.broker} keeps closing this connection within seconds of making it: "
        f"another client took its session; where the broker makes the login the client id "
        f"(use_username_as_clientid), that is the daemon on login {settings.username!r}: watch with a login of "
        f"your own that may read, e.g. edge tail --set mqtt.username=consumer --set mqtt.password_file=PATH"
    )


@contextmanager
def _ctrl_c_sets(done: threading.Event) -> Iterator[None]:
    """Ctrl-C (SIGINT) sets `done` instead of raising KeyboardInterrupt wherever the main thread happens to
    be, which could be inside a lock that paho's thread needs; off the main thread, signals are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: done.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def raw_line(msg: mqtt.MQTTMessage) -> str:
    """One JSON object per line: {"topic", "retained", "payload"} (payload parsed when it is JSON)."""
    text = msg.payload.decode("utf-8", errors="replace")
    try:
        payload: Any = json.loads(text)
    except ValueError:
        payload = text
    return json.dumps({"topic": msg.topic, "retained": bool(msg.retain), "payload": payload}, ensure_ascii=False)


def human_line(prefix: str, msg: mqtt.MQTTMessage) -> str:
    """'11:34:42.955 kitchen   #12 expression track 3: happy 0.91 (was neutral)'."""
    where = parse(prefix, msg.topic)
    device, kind = where if where else (msg.topic, "?")
    retained = " (retained)" if msg.retain else ""
    text = msg.payload.decode("utf-8", errors="replace")
    if kind == "status":
        return f"{_clock(None)} {device:<12} status {text}{retained}"
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    stamp = body.get("ts") if isinstance(body, dict) else None
    try:
        if not isinstance(body, dict):
            raise TypeError
        what = {"events": _event, "state": _state, "stats": _stats}.get(kind, _other)(body)
    except (KeyError, TypeError, ValueError):
        what = f"{kind} unreadable payload ({len(msg.payload)} bytes)"
    return f"{_clock(stamp)} {device:<12} {what}{retained}"


def _clock(iso: str | None) -> str:
    """Local wall-clock time of an ISO-8601 UTC stamp (or now), to the millisecond."""
    moment = None
    if isinstance(iso, str):
        try:
            moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
        except ValueError:
            moment = None
    moment = moment or datetime.now().astimezone()
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _confidence(value: Any) -> str:
    return f" {value:.2f}" if isinstance(value, (int, float)) else ""


def _event(body: dict[str, Any]) -> str:
    kind = body["type"]
    head = f"#{body['seq']} {kind} track {body['track_id']}"
    expression = body.get("expression")
    if kind == "expression":
        was = body.get("previous")
        return f"{head}: {expression}{_confidence(body.get('confidence'))}" + (f" (was {was})" if was else "")
    if kind == "face_leave":
        after = body.get("duration_s")
        settled = f": {expression}{_confidence(body.get('confidence'))}" if expression else ""
        return f"{head}{settled}" + (f" after {after:.1f} s" if isinstance(after, (int, float)) else "")
    return head


def _state(body: dict[str, Any]) -> str:
    count = body["face_count"]
    faces = f"{count} face" + ("" if count == 1 else "s")
    if not body.get("mood"):
        return f"state {faces}, no mood"
    counts = ", ".join(f"{name} {n}" for name, n in (body.get("counts") or {}).items())
    return f"state {faces}, mood {body['mood']}{_confidence(body.get('mood_confidence'))}" + (
        f" ({counts})" if counts else ""
    )


def _stats(body: dict[str, Any]) -> str:
    parts = [
        f"{body.get('fps', 0):.1f} fps",
        f"{body.get('faces', 0)} faces",
        f"spool {body.get('spool_depth', 0)} (dropped {body.get('spool_dropped', 0)})",
    ]
    if isinstance(body.get("cpu_percent"), (int, float)):
        parts.append(f"cpu {body['cpu_percent']:.0f}%")
    return "stats " + ", ".join(parts)


def _other(body: dict[str, Any]) -> str:
    return json.dumps(body)
