"""Frame sources named by one `--source` string: Pi camera, V4L2/USB camera, stream URL, video file, images.

Every source offers `live`, `description`, `read()` and `close()`. Two optional attributes are read by the
frame grabber when present: `fps` (nominal rate, used to pace finite sources in realtime mode) and `corrupt`
(images skipped because they could not be decoded, or not within the frame size limit).

No source hands out a frame larger than frame_limit.MAX_FRAME_PIXELS; each says so once when it shrinks one.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from edge.config import home_unknown, permission_denied, read_denied
from edge.contract import IMAGE_SUFFIXES
from edge.errors import SourceError
from edge.frame_limit import FrameTooLarge, decode_bounded, limit_text, shrunk

logger = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
# FFmpeg would otherwise wait ~30 s on a dead stream before the grabber can start its back-off.
STREAM_TIMEOUT_MS = 10_000
SOURCE_HELP = (
    "give `picamera`, a camera index or /dev/videoN, an rtsp:// or http:// URL, "
    "a video file, or an image folder or glob"
)


class SourceLost(Exception):
    """A live source stopped delivering frames; the grabber closes it and reopens it with back-off."""


class SourceUnavailable(SourceError):
    """A live source is absent right now (camera unplugged, stream down) but may come back later."""


class FrameSource(Protocol):
    live: bool
    description: str

    def read(self) -> np.ndarray | None:
        """Next frame, BGR uint8 HxWx3 or grey HxW; None at the end of a finite source."""

    def close(self) -> None:
        """Release the device or file."""


def hide_password(url: str) -> str:
    """Stream URLs often carry credentials; keep them out of logs and status payloads."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL (open_source says so); still keep a password out of the log
        return re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _natural_key(path: str) -> list[object]:
    """frame2.png before frame10.png: compare digit runs as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path)]


def _positive_fps(value: float) -> float | None:
    return float(value) if value and value > 0 and value == value else None  # NaN from some containers


class PiCameraSource:
    """The Raspberry Pi camera through picamera2, as a grey image: the Y plane of a YUV420 stream."""

    live = True
    corrupt = 0

    def __init__(self, index: int, width: int, height: int, fps: float) -> None:
        try:
            from picamera2 import Picamera2  # only present on Raspberry Pi OS
        except ImportError:
            raise SourceError(
                "Pi camera support needs picamera2: run `sudo apt install python3-picamera2` and create the "
                "venv with `python3 -m venv --system-site-packages`"
            ) from None
        cameras = Picamera2.global_camera_info()
        if index >= len(cameras):
            raise SourceUnavailable(
                f"Pi camera {index} not found ({len(cameras)} camera(s) detected); check the ribbon cable "
                f"and `rpicam-hello --list-cameras`"
            )
        try:
            self._camera = Picamera2(camera_num=index)
            # queue=False: every capture waits for a fresh frame instead of returning a buffered old one.
            config = self._camera.create_video_configuration(
                main={"size": (width, height), "format": "YUV420"}, controls={"FrameRate": fps}, queue=False
            )
            self._camera.align_configuration(config)
            self._camera.configure(config)
            self._camera.start()
        except Exception as exc:  # libcamera raises various types for a busy or failing camera
            raise SourceUnavailable(
                f"Pi camera {index} cannot be started ({exc}); stop other programs using it"
            ) from None
        self._width, self._height = config["main"]["size"]
        self.fps = fps
        self.description = f"Pi camera {index} ({self._width}x{self._height} grey)"

    def read(self) -> np.ndarray:
        try:
            yuv = self._camera.capture_array("main")
        except Exception as exc:
            raise SourceLost(f"{self.description}: {exc}") from exc
        # The first `height` rows of YUV420 are the luma plane; rows may be padded to the stride.
        return yuv[: self._height, : self._width]

    def close(self) -> None:
        try:
            self._camera.stop()
        finally:
            self._camera.close()


class OpenCVSource:
    """A cv2.VideoCapture: V4L2 camera, network stream (both live) or video file (finite)."""

    corrupt = 0

    def __init__(self, capture: cv2.VideoCapture, live: bool, description: str, fps: float | None) -> None:
        self._capture = capture
        self.live = live
        self.description = description
        self.fps = fps
        self._shrink_logged = False

    def read(self) -> np.ndarray | None:
        ok, image = self._capture.read()
        if ok:
            small = shrunk(image)
            if small is not image and not self._shrink_logged:
                height, width = image.shape[:2]
                logger.warning(
                    "%s delivers %dx%d frames; shrinking them: %s", self.description, width, height, limit_text()
                )
                self._shrink_logged = True
            return small
        if self.live:
            raise SourceLost(f"no frame from {self.description}")
        return None

    def close(self) -> None:
        self._capture.release()


def _decode_image(path: str) -> tuple[np.ndarray | None, str | None]:
    """Decode one image file within the frame size limit: (None if it is unreadable, not an image, or a
    truncated JPEG; a note if it was read smaller than it is). Raises FrameTooLarge, and PermissionError for a
    file the daemon may not read."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except PermissionError:
        raise  # a file the daemon may not read is no corrupt one: the caller says so
    except OSError:
        return None, None
    if data.size == 0:
        return None, None
    # A JPEG cut off mid-copy still decodes (grey lower part); its missing end-of-image marker gives it away.
    if data[:2].tobytes() == b"\xff\xd8" and not data[-4096:].tobytes().rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return None, None
    try:
        return decode_bounded(data)
    except cv2.error:
        return None, None


