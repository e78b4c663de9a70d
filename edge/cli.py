"""`edge` command line: demo, run, check, tail, bench, models fetch.

Each command imports its own module when it runs, so `edge tail` never loads OpenCV or onnxruntime.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge import __version__
from edge.config import CONFIG_ENV, Config, load_config, parse_set_option
from edge.errors import EXIT_EVENTS_UNSENT, UserError
from edge.locations import YUNET_URL
from edge.yunet_fetch import add_arguments as add_fetch_arguments

DEFAULT_CONFIG_PATHS = (Path("/etc/edge-mood/config.toml"),)


# The shortcut flags, each for the commands where it does something.
SOURCE_FLAGS = ("source", "model")
BROKER_FLAGS = ("broker", "device_id")


def _add_config_arguments(
    parser: argparse.ArgumentParser, shortcuts: Sequence[str] = SOURCE_FLAGS + BROKER_FLAGS
) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        help="TOML config file (default: $EDGE_MOOD_CONFIG, else /etc/edge-mood/config.toml if present)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config key; repeatable"
    )
    if "source" in shortcuts:
        parser.add_argument("--source", help="frame source (same as --set source.uri=...)")
    if "model" in shortcuts:
        parser.add_argument("--model", help="expression model .onnx (same as --set model.path=...)")
    if "broker" in shortcuts:
        parser.add_argument("--broker", metavar="HOST[:PORT]", help="MQTT broker (same as mqtt.host / mqtt.port)")
    if "device_id" in shortcuts:
        parser.add_argument("--device-id", help="device id in topics (same as --set mqtt.device_id=...)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge", description="Room mood daemon: camera -> faces -> expressions -> MQTT."
    )
    parser.add_argument("--version", action="version", version=f"edge-mood {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="try it: the daemon on the first camera (else a built-in clip), a broker, and its events printed",
        description="Runs the real daemon on the first camera that opens, else on a short clip shipped with "
        "edge-mood, against the configured MQTT broker (or one started for the demo when none answers), and "
        "prints its events as `edge tail` does. Ends with the clip, or with Ctrl-C.",
    )
    _add_config_arguments(demo)

    run = commands.add_parser("run", help="run the daemon")
    _add_config_arguments(run)
    run.add_argument(
        "--once",
        action="store_true",
        help="exit when a file or folder source ends, after the broker took every event "
        f"(exit status {EXIT_EVENTS_UNSENT} when some could not be sent)",
    )

    check = commands.add_parser("check", help="validate config, model, source and broker, then print a report")
    _add_config_arguments(check)

    tail = commands.add_parser("tail", help="print events from the broker for a human")
    _add_config_arguments(tail, BROKER_FLAGS)
    tail.add_argument("--all-devices", action="store_true", help="every device under the prefix, not only this one")
    tail.add_argument("--raw", action="store_true", help="print the JSON payloads as they arrive")

    bench = commands.add_parser("bench", help="per-stage latency and fps on a source (no MQTT)")
    _add_config_arguments(bench, SOURCE_FLAGS)
    bench.add_argument("--frames", type=_count, default=200, help="frames to measure (default 200)")

    models = commands.add_parser("models", help="model files the daemon uses")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    fetch = model_commands.add_parser(
        "fetch",
        help="fetch the YuNet face detector (pinned sha256) into the data folder",
        description="Downloads the YuNet face detector from its pinned URL (or copies --file), checks its "
        "sha256 and puts it where the daemon finds it. The daemon does the same on first use.",
    )
    _add_config_arguments(fetch, ())
    add_fetch_arguments(fetch)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = dict(parse_set_option(text) for text in args.set)
    if getattr(args, "source", None) is not None:
        overrides["source.uri"] = args.source
    if getattr(args, "model", None) is not None:
        overrides["model.path"] = args.model
    if getattr(args, "device_id", None) is not None:
        overrides["mqtt.device_id"] = args.device_id
    if getattr(args, "broker", None):
        host, port = split_broker(args.broker)
        overrides["mqtt.host"] = host
        if port:
            overrides["mqtt.port"] = port
    path = args.config
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    if path is None:
        path = next((p for p in DEFAULT_CONFIG_PATHS if p.exists()), None)
    return load_config(path, overrides)


def _count(text: str) -> int:
    """A positive whole number for argparse, which turns the ValueError into its one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def split_broker(text: str) -> tuple[str, str]:
    """--broker HOST[:PORT] -> (host, port or ""): broker.lan:1883, 10.0.0.2, ::1 (an IPv6 address alone) or
    [::1]:1883 (with a port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest.removeprefix(":")
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""


def setup_logging(level: str) -> None:
    # journald adds its own timestamps; a terminal gets them from us.
    under_systemd = "INVOCATION_ID" in os.environ or "JOURNAL_STREAM" in os.environ
    fmt = "%(levelname)s %(name)s: %(message)s" if under_systemd else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr, force=True)
    if level.upper() != "DEBUG":
        # FFmpeg and OpenCV print lines of their own on every failed reconnect attempt (two per attempt, for
        # as long as a camera is away) and every damaged frame; the daemon logs a lost camera once and its
        # return once, and counts damaged frames in its stats. Both are read before cv2 first needs them.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from edge.pipeline import install_signal_handlers
    from edge.wiring import build_daemon

    daemon = build_daemon(config, once=args.once)
    install_signal_handlers(daemon)
    return daemon.run()


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    from edge.check import run_check

    return run_check(config)


def cmd_tail(args: argparse.Namespace, config: Config) -> int:
    from edge.mqtt_client import MqttSettings
    from edge.tail import run_tail

    return run_tail(MqttSettings.from_config(config), all_devices=args.all_devices, raw=args.raw)


def cmd_bench(args: argparse.Namespace, config: Config) -> int:
    from edge.bench import run_bench

    return run_bench(config, frames=args.frames)


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    from edge.demo import run_demo

    return run_demo(config, verbose=args.verbose)


def cmd_models(args: argparse.Namespace, config: Config) -> int:
    from edge.locations import data_dir
    from edge.yunet_fetch import fetch_yunet

    # The config's URL and checksum unless given here, so a mirror set in the config serves this too.
    url = args.url or config.detector.yunet_url or YUNET_URL
    sha256 = args.sha256 or config.detector.yunet_sha256
    path = fetch_yunet(args.dir or data_dir(), url, sha256, args.file)
    print(f"YuNet face detector: {path} (sha256 {sha256})")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "demo": cmd_demo,
    "models": cmd_models,
    "run": cmd_run,
    "check": cmd_check,
    "tail": cmd_tail,
    "bench": cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        setup_logging("debug" if args.verbose else config.log.level)
        return COMMANDS[args.command](args, config)
    except UserError as exc:
        # Expected faults: one line naming the cause and the fix, never a traceback.
        print(f"edge: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
