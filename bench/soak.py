"""The daemon left running for hours: does its memory, file descriptors or threads grow?

Runs `edge run` as processes side by side against one real mosquitto, each with a Pi camera whose frames
are FER2013 faces coming and going (a face held `--hold` s, then `--gap` s of empty room, so tracks start,
settle and leave all the time and events flow). The Pi camera is the one stand-in: bench/picamera2_standin.py,
pacing grey frames at `--fps`; everything behind it is the daemon as shipped. Each
variant is the same daemon under another environment, by default glibc's malloc as is and with
`MALLOC_ARENA_MAX=2` (fewer per-thread heaps, a common cure for a slowly growing RSS in threaded Python).

    python bench/soak.py                        # 120 minutes, both variants
    python bench/soak.py --minutes 5 --sample-s 10

It prints RSS over time and a table per variant: RSS when warm-up ends and at the end, the growth rate
fitted (least squares) to the samples after `--warm-up-min`, file descriptors and threads at the start and end,
events received, and warnings in the daemon's log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from fer_frames import FER, FRAME, YUNET, balanced_sample, face_frame

from edge.local_broker import local_broker

STAND_IN = Path(__file__).with_name("picamera2_standin.py")

VARIANTS = {"malloc as is": {}, "MALLOC_ARENA_MAX=2": {"MALLOC_ARENA_MAX": "2"}}


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen
    log: Path
    samples: list[tuple[float, float, int, int]] = field(default_factory=list)  # seconds, RSS MB, fds, threads


def write_stand_in(work: Path, args: argparse.Namespace) -> Path:
    """The picamera2 stand-in (bench/picamera2_standin.py) with its frames: each face held `hold` s, on the left
    or right in turn, then `gap` s of the empty room."""
    package = work / "stand_in" / "picamera2"
    package.mkdir(parents=True)
    shutil.copyfile(STAND_IN, package / "__init__.py")
    images, _ = balanced_sample("PublicTest", (args.faces + 6) // 7, seed=0, shuffle=True)
    grey = [face_frame(face, "right" if i % 2 else "left")[:, :, 0] for i, face in enumerate(images[: args.faces])]
    empty = np.full((FRAME[1], FRAME[0]), grey[0][0, 0], np.uint8)
    np.save(package / "frames.npy", np.stack([empty, *grey]))
    schedule = {"hold": round(args.hold * args.fps), "gap": round(args.gap * args.fps)}
    (package / "schedule.json").write_text(json.dumps(schedule), encoding="utf-8")
    return package.parent


def start_daemon(
    work: Path, index: int, name: str, extra_env: dict[str, str], port: int, args: argparse.Namespace
) -> Daemon:
    device = f"soak-{index}"
    env = {
        **os.environ,
        **extra_env,
        "PYTHONPATH": str(work / "stand_in"),
    }
    command = [sys.executable, "-m", "edge", "run", "--source", "picamera", "--broker", f"127.0.0.1:{port}"]
    command += ["--device-id", device, "--set", f"spool.dir={work / device}", "--set", f"source.fps={args.fps}"]
    command += ["--set", "detector.kind=yunet", "--set", f"detector.yunet_model={YUNET}"]
    log = work / f"{device}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Daemon(name, process, log)


def sample(daemon: Daemon, seconds: float) -> None:
    status = Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    rss_mb = int(fields["VmRSS"].split()[0]) / 1024
    fds = len(os.listdir(f"/proc/{daemon.process.pid}/fd"))
    daemon.samples.append((seconds, rss_mb, fds, int(fields["Threads"])))


def count_events(port: int) -> tuple[Counter, mqtt.Client]:
    received: Counter = Counter()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-bench")
    client.on_connect = lambda c, *_: c.subscribe("edge-mood/+/events", qos=1)

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        received[message.topic.split("/")[1], json.loads(message.payload)["type"]] += 1

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    return received, client


def growth_kb_per_min(samples: list[tuple[float, float, int, int]], warm_up_s: float) -> float:
    after = [(t, rss) for t, rss, _, _ in samples if t >= warm_up_s]
    if len(after) < 3:
        return float("nan")
    seconds, rss = np.array(after).T
    return float(np.polyfit(seconds / 60, rss * 1024, 1)[0])


def report(daemons: list[Daemon], received: Counter, minutes: float, warm_up_min: float) -> None:
    every = max(1, round(600 / (daemons[0].samples[1][0] - daemons[0].samples[0][0])))
    print(f"RSS MB over time ({minutes:.0f} minutes)")
    print(f"{'minute':>7} " + " ".join(f"{d.name:>20}" for d in daemons))
    for rows in list(zip(*(d.samples for d in daemons)))[::every]:
        print(f"{rows[0][0] / 60:>7.0f} " + " ".join(f"{row[1]:>20.1f}" for row in rows))
    print()
    header = (
        f"variant | RSS MB at {warm_up_min:g} min | at end | growth after, KB/min | fds | threads | events | warnings"
    )
    print(f"| {header} |")
    print("| --- | ---: | ---: | ---: | --- | --- | ---: | ---: |")
    for index, daemon in enumerate(daemons):
        warm = next((s for s in daemon.samples if s[0] >= warm_up_min * 60), daemon.samples[-1])
        first, last = daemon.samples[0], daemon.samples[-1]
        events = sum(n for (device, _), n in received.items() if device == f"soak-{index}")
        growth = growth_kb_per_min(daemon.samples, warm_up_min * 60)
        warnings = sum(" WARNING " in line or " ERROR " in line for line in daemon.log.read_text().splitlines())
        print(
            f"| {daemon.name} | {warm[1]:.1f} | {last[1]:.1f} | {growth:+.1f} | "
            f"{first[2]} -> {last[2]} | {first[3]} -> {last[3]} | {events} | {warnings} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument("--warm-up-min", type=float, default=10.0, help="minutes left out of the fit (default 10)")
    parser.add_argument("--fps", type=float, default=10.0, help="the camera's frame rate (default 10)")
    parser.add_argument("--hold", type=float, default=4.0, help="seconds each face stays in view (default 4)")
    parser.add_argument("--gap", type=float, default=4.0, help="seconds of empty room after each face (default 4)")
    parser.add_argument("--faces", type=int, default=70, help="distinct faces in the cycle (default 70)")
    args = parser.parse_args()
    if not FER.exists() or not YUNET.exists():
        raise SystemExit(f"needs {FER} and {YUNET} (the team's shared data)")

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        write_stand_in(work, args)
        with local_broker(work, kinds=("mosquitto",)) as broker:
            received, client = count_events(broker.port)
            daemons = [
                start_daemon(work, index, name, env, broker.port, args)
                for index, (name, env) in enumerate(VARIANTS.items())
            ]
            started = time.monotonic()
            stopped = threading.Event()
            try:
                while not stopped.wait(args.sample_s):
                    elapsed = time.monotonic() - started
                    for daemon in daemons:
                        if daemon.process.poll() is not None:
                            tail = daemon.log.read_text().splitlines()[-5:]
                            raise SystemExit(f"{daemon.name} exited ({daemon.process.returncode}): {tail}")
                        sample(daemon, elapsed)
                    if elapsed >= args.minutes * 60:
                        break
            finally:
                for daemon in daemons:
                    daemon.process.terminate()
                    daemon.process.wait(30)
                client.loop_stop()
                client.disconnect()
            report(daemons, received, args.minutes, args.warm_up_min)
    return 0


if __name__ == "__main__":
    sys.exit(main())
