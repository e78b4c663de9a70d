"""`edge demo`: the real daemon on the first camera that opens (else on the clip shipped in edge/sample),
against the configured broker (or one started for the demo when none answers), with its events printed as
`edge tail` prints them. It ends with the clip, or with Ctrl-C, and leaves no spool behind.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from edge.config import SCHEMA, Config
from edge.errors import UserError
from edge.local_broker import answers, local_broker
from edge.mqtt_client import MqttSettings
from edge.pipeline import Daemon, install_signal_handlers
from edge.sources import open_source
from edge.tail import run_tail
from edge.wiring import build_daemon

SAMPLE = Path(__file__).resolve().parent / "sample" / "astronaut.mp4"
SAMPLE_CREDIT = "a photo of astronaut Eileen Collins (NASA, public domain)"
DEMO_DEVICE_ID = "demo"
CAMERA_WAIT_S = 3.0  # a camera that gives no frame in this time counts as absent
SUBSCRIBE_WAIT_S = 10.0
TAIL_WAIT_S = 5.0  # after the daemon stopped, for its last messages to reach the printer


def say(line: str) -> None:
    print(f"edge demo: {line}", flush=True)


def first_frame_within(spec: str, config: Config, seconds: float) -> bool:
    """Whether `spec` opens and gives a frame within `seconds` (a hung driver counts as no camera)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            source = open_source(spec, config.source.width, config.source.height, config.source.fps)
        except UserError:
            return
        try:
            result.append(source.read() is not None)
        except Exception:  # a camera that opens but fails to deliver is as good as none here
            pass
        finally:
            source.close()

    thread = threading.Thread(target=probe, name="camera-probe", daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(result and result[0])


def choose_source(config: Config) -> str:
    """The configured source if one was set, else the first camera that gives a frame, else the sample clip."""
    if config.source.uri != SCHEMA["source"]["uri"].default:
        return config.source.uri
    cameras = (["picamera"] if importlib.util.find_spec("picamera2") else []) + ["0"]
    for camera in cameras:
        if first_frame_within(camera, config, CAMERA_WAIT_S):
            return camera
    return str(SAMPLE)


def run_demo(config: Config, verbose: bool = False) -> int:
    if not verbose:  # the events are the show; the daemon's warnings and errors still come through
        logging.getLogger().setLevel(logging.WARNING)
    wanted = MqttSettings.from_config(config)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-demo-")))
        # A spool of its own, thrown away afterwards; no Home Assistant entities for a demo.
        overrides: dict[str, Any] = {"spool.dir": str(workdir / "state"), "mqtt.discovery": False}
        if not config.mqtt.device_id:
            overrides["mqtt.device_id"] = DEMO_DEVICE_ID
        if answers(wanted.host, wanted.port):
            say(f"using the MQTT broker at {wanted.broker}")
        else:
            broker = stack.enter_context(local_broker(workdir))
            overrides |= {"mqtt.host": broker.host, "mqtt.port": broker.port, "mqtt.protocol": broker.protocol}
            overrides |= {"mqtt.tls": False, "mqtt.username": "", "mqtt.password_file": ""}
            say(
                f"no MQTT broker answers at {wanted.broker}; started {broker.name} on {broker.host}:{broker.port} "
                f"for this demo"
            )
        source = choose_source(config)
        if source == str(SAMPLE):
            say(f"no camera gave a frame within {CAMERA_WAIT_S:.0f} s; playing the built-in clip of {SAMPLE_CREDIT}")
            overrides["source.realtime"] = True  # played like a camera would see it: about 6 s
        else:
            say(f"source {source}; Ctrl-C ends the demo")
        overrides["source.uri"] = source
        demo = config.replaced(overrides)
        # once: at the end (of the clip, or Ctrl-C) the broker takes every event, faces in view leaving included.
        daemon = build_daemon(demo, once=True)
        say(
            f"detector {daemon.detector.name}, model {daemon.model.model_id} ({daemon.model.precision}); "
            f"events of device {demo.device_id} as `edge tail` prints them:"
        )
        status = _run_with_printer(daemon, MqttSettings.from_config(demo))
    return status


def _run_with_printer(daemon: Daemon, settings: MqttSettings) -> int:
    """Runs the daemon in this (the main) thread, so Ctrl-C stops it cleanly, while a tail prints its messages."""
    subscribed, stop = threading.Event(), threading.Event()
    failures: list[UserError] = []

    def printer() -> None:
        try:
            run_tail(settings, subscribed=subscribed, until_offline=True, stop=stop)
        except UserError as exc:
            failures.append(exc)
            subscribed.set()

    thread = threading.Thread(target=printer, name="demo-printer", daemon=True)
    thread.start()
    subscribed.wait(SUBSCRIBE_WAIT_S)
    if failures:
        raise failures[0]
    install_signal_handlers(daemon)
    status = daemon.run()
    thread.join(TAIL_WAIT_S)  # until the daemon's own `offline`, the last message it sends
    stop.set()
    thread.join()
    say("stopped" if daemon.stop_requested.is_set() else "the clip ended")
    return status
