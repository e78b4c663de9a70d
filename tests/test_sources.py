"""Frame sources: image folders and globs, video files, error messages for paths users get wrong.

Frames are real files written and decoded by OpenCV; each frame's number is coded in its brightness so order
and completeness can be checked after lossy (JPEG/MJPG) compression.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import SourceError
from edge.sources import FrameSource, hide_password, open_source

LEVEL_STEP = 10  # brightness per frame number; survives lossy compression (error < 5)


def numbered_frame(number: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    return np.full((size[1], size[0], 3), number * LEVEL_STEP, np.uint8)


def frame_number(image: np.ndarray) -> int:
    return int(round(float(image.mean()) / LEVEL_STEP))


def read_all(source: FrameSource) -> list[np.ndarray]:
    frames = []
    while (image := source.read()) is not None:
        frames.append(image)
    source.close()
    return frames


def write_images(folder: Path, numbers: list[int], pattern: str = "frame{}.png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        assert cv2.imwrite(str(folder / pattern.format(number)), numbered_frame(number))


def test_folder_is_read_in_natural_order_and_skips_corrupt_files(tmp_path: Path, caplog) -> None:
    write_images(tmp_path, [1, 2, 10, 3, 21])
    (tmp_path / "frame4.png").write_bytes(b"not an image at all")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    source = open_source(str(tmp_path))
    assert source.live is False
    with caplog.at_level(logging.WARNING, logger="edge.sources"):
        numbers = [frame_number(image) for image in read_all(source)]
    assert numbers == [1, 2, 3, 10, 21]
    assert source.corrupt == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "frame4.png" in warnings[0] and "\n" not in warnings[0]


def test_truncated_jpeg_counts_as_corrupt(tmp_path: Path) -> None:
    ok, data = cv2.imencode(
        ".jpg", numbered_frame(5, (320, 240)) + np.random.default_rng(0).integers(0, 20, (240, 320, 3), dtype=np.uint8)
    )
    assert ok
    (tmp_path / "a1.jpg").write_bytes(data.tobytes())
    (tmp_path / "a2.jpg").write_bytes(data.tobytes()[: len(data) // 2])  # an interrupted copy
    source = open_source(str(tmp_path))
    assert len(read_all(source)) == 1
    assert source.corrupt == 1


def test_glob_selects_matching_images_in_natural_order(tmp_path: Path) -> None:
    write_images(tmp_path, [3, 12, 1], pattern="cam_{}.jpg")
    write_images(tmp_path, [7], pattern="other_{}.jpg")
    source = open_source(str(tmp_path / "cam_*.jpg"))
    assert [frame_number(image) for image in read_all(source)] == [1, 3, 12]


def test_single_image_file_is_a_one_frame_source(tmp_path: Path) -> None:
    write_images(tmp_path, [9])
    frames = read_all(open_source(str(tmp_path / "frame9.png")))
    assert [frame_number(image) for image in frames] == [9]


def test_video_file_is_read_completely_in_order(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (64, 48))
    assert writer.isOpened()
    for number in range(25):
        writer.write(numbered_frame(number))
    writer.release()
    source = open_source(str(path))
    assert source.live is False
    assert source.fps == pytest.approx(12.0)
    assert [frame_number(image) for image in read_all(source)] == list(range(25))


@pytest.mark.parametrize(
    "spec, named",
    [
        ("/no/such/folder/clip.mp4", "/no/such/folder/clip.mp4"),
        ("/no/such/folder/*.jpg", "/no/such/folder/*.jpg"),
    ],
)
def test_missing_path_gives_one_line_naming_it(spec: str, named: str) -> None:
    with pytest.raises(SourceError) as caught:
        open_source(spec)
    message = str(caught.value)
    assert named in message and "\n" not in message
    assert "video file" in message or "pattern" in message  # says what to do


def test_empty_folder_and_undecodable_video_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="holds no image files"):
        open_source(str(tmp_path))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="cannot be decoded"):
        open_source(str(broken))


@pytest.mark.parametrize(
    "spec, complaint",
    [
        ("~nosuchuser9/clip.mp4", "there is no user 'nosuchuser9' here"),
        ("rtsp://viewer:s3cret@[cam/stream", "is not a valid URL (Invalid IPv6 URL)"),
    ],
)
def test_a_path_or_url_that_cannot_be_read_as_one_is_named(spec: str, complaint: str) -> None:
    with pytest.raises(SourceError) as caught:
        open_source(spec)
    assert complaint in str(caught.value) and "s3cret" not in str(caught.value)
    assert "s3cret" not in hide_password(spec)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_a_folder_video_or_image_the_daemon_may_not_read_names_the_services_group(tmp_path: Path, caplog) -> None:
    write_images(tmp_path / "frames", [1, 2])
    (tmp_path / "frames").chmod(0o000)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 100)
    clip.chmod(0o000)
    denied = r"cannot be read \(permission denied\); .*chgrp (-R )?edge-mood-config"
    try:
        for path in (tmp_path / "frames", clip):
            with pytest.raises(SourceError, match=denied):
                open_source(str(path))
    finally:
        (tmp_path / "frames").chmod(0o755)
    (tmp_path / "frames" / "frame1.png").chmod(0o000)
    with caplog.at_level(logging.WARNING):
        assert [frame_number(f) for f in read_all(open_source(str(tmp_path / "frames")))] == [2]
    assert "frame1.png: cannot be read (permission denied)" in caplog.text


def test_absent_v4l2_camera_is_named() -> None:
    with pytest.raises(SourceError, match="/dev/video97"):
        open_source("/dev/video97")
    with pytest.raises(SourceError, match="/dev/video98"):
        open_source("98")


def test_unreachable_stream_hides_the_password() -> None:
    # Port 9 (discard) on localhost refuses the connection at once.
    with pytest.raises(SourceError) as caught:
        open_source("rtsp://viewer:s3cret@127.0.0.1:9/live")
    assert "s3cret" not in str(caught.value) and "127.0.0.1:9" in str(caught.value)


@pytest.mark.skipif(importlib.util.find_spec("picamera2") is not None, reason="picamera2 is installed here")
def test_picamera_without_picamera2_says_how_to_install() -> None:
    with pytest.raises(SourceError) as caught:
        open_source("picamera")
    assert "sudo apt install python3-picamera2" in str(caught.value)
    assert "--system-site-packages" in str(caught.value)
