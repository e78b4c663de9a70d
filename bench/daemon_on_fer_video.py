"""The whole daemon on a video of FER2013 faces: `edge run` as a process, a real mosquitto, events read back.

A class-balanced sample of faces is written into a video, each face held for `--hold` frames and
followed by `--gap` empty frames; consecutive faces alternate between the left and right half, so each
one becomes a new track. `edge run --once` plays the video at full speed (media time drives the tracker)
and publishes to a mosquitto started here on a free port. The `frame` number of a track's `face_enter`
tells which face it is; the expression a face settled on last (its `face_leave`) is compared with the
face's label.

    python bench/daemon_on_fer_video.py                           # shipped model, 30 PublicTest faces per class
    python bench/daemon_on_fer_video.py --model models/x.onnx --per-class 50 --precision fp32

The table gives, per class: faces shown, faces the daemon announced (face_enter), faces whose expression
settled, recall among the settled ones and correct ones among all shown; plus the model fed the same
48x48 faces directly. Settling needs a smoothed score of at least tracking.min_confidence, so the faces
that settle are the clearer ones: recall among them is higher than the model's plain top-1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from fer_frames import FER, FRAME, SPLITS, YUNET, balanced_sample, empty_frame, face_frame

from edge.classifier import ExpressionModel
from edge.locations import default_model

FPS = 10.0


def write_video(path: Path, faces: np.ndarray, hold: int, gap: int, fps: float = FPS) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, FRAME)
    empty = empty_frame()
    for i, face in enumerate(faces):
        frame = face_frame(face, "right" if i % 2 else "left")
        for _ in range(hold):
            writer.write(frame)
        for _ in range(gap):
            writer.write(empty)
    writer.release()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mosquitto(workdir: Path, port: int) -> subprocess.Popen:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    config = workdir / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")
    broker = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return broker
        time.sleep(0.05)
    broker.kill()
    raise SystemExit(f"mosquitto did not start on port {port}")


def collect_events(port: int, device: str) -> tuple[list[dict], mqtt.Client]:
    events: list[dict] = []
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fer-video-bench")
    client.on_connect = lambda c, *_: c.subscribe(f"edge-mood/{device}/events", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, _u, msg: events.append(json.loads(msg.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(10):
        raise SystemExit("could not subscribe to the bench broker")
    return events, client


def run_daemon(video: Path, port: int, device: str, workdir: Path, model: Path, precision: str) -> float:
    command = [
        sys.executable,
        "-m",
        "edge",
        "run",
        "--once",
        "--source",
        str(video),
        "--broker",
        f"127.0.0.1:{port}",
        "--device-id",
        device,
        "--set",
        f"spool.dir={workdir / 'spool'}",
        "--set",
        f"model.precision={precision}",
        "--set",
        "stats.interval_s=3600",
        "--model",
        str(model),
    ]
    if YUNET.exists():
        command += ["--set", "detector.kind=yunet", "--set", f"detector.yunet_model={YUNET}"]
    started = time.monotonic()
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"edge run failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    return time.monotonic() - started


def outcome_by_face(events: list[dict], period: int) -> tuple[set[int], dict[int, str]]:
    """The faces the daemon announced, and for each face the expression its face_leave reports.

    A face_enter's frame tells the face; face_leave comes frames later (after leave_after_s), so it is
    matched through its track id."""
    face_of_track = {e["track_id"]: e["frame"] // period for e in events if e["type"] == "face_enter"}
    settled: dict[int, str] = {}
    for event in events:
        if event["type"] == "face_leave" and event["expression"] is not None:
            settled[face_of_track[event["track_id"]]] = event["expression"]
    return set(face_of_track.values()), settled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="expression .onnx with its card (default: the shipped one)")
    parser.add_argument("--precision", default="auto", choices=("auto", "int8", "fp32"))
    parser.add_argument("--split", default="PublicTest", choices=SPLITS)
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--hold", type=int, default=15, help="frames each face stays in view (default 15 = 1.5 s)")
    parser.add_argument("--gap", type=int, default=10, help="empty frames after each face")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not FER.exists():
        raise SystemExit(f"needs {FER} (the team's shared data)")
    model_path = args.model or default_model()
    model = ExpressionModel.load(model_path, precision="fp32", threads=1)

    faces, labels = balanced_sample(args.split, args.per_class, args.seed, shuffle=True)
    period = args.hold + args.gap
    device = "fer-video"
    with tempfile.TemporaryDirectory(prefix="fer-video-") as tmp:
        workdir = Path(tmp)
        video = workdir / "faces.avi"
        write_video(video, faces, args.hold, args.gap)
        port = free_port()
        broker = start_mosquitto(workdir, port)
        try:
            events, client = collect_events(port, device)
            seconds = run_daemon(video, port, device, workdir, model_path, args.precision)
            time.sleep(0.5)  # --once returned after the broker took every event; let the subscriber drain
            client.loop_stop()
            client.disconnect()
        finally:
            broker.terminate()
            broker.wait()

    entered, settled = outcome_by_face(events, period)
    model_ids = {e["model"] for e in events}

    label_names = model.labels
    per_class = defaultdict(lambda: [0, 0, 0, 0])  # shown, entered, settled, correct
    for i, label in enumerate(labels):
        row = per_class[label_names[label]]
        row[0] += 1
        row[1] += i in entered
        if i in settled:
            row[2] += 1
            row[3] += settled[i] == label_names[label]
    print(
        f"{len(faces)} {args.split} faces, {len(events)} events, model {', '.join(sorted(model_ids))}, "
        f"`edge run --once` took {seconds:.1f} s for {len(faces) * period} frames"
    )
    print(f"{'class':<9} {'shown':>6} {'entered':>8} {'settled':>8} {'recall':>7} {'of shown':>9}")
    totals = np.zeros(4, int)
    for name in label_names:
        shown, ent, sett, correct = per_class[name]
        totals += (shown, ent, sett, correct)
        print(
            f"{name:<9} {shown:>6} {ent:>8} {sett:>8} {100 * correct / max(sett, 1):>6.1f}% "
            f"{100 * correct / max(shown, 1):>8.1f}%"
        )
    shown, ent, sett, correct = totals
    print(
        f"{'all':<9} {shown:>6} {ent:>8} {sett:>8} {100 * correct / max(sett, 1):>6.1f}% "
        f"{100 * correct / max(shown, 1):>8.1f}%"
    )
    probs = model.predict(list(faces))
    print(f"same faces fed to the model directly (48x48, FP32): {100 * (probs.argmax(1) == labels).mean():.1f}%")


if __name__ == "__main__":
    main()
