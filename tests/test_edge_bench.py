"""`edge bench` on a stream that drops mid-measurement: it is measured up to the drop, rather than ending in a
traceback. The stream is real: MJPEG frames of the sample clip over a local HTTP server, which closes it when
the frames run out, as a camera that goes away would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2

SAMPLE_CLIP = Path(__file__).resolve().parents[1] / "edge" / "sample" / "astronaut.mp4"
FRAMES = 30


def write_mjpeg(path: Path, frames: int) -> None:
    capture = cv2.VideoCapture(str(SAMPLE_CLIP))
    with path.open("wb") as stream:
        for _ in range(frames):
            ok, frame = capture.read()
            assert ok, f"{SAMPLE_CLIP} holds fewer than {frames} frames"
            stream.write(cv2.imencode(".jpg", frame)[1].tobytes())
    capture.release()


def test_a_stream_that_drops_is_measured_up_to_the_drop(tmp_path, serve) -> None:
    write_mjpeg(tmp_path / "camera.mjpeg", FRAMES)
    base, _ = serve(tmp_path)
    # A process of its own, as a user runs it: the command sets up logging for the whole process.
    command = [sys.executable, "-m", "edge", "bench", "--frames", "1000", "--source", f"{base}/camera.mjpeg"]
    done = subprocess.run([*command, "--set", "detector.kind=haar"], capture_output=True, text=True, timeout=120)
    out = done.stdout
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"no frame from stream {base}/camera.mjpeg after {FRAMES} frames; measuring those past the 5 warm-up" in out
    assert re.search(r"^total +\d+\.\d+", out, re.MULTILINE) and "throughput" in out
