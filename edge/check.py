"""`edge check`: try every part the daemon needs, once, and print a readable report."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge.config import Config
from edge.errors import UserError
from edge.locations import SERVICE_STATE_DIR, system_install, user_state_dir
from edge.mqtt_client import (
    ANSWER_TIMEOUT_S,
    MqttSettings,
    connect_or_raise,
    make_client,
    no_answer_error,
    refused_error,
)
from edge.spool import peek
from edge.wiring import build_detector, load_model, open_frame_source, spool_path

SOURCE_TIMEOUT_S = 10.0
SPOOL_HEADROOM = 64 * 1024  # bytes that opening a spool and storing an event take: its -wal and -shm files


def run_check(config: Config) -> int:
    """Exit status 0 when every part works, 1 otherwise."""
    results: list[tuple[str, bool, str]] = []

    def step(name: str, action: Callable[[], str]) -> object:
        try:
            results.append((name, True, action()))
            return True
        except UserError as exc:
            results.append((name, False, str(exc)))
        except Exception as exc:  # a check reports every failure instead of stopping at the first
            results.append((name, False, f"{type(exc).__name__}: {exc}"))
        return False

    step("config", lambda: f"{config.path or 'built-in defaults'} (device {config.device_id})")
    holder: dict = {}

    def model() -> str:
        holder["model"] = m = load_model(config)
        c = m.card
        return (
            f"{m.model_id} at {m.path} ({m.precision}, {len(m.labels)} labels, "
            f"input {c.channels}x{c.height}x{c.width} {c.color})"
        )

    if step("model", model):
        step("detector", lambda: build_detector(config, holder["model"]).name)
    step("source", lambda: _read_one_frame(config))
    step("spool", lambda: _spool_report(config))
    step("broker", lambda: probe_broker(MqttSettings.from_config(config)))

    print("edge-mood check")
    for name, ok, text in results:
        print(f"  {name:<9} {'ok  ' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok, _ in results) else 1


def _read_one_frame(config: Config) -> str:
    source = open_frame_source(config)
    got: dict = {}
    reader = threading.Thread(target=lambda: got.setdefault("image", source.read()), daemon=True)
    reader.start()
    reader.join(SOURCE_TIMEOUT_S)
    source.close()
    image = got.get("image")
    if image is None:
        raise UserError(
            f"{source.description} opened but gave no frame within {SOURCE_TIMEOUT_S:.0f} s; "
            f"check the camera cable or the stream"
        )
    return f"{source.description}: {image.shape[1]}x{image.shape[0]} frame read"


def spool_to_check(config: Config, prefix: str = sys.prefix) -> Path:
    """The spool the daemon will use; for the installed copy run by hand (`sudo edge check`), the service's
    where neither spool.dir nor systemd names another."""
    if system_install(prefix) and config.state_dir == user_state_dir():
        return spool_path(config.replaced({"spool.dir": str(SERVICE_STATE_DIR)}))
    return spool_path(config)


def _spool_report(config: Config) -> str:
    """Read only: the check must not make the spool (as root, in the service's folder) nor touch its files."""
    path = spool_to_check(config)
    looked_at = UserError(f"{path} cannot be looked at (permission denied); run edge check with sudo")
    try:
        if path.exists():
            if not os.access(path, os.R_OK):
                raise looked_at
            depth, last_seq = peek(path)
            _refuse_what_run_would(path)
            return f"{path} ({depth} events waiting, last seq {last_seq}){_moved_aside(path)}"
        folder = next(p for p in path.parents if p.exists())
    except PermissionError:
        raise looked_at from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{path} cannot be made: {folder} is not a folder this user may write in; fix spool.dir")
    return f"{path} (none yet: the daemon makes it at start)"


def _refuse_what_run_would(spool: Path) -> None:
    """What `edge run` would meet opening the spool for writing (its -wal and -shm files are made beside it),
    found without writing a byte."""
    if not (os.access(spool, os.W_OK) and os.access(spool.parent, os.W_OK | os.X_OK)):
        raise UserError(
            f"{spool} cannot be written by this user, so edge run as this user would stop at start; check as the "
            "user the daemon runs as (sudo edge check for the service), or give the daemon a spool.dir of its own"
        )
    free = shutil.disk_usage(spool.parent).free
    if free < SPOOL_HEADROOM:
        raise UserError(
            f"the file system of {spool} is full ({free} bytes free), so the daemon could store no event; free "
            "space there"
        )


def _moved_aside(spool: Path) -> str:
    """Corrupt spools the daemon moved aside (it keeps the newest three): more than a rare one points at
    power cuts in the middle of a write or a failing SD card."""
    aside = sorted(p.name for p in spool.parent.glob("broken-spool-*") if p.is_dir())
    if not aside:
        return ""
    return (
        f"; {len(aside)} corrupt spool(s) moved aside, newest {aside[-1]} (power cuts mid-write or a failing "
        f"SD card; `sqlite3 FILE .recover` may retrieve their events)"
    )


def probe_broker(settings: MqttSettings) -> str:
    """Connect once with a client id of its own, so the daemon's session and status are left alone."""
    connected = threading.Event()
    outcome: dict = {}
    client = make_client(settings, f"{settings.daemon_client_id}-check")

    def on_connect(_client, _userdata, _flags, reason, _props) -> None:
        outcome["reason"] = reason
        connected.set()

    client.on_connect = on_connect
    started = time.monotonic()
    connect_or_raise(client, settings)
    client.loop_start()
    try:
        if not connected.wait(ANSWER_TIMEOUT_S):
            raise no_answer_error(settings)
        reason = outcome["reason"]
        if reason.is_failure:
            raise refused_error(settings, reason)
        return f"{settings.description} connected in {1000 * (time.monotonic() - started):.0f} ms"
    finally:
        client.disconnect()
        client.loop_stop()
