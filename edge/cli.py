"""`edge` command line: run, check, tail, bench.

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
from edge.config import Config, load_config, parse_set_option
from edge.errors import UserError

DEFAULT_CONFIG_PATHS = (Path("/etc/edge-mood/config.toml"),)


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        help="TOML config file (default: $EDGE_MOOD_CONFIG, else /etc/edge-mood/config.toml if present)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config key; repeatable"
    )
    parser.add_argument("--source", help="frame source (same as --set source.uri=...)")
    parser.add_argument("--model", help="expression model .onnx (same as --set model.path=...)")
    parser.add_argument("--broker", metavar="HOST[:PORT]", help="MQTT broker (same as mqtt.host / mqtt.port)")
    parser.add_argument("--device-id", help="device id in topics (same as --set mqtt.device_id=...)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge", description="Room mood daemon: camera -> faces -> expressions -> MQTT."
    )
    parser.add_argument("--version", action="version", version=f"edge-mood {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon")
    _add_config_arguments(run)
    run.add_argument(
        "--once", action="store_true", help="exit when a file or folder source ends, after the broker took every event"
    )

    check = commands.add_parser("check", help="validate config, model, source and broker, then print a report")
    _add_config_arguments(check)

    tail = commands.add_parser("tail", help="print events from the broker for a human")
    _add_config_arguments(tail)
    tail.add_argument("--all-devices", action="store_true", help="every device under the prefix, not only this one")
    tail.add_argument("--raw", action="store_true", help="print the JSON payloads as they arrive")

    bench = commands.add_parser("bench", help="per-stage latency and fps on a source (no MQTT)")
    _add_config_arguments(bench)
    bench.add_argument("--frames", type=int, default=200, help="frames to measure (default 200)")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = dict(parse_set_option(text) for text in args.set)
    if args.source is not None:
        overrides["source.uri"] = args.source
    if args.model is not None:
        overrides["model.path"] = args.model
    if args.device_id is not None:
        overrides["mqtt.device_id"] = args.device_id
    if args.broker:
        host, _, port = args.broker.rpartition(":") if args.broker.count(":") == 1 else (args.broker, "", "")
        overrides["mqtt.host"] = host
        if port:
            overrides["mqtt.port"] = port
    path = args.config
    if path is None and os.environ.get("EDGE_MOOD_CONFIG"):
        path = Path(os.environ["EDGE_MOOD_CONFIG"])
    if path is None:
        path = next((p for p in DEFAULT_CONFIG_PATHS if p.exists()), None)
    return load_config(path, overrides)


def setup_logging(level: str) -> None:
    # journald adds its own timestamps; a terminal gets them from us.
    under_systemd = "INVOCATION_ID" in os.environ or "JOURNAL_STREAM" in os.environ
    fmt = "%(levelname)s %(name)s: %(message)s" if under_systemd else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr, force=True)


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


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
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