class ImageFilesSource:
    """A sorted list of image files read one by one; undecodable files are skipped and counted."""

    live = False

    def __init__(self, paths: list[str], description: str, fps: float | None) -> None:
        self._paths = paths
        self._next = 0
        self.description = description
        self.fps = fps
        self.corrupt = 0
        self._shrink_logged = False

    def read(self) -> np.ndarray | None:
        while self._next < len(self._paths):
            path = self._paths[self._next]
            self._next += 1
            try:
                image, note = _decode_image(path)
            except PermissionError:
                self.corrupt += 1
                logger.warning("skipping image %s: %s", path, permission_denied(path))
                continue
            except FrameTooLarge as exc:
                self.corrupt += 1
                logger.warning("skipping image %s: %s; %s, scale it down", path, exc, limit_text())
                continue
            if image is not None:
                if note and not self._shrink_logged:
                    logger.warning("image %s is %s: %s (said once per source)", path, note, limit_text())
                    self._shrink_logged = True
                return image
            self.corrupt += 1
            logger.warning("skipping unreadable image %s (corrupt, truncated or not an image)", path)
        return None

    def close(self) -> None:
        self._next = len(self._paths)


def _open_v4l2(device: str, width: int, height: int, fps: float) -> OpenCVSource:
    target: int | str = int(device) if device.isdigit() else device
    path = f"/dev/video{device}" if isinstance(target, int) else device
    if os.path.isdir("/dev") and not os.path.exists(path):
        raise SourceUnavailable(
            f"camera {path} not found; plug it in, list cameras with "
            f"`v4l2-ctl --list-devices`, or pick another --source"
        )
    capture = cv2.VideoCapture(target, getattr(cv2, "CAP_V4L2", cv2.CAP_ANY))
    if not capture.isOpened():
        raise SourceUnavailable(
            f"camera {path} cannot be opened; close other programs using it and make sure "
            f"this user is in the `video` group"
        )
    capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    capture.set(cv2.CAP_PROP_FPS, fps)
    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue would add latency
    got_w, got_h = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    return OpenCVSource(capture, True, f"camera {path} ({got_w}x{got_h})", fps)


def _open_stream(url: str, fps: float) -> OpenCVSource:
    shown = hide_password(url)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
    capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        raise SourceUnavailable(
            f"stream {shown} cannot be opened; check the URL, credentials and that the "
            f"camera is reachable (try `ffprobe '{shown}'`)"
        )
    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return OpenCVSource(capture, True, f"stream {shown}", _positive_fps(capture.get(cv2.CAP_PROP_FPS)) or fps)


def _open_video_file(path: str, fps: float) -> OpenCVSource:
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise SourceError(
            f"video file {path} cannot be decoded; convert it, e.g. "
            f"`ffmpeg -i '{path}' -c:v libx264 out.mp4`, or check it is not truncated"
        )
    file_fps = _positive_fps(capture.get(cv2.CAP_PROP_FPS))
    return OpenCVSource(capture, False, f"video file {path}", file_fps or fps)


def _image_paths(candidates: list[str]) -> list[str]:
    return sorted(
        (p for p in candidates if Path(p).suffix.lower() in IMAGE_SUFFIXES and os.path.isfile(p)), key=_natural_key
    )


def open_source(spec: str, width: int = 640, height: int = 480, fps: float = 15.0) -> FrameSource:
    """Open the source named by `spec`; raise SourceError (one line naming cause and fix) if impossible.

    width/height/fps are requested from cameras; fps also paces image folders in realtime mode.
    """
    spec = spec.strip()
    if not spec:
        raise SourceError(f"no source given; {SOURCE_HELP}")
    camera = re.fullmatch(r"picamera(?::(\d+))?", spec)
    if camera:
        return PiCameraSource(int(camera.group(1) or 0), width, height, fps)
    if spec.isdigit() or spec.startswith("/dev/"):
        return _open_v4l2(spec, width, height, fps)
    try:
        scheme = urlsplit(spec).scheme.lower()
    except ValueError as exc:  # e.g. an unclosed [ of an IPv6 address
        raise SourceError(f"source {hide_password(spec)!r} is not a valid URL ({exc}); {SOURCE_HELP}") from None
    if scheme in STREAM_SCHEMES:
        return _open_stream(spec, fps)
    if any(char in spec for char in "*?["):  # glob syntax
        paths = _image_paths(glob.glob(os.path.expanduser(spec)))
        if not paths:
            raise SourceError(
                f"no image files match {spec!r}; check the pattern (quote it so the shell "
                f"does not expand it) or {SOURCE_HELP}"
            )
        return ImageFilesSource(paths, f"{len(paths)} images matching {spec!r}", fps)
    if why := home_unknown(spec):
        raise SourceError(f"source {spec!r}: {why}")
    path = Path(spec).expanduser()
    if why := read_denied(path):
        raise SourceError(f"source {path} {why}")
    if path.is_dir():
        paths = _image_paths([str(p) for p in path.iterdir()])
        if not paths:
            raise SourceError(
                f"folder {path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); {SOURCE_HELP}"
            )
        return ImageFilesSource(paths, f"{len(paths)} images in {path}", fps)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageFilesSource([str(path)], f"image {path}", fps)
        return _open_video_file(str(path), fps)
    raise SourceError(f"source {spec!r}: no such file or folder; fix the path or {SOURCE_HELP}")
