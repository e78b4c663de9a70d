"""`edge bench` on a stream that drops mid-measurement: it is measured up to the drop, rather than ending in a
traceback. The stream is real: MJPEG frames of the sample clip over a local HTTP server, which closes it when
the frames run out, as a camera that goes away would."""

from __future__ import annotations

import re
from pathlib import Path

import cv2

from edge.cli import main

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


def test_a_stream_that_drops_is_measured_up_to_the_drop(tmp_path, serve, capsys) -> None:
    write_mjpeg(tmp_path / "camera.mjpeg", FRAMES)
    base, _ = serve(tmp_path)
    status = main(["bench", "--frames", "1000", "--source", f"{base}/camera.mjpeg", "--set", "detector.kind=haar"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"no frame from stream {base}/camera.mjpeg; measuring the {FRAMES} frames read before it stopped" in out
    assert re.search(r"^total +\d+\.\d+", out, re.MULTILINE) and "throughput" in out
