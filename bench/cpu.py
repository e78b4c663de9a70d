"""CPU the daemon spends per camera frame, for main's old defaults, the new defaults and each option, side by side.

Every variant runs `edge run` as its own process against a mosquitto started here, on clips written here:

- "face": one real head (cut from 12_angry_men.jpg, face `--face-px` wide) drifting across a blurred copy of
  the photo, with sensor noise, as grey 640x480 frames (what the Pi camera source hands over), released at
  15 fps like a live camera (`source.realtime`);
- "no face": the same background without the head;
- "accuracy": FER2013 PublicTest faces, `--per-class` per class, each held 1.5 s then 2.5 s of empty frames
  (the face has left before the next comes, so the idle rate applies), left and right in turn, read at full
  speed (media time drives the tracker, so the events do not depend on this machine's speed or load). Scored
  as bench/daemon_on_fer_video.py scores it, plus the mean frames from a face's first frame to its first
  expression event (what a slower start costs).

CPU time is the daemon process's utime + stime from /proc/<pid>/stat, read when each of its stats messages
arrives (one a second), so it lines up with the frame count in that message; the first `WARMUP_S` are left
out. Stage figures are the daemon's own `stage_ms` (mean ms per frame over its last 200 frames, wall time:
on a loaded machine they include time the process waited for a core). Variants take turns within each
round, rounds repeat, and the tables give medians over rounds. Thread settings do not change what is
computed, so a variant that differs from another only in them shares its accuracy run.

    nice python bench/cpu.py                          # 3 rounds of 20 s clips: about 50 minutes
    nice python bench/cpu.py --rounds 5 --seconds 30 --only "main defaults,new defaults"

The last table projects the CPU figures onto a Raspberry Pi 4 and 5 from published figures (PI4_YUNET_MS,
PI5_SPEEDUP); it is a projection, not a measurement: run `edge bench` on a Pi for real numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from daemon_on_fer_video import free_port, outcome_by_face, start_mosquitto, write_video
from edge_stages import FRAME_H, FRAME_W, PHOTO, blurred_background, cut_heads, paste_head
from fer_frames import FER, YUNET, balanced_sample

from edge.locations import default_model

FPS = 15.0
WARMUP_S = 3.0  # stats messages in the first seconds after the first one are left out (caches, allocations)
# Accuracy clip: how long each face stays, and the empty time after it: longer than tracking.leave_after_s,
# so that every face arrives with nothing tracked and the idle rate's delay counts.
HOLD_S, GAP_S = 1.5, 2.5
NOISE_SIGMA = 2.0  # grey levels of sensor noise on the face and no-face clips
COMMON = {
    "model.precision": "int8",  # pinned: "auto" times both variants at start and might pick either
    "detector.kind": "yunet",
    "stats.interval_s": "1",
}
MAIN_DEFAULTS = {  # the defaults on main before this change, spelled out
    "model.threads": "2",
    "model.spin_wait": "true",
    "detector.threads": "0",
    "detector.detect_every": "1",
    "model.classify_every": "1",
    "detector.idle_fps": "0",
}
THREAD_KEYS = {"model.threads", "model.spin_wait", "detector.threads"}
# The no-face clip with (almost) nothing analysed: what reading frames and the daemon's threads cost alone.
FLOOR = {"detector.idle_fps": "0.01"}
VARIANTS: dict[str, dict[str, str]] = {
    "main defaults": MAIN_DEFAULTS,
    "main + onnxruntime not spinning": {**MAIN_DEFAULTS, "model.spin_wait": "false"},
    "main + model.threads 1": {**MAIN_DEFAULTS, "model.threads": "1"},
    "new defaults": {},
    "new + detect_every 1": {"detector.detect_every": "1"},
    "new + classify_every 1": {"model.classify_every": "1"},
    "new + idle_fps 0": {"detector.idle_fps": "0"},
    "new + adaptive_width": {"detector.adaptive_width": "true"},
    "new + OpenCV threads 0 (all)": {"detector.threads": "0"},
    "new + model.threads 2": {"model.threads": "2"},
}
# Published YuNet (face_detection_yunet_2023mar.onnx) latency at 160x120, OpenCV's own benchmark:
# opencv_zoo benchmark/README.md, "Raspberry Pi 4B" (BCM2711, 4x Cortex-A72 @ 1.5 GHz, opencv-python 4.10,
# all 4 cores): mean 6.23 ms. OpenCV Zoo publishes no Raspberry Pi 5 figure; Raspberry Pi's launch post
# (raspberrypi.com/news/introducing-raspberry-pi-5) gives the Pi 5 "a 2-3x increase in CPU performance
# relative to Raspberry Pi 4", so the Pi 5 row divides the Pi 4 projection by 2 and by 3.
PI4_YUNET_MS = 6.23
PI5_SPEEDUP = (2.0, 3.0)
ZOO_INPUT = (160, 120)
STAGES = ("detect", "follow", "crop", "classify", "track", "publish")


@dataclass
class Sample:
    at: float  # time.monotonic() when the stats message arrived
    cpu_s: float  # the daemon's utime + stime then
    stats: dict


@dataclass
class RunResult:
    cpu_ms_per_frame: float
    fps: float
    dropped: int
    stage_ms: dict[str, float]


@dataclass
class Accuracy:
    shown: int
    entered: int
    settled: int
    correct: int
    tracks: int  # face_enter events: more than faces shown means faces were split into several tracks
    settle_frames: float  # mean frames from a face's first frame to its first expression event


@dataclass
class Row:
    face: list[RunResult] = field(default_factory=list)
    empty: list[RunResult] = field(default_factory=list)
    accuracy: Accuracy | None = None


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads, living and ended), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_scene(folder: Path, with_face: bool, frames: int, face_px: int, seed: int = 0) -> None:
    """Grey 640x480 frames: the blurred photo and, with_face, one head drifting slowly left and right."""
    photo = cv2.imread(str(PHOTO))
    background = blurred_background(photo).astype(np.float32)
    head = cut_heads(photo, YUNET, 1, face_px)[0] if with_face else None
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(frames):
        frame = background.copy()
        if head is not None:
            t = i / FPS
            size = head.shape[0]
            left = round((FRAME_W - size) / 2 + 0.3 * (FRAME_W - size) * math.sin(2 * math.pi * t / 8))
            top = round((FRAME_H - size) / 2 + 10 * math.sin(2 * math.pi * t / 3))
            paste_head(frame, head, left, top)
        grey = cv2.cvtColor(frame.astype(np.uint8), cv2.COLOR_BGR2GRAY).astype(np.float32)
        grey += rng.normal(0, NOISE_SIGMA, grey.shape).astype(np.float32)
        cv2.imwrite(str(folder / f"frame_{i:05d}.pgm"), np.clip(grey, 0, 255).astype(np.uint8))


def edge_command(source: Path, port: int, device: str, spool: Path, settings: dict[str, str]) -> list[str]:
    command = [sys.executable, "-m", "edge", "run", "--once", "--source", str(source)]
    command += ["--broker", f"127.0.0.1:{port}", "--device-id", device, "--set", f"spool.dir={spool}"]
    command += ["--set", f"detector.yunet_model={YUNET}"]
    for key, value in {**COMMON, **settings}.items():
        command += ["--set", f"{key}={value}"]
    return command


class Listener:
    """Subscribes to one device's events and stats; stamps each stats message with the daemon's CPU time."""

    def __init__(self, port: int, device: str):
        self.events: list[dict] = []
        self.samples: list[Sample] = []
        self.pid: int | None = None
        subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cpu-bench-{device}")
        self._client.on_connect = lambda c, *_: c.subscribe(
            [(f"edge-mood/{device}/events", 1), (f"edge-mood/{device}/stats", 0)]
        )
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise SystemExit("could not subscribe to the bench broker")

    def _on_message(self, _client, _userdata, message) -> None:
        payload = json.loads(message.payload)
        if message.topic.endswith("/events"):
            self.events.append(payload)
        elif self.pid is not None:
            try:
                self.samples.append(Sample(time.monotonic(), process_cpu_s(self.pid), payload))
            except (FileNotFoundError, ProcessLookupError):
                pass  # the daemon has just exited

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def run_daemon(command: list[str], listener: Listener) -> None:
    daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    listener.pid = daemon.pid
    _, stderr = daemon.communicate()
    if daemon.returncode != 0:
        raise SystemExit(f"edge run failed (exit {daemon.returncode}): {stderr.strip()[-800:]}")
    time.sleep(0.5)  # --once returned after the broker took every event; let the subscriber drain


def measure(samples: list[Sample]) -> RunResult:
    window = [s for s in samples if s.at >= samples[0].at + WARMUP_S]
    if len(window) < 3:
        raise SystemExit(f"only {len(window)} stats messages after the warm-up; give a longer --seconds")
    first, last = window[0], window[-1]
    frames = last.stats["frames"] - first.stats["frames"]
    return RunResult(
        cpu_ms_per_frame=1000 * (last.cpu_s - first.cpu_s) / max(frames, 1),
        fps=frames / (last.at - first.at),
        dropped=last.stats["frames_dropped"] - first.stats["frames_dropped"],
        stage_ms=last.stats["stage_ms"],
    )


def score(events: list[dict], labels: np.ndarray, label_names: list[str], period: int) -> Accuracy:
    entered, settled = outcome_by_face(events, period)
    correct = sum(settled.get(i) == label_names[label] for i, label in enumerate(labels))
    first_expression: dict[int, int] = {}
    face_of_track = {e["track_id"]: e["frame"] // period for e in events if e["type"] == "face_enter"}
    for event in events:
        if event["type"] == "expression":
            face = face_of_track[event["track_id"]]
            first_expression.setdefault(face, event["frame"] - face * period)
    delays = list(first_expression.values())
    return Accuracy(
        shown=len(labels),
        entered=len(entered),
        settled=len(settled),
        correct=correct,
        tracks=len(face_of_track),
        settle_frames=statistics.mean(delays) if delays else float("nan"),
    )


def yunet_cpu_ms(frame: np.ndarray, runs: int = 200) -> float:
    """CPU ms of one YuNet call at OpenCV Zoo's benchmark size (160x120) on one thread, detect only as the Zoo
    times it. CPU time, not wall time, so that other jobs on this machine do not inflate it."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        net = cv2.FaceDetectorYN.create(str(YUNET), "", ZOO_INPUT, 0.7, 0.3, 5000)
        image = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), ZOO_INPUT, interpolation=cv2.INTER_AREA)
        for _ in range(10):
            net.detect(image)
        started = time.process_time()
        for _ in range(runs):
            net.detect(image)
        return 1000 * (time.process_time() - started) / runs
    finally:
        cv2.setNumThreads(previous)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cadence_key(settings: dict[str, str]) -> tuple:
    return tuple(sorted((k, v) for k, v in settings.items() if k not in THREAD_KEYS))


