"""What one frame may cost: a 10000x10000 image in the source must not take the daemon's memory with it.

The daemon runs as a process (real model, OpenCV's Haar detector, a real broker); its peak RSS is what the
kernel reports for it when it exits (wait4), once on ordinary frames and once with the huge image among
them, in the same test, so both runs see the same machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.frame_limit import MAX_FRAME_PIXELS, FrameTooLarge, decode_bounded
from edge.sources import open_source
from tests.tiny_model import write_tiny_model

HUGE = 10_000
# A frame within the limit costs up to ~25 MB as BGR; the pipeline holds a few copies at once. The daemon
# without the limit took about 580 MB more for one 10000x10000 image.
ALLOWED_EXTRA_MB = 100


def ordinary_frames(folder: Path, count: int = 6) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"frame_{i:03d}.jpg"), rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))


def huge_image(path: Path) -> None:
    """10000x10000, made by enlarging a small picture (the test process holds it once, as grey)."""
    small = np.random.default_rng(1).integers(0, 255, (100, 100), dtype=np.uint8)
    assert cv2.imwrite(str(path), cv2.resize(small, (HUGE, HUGE), interpolation=cv2.INTER_NEAREST))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("frames")
    made = {}
    for kind in ("ordinary", "jpeg", "png"):
        ordinary_frames(root / kind)
        if kind != "ordinary":
            huge_image(root / kind / f"frame_002_huge.{'jpg' if kind == 'jpeg' else 'png'}")
        made[kind] = root / kind
    return made


def peak_rss_mb(tmp_path: Path, broker, folder: Path) -> tuple[float, str]:
    """Run `edge run --once` on `folder`; (its peak RSS in MB, its log)."""
    model = write_tiny_model(tmp_path / f"model-{folder.name}")
    config = tmp_path / f"{folder.name}.toml"
    sections = {
        "source": {"uri": str(folder)},
        "detector": {"kind": "haar"},
        "model": {"path": str(model), "threads": 1},
        "mqtt": {"host": broker.host, "port": broker.port, "protocol": broker.protocol, "device_id": "big"},
        "spool": {"dir": str(tmp_path / f"state-{folder.name}")},
    }
    config.write_text(
        "\n".join(
            f"[{name}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in keys.items())
            for name, keys in sections.items()
        )
    )
    with open(tmp_path / f"{folder.name}.log", "w+") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--once", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(daemon.pid, 0)
        daemon.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    assert daemon.returncode == 0, output[-2000:]
    return usage.ru_maxrss / 1024, output


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_a_huge_image_costs_about_what_an_ordinary_frame_costs(tmp_path, broker, folders, kind):
    ordinary, _ = peak_rss_mb(tmp_path, broker, folders["ordinary"])
    with_huge, output = peak_rss_mb(tmp_path, broker, folders[kind])
    assert with_huge - ordinary < ALLOWED_EXTRA_MB, f"{with_huge:.0f} MB vs {ordinary:.0f} MB"
    said = [line for line in output.splitlines() if "frame_002_huge" in line]
    assert len(said) == 1 and "10000x10000" in said[0] and "megapixels" in said[0], output[-2000:]
    assert ("read at 1/4 scale" if kind == "jpeg" else "skipping image") in said[0]
    assert "Traceback" not in output


def test_a_huge_jpeg_is_decoded_scaled_and_a_huge_png_is_refused(folders):
    data = np.fromfile(folders["jpeg"] / "frame_002_huge.jpg", dtype=np.uint8)
    image, note = decode_bounded(data)
    assert image.shape == (2500, 2500, 3) and note == "10000x10000, read at 1/4 scale"
    with pytest.raises(FrameTooLarge, match="10000x10000 PNG"):
        decode_bounded(np.fromfile(folders["png"] / "frame_002_huge.png", dtype=np.uint8))
    ordinary = np.fromfile(sorted(folders["ordinary"].iterdir())[0], dtype=np.uint8)
    image, note = decode_bounded(ordinary)
    assert image.shape == (480, 640, 3) and note is None


def test_video_frames_over_the_limit_are_shrunk_once_read(tmp_path, caplog):
    path = tmp_path / "big.avi"
    width, height = 4800, 2700  # 13 MP, over the 8.3 MP limit
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (width, height))
    for i in range(3):
        writer.write(np.full((height, width, 3), 40 * i, np.uint8))
    writer.release()
    source = open_source(str(path))
    try:
        frames = [source.read() for _ in range(3)]
    finally:
        source.close()
    for frame in frames:
        assert frame.shape[0] * frame.shape[1] <= MAX_FRAME_PIXELS
        assert abs(frame.shape[1] / frame.shape[0] - width / height) < 0.01
    said = [r.getMessage() for r in caplog.records if "shrinking" in r.getMessage()]
    assert len(said) == 1 and f"{width}x{height}" in said[0]