def print_tables(rows: dict[str, Row], floor: list[RunResult], face_px: int, yunet_ms: float) -> None:
    print("\nCPU per camera frame (the daemon's utime + stime per frame handed over; median of rounds)\n")
    print(
        "| variant | one face: CPU ms/frame | CPU % of a core at 15 fps | stage total ms/frame | CPU / stages "
        "| no face: CPU ms/frame | CPU % at 15 fps |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in rows.items():
        cpu = median([r.cpu_ms_per_frame for r in row.face])
        total = median([r.stage_ms.get("total", float("nan")) for r in row.face])
        idle = median([r.cpu_ms_per_frame for r in row.empty])
        print(
            f"| {name} | {cpu:.2f} | {cpu * FPS / 10:.1f} | {total:.2f} | {cpu / total:.2f} | "
            f"{idle:.2f} | {idle * FPS / 10:.1f} |"
        )
    base = median([r.cpu_ms_per_frame for r in floor])
    print(
        f"\nReading frames and handing them over, nothing analysed (no-face clip, detector.idle_fps = 0.01): "
        f"{base:.2f} ms/frame ({base * FPS / 10:.1f}% at 15 fps). It is in every CPU figure and in no stage."
    )
    print(f"\nStages, one face ({face_px} px), daemon's own ms per frame (median of rounds); accuracy on FER2013\n")
    print(
        "| variant | detect | follow | crop | classify | track | publish | fps | accuracy (of shown) | settled "
        "| tracks / faces | frames to first expression |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in rows.items():
        stage = {s: median([r.stage_ms.get(s, 0.0) for r in row.face]) for s in STAGES}
        fps = median([r.fps for r in row.face])
        acc = row.accuracy
        scored = (
            f"{100 * acc.correct / acc.shown:.1f}% | {acc.settled} | {acc.tracks} / {acc.shown} | "
            f"{acc.settle_frames:.1f}"
            if acc
            else "- | - | - | -"
        )
        print(f"| {name} | " + " | ".join(f"{stage[s]:.2f}" for s in STAGES) + f" | {fps:.1f} | {scored} |")
    ratio = PI4_YUNET_MS / yunet_ms
    print(
        f"\nYuNet at {ZOO_INPUT[0]}x{ZOO_INPUT[1]}: {yunet_ms:.2f} CPU ms here on one thread; Raspberry Pi 4B "
        f"{PI4_YUNET_MS} ms (OpenCV Zoo, on its 4 cores, so a one-thread Pi 4 is somewhat slower than this "
        f"projects): x{ratio:.1f}. Pi 5: the Pi 4 figure / {PI5_SPEEDUP[0]:g}..{PI5_SPEEDUP[1]:g}.\n"
    )
    print("Projection (not a measurement): CPU per frame scaled by the YuNet ratio, one face / no face\n")
    print("| variant | Pi 4: ms/frame | Pi 4: % of a core at 15 fps | Pi 5: ms/frame | Pi 5: % of a core at 15 fps |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in ("main defaults", "new defaults"):
        if name not in rows:
            continue
        face = median([r.cpu_ms_per_frame for r in rows[name].face]) * ratio
        idle = median([r.cpu_ms_per_frame for r in rows[name].empty]) * ratio
        fast, slow = PI5_SPEEDUP[1], PI5_SPEEDUP[0]
        print(
            f"| {name} | {face:.0f} / {idle:.1f} | {face * FPS / 10:.0f} / {idle * FPS / 10:.1f} | "
            f"{face / fast:.0f}-{face / slow:.0f} / {idle / fast:.1f}-{idle / slow:.1f} | "
            f"{face * FPS / 10 / fast:.0f}-{face * FPS / 10 / slow:.0f} / "
            f"{idle * FPS / 10 / fast:.1f}-{idle * FPS / 10 / slow:.1f} |"
        )


def machine_line() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, OpenCV {cv2.__version__}, "
        f"onnxruntime {version('onnxruntime')}, nice {os.nice(0)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the face and no-face clips")
    parser.add_argument("--per-class", type=int, default=30, help="FER2013 faces per class (0: no accuracy runs)")
    parser.add_argument("--seed", type=int, default=0, help="which FER2013 faces (default 0)")
    parser.add_argument("--face-px", type=int, default=100, help="face width in the face clip (default 100)")
    parser.add_argument("--only", help="comma-separated variant names (default: all)")
    args = parser.parse_args()
    for needed in (PHOTO, YUNET, FER):
        if not needed.exists():
            print(f"needs {needed} (the shared data folder beside the project)", file=sys.stderr)
            return 2
    names = [n.strip() for n in args.only.split(",")] if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    print(f"# {machine_line()}")
    print(f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = {name: Row() for name in names}
    floor: list[RunResult] = []
    frames = round((args.seconds + WARMUP_S + 2) * FPS)
    with tempfile.TemporaryDirectory(prefix="cpu-bench-") as tmp:
        work = Path(tmp)
        write_scene(work / "face", True, frames, args.face_px)
        write_scene(work / "empty", False, frames, args.face_px)
        zoo_frame = cv2.imread(str(work / "face" / "frame_00000.pgm"), cv2.IMREAD_GRAYSCALE)
        port = free_port()
        broker = start_mosquitto(work, port)
        try:
            for round_index in range(args.rounds):
                order = names[round_index % len(names) :] + names[: round_index % len(names)]
                runs = [
                    (name, scene, VARIANTS[name], results)
                    for name in order
                    for scene, results in (("face", rows[name].face), ("empty", rows[name].empty))
                ]
                for index, (name, scene, settings, results) in enumerate([*runs, ("floor", "empty", FLOOR, floor)]):
                    device = f"cpu{round_index}x{index}"
                    listener = Listener(port, device)
                    command = edge_command(work / scene, port, device, work / device, settings)
                    command += ["--set", "source.realtime=true", "--set", f"source.fps={FPS:g}"]
                    run_daemon(command, listener)
                    listener.close()
                    results.append(measure(listener.samples))
                    print(
                        f"round {round_index + 1} {name} {scene}: {results[-1].cpu_ms_per_frame:.2f} ms/frame, "
                        f"load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
            if args.per_class:
                run_accuracy(rows, work, port, args.per_class, args.seed)
        finally:
            broker.terminate()
            broker.wait()
    yunet_ms = yunet_cpu_ms(zoo_frame)
    print(f"# load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_tables(rows, floor, args.face_px, yunet_ms)
    return 0


def run_accuracy(rows: dict[str, Row], work: Path, port: int, per_class: int, seed: int) -> None:
    faces, labels = balanced_sample("PublicTest", per_class, seed=seed, shuffle=True)
    hold, gap = round(HOLD_S * FPS), round(GAP_S * FPS)
    video = work / "faces.avi"
    write_video(video, faces, hold, gap, fps=FPS)
    label_names = json.loads(default_model().with_suffix(".json").read_text())["labels"]
    done: dict[tuple, Accuracy] = {}
    for index, (name, row) in enumerate(rows.items()):
        key = cadence_key(VARIANTS[name])
        if key not in done:
            device = f"acc{index}"
            listener = Listener(port, device)
            run_daemon(edge_command(video, port, device, work / device, VARIANTS[name]), listener)
            listener.close()
            done[key] = score(listener.events, labels, label_names, hold + gap)
            print(f"accuracy {name}: {done[key]}", flush=True)
        row.accuracy = done[key]


if __name__ == "__main__":
    sys.exit(main())
