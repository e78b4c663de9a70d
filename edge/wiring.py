"""From the config to the daemon's parts: the expression model, the face detector, the frame source and its
grabber, the spool, the publisher, the tracker, and the `Daemon` that runs them.

`edge run`, `edge check` and `edge bench` build what they need here; the loop in pipeline.py builds
nothing itself. The broker settings come from `MqttSettings.from_config`, which lives beside the settings it
fills so that `edge tail` can reach them without loading OpenCV and onnxruntime.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2

from edge.analyzer import Cadence
from edge.capture import FrameGrabber
from edge.classifier import ExpressionModel
from edge.config import Config
from edge.discovery import HomeAssistantOptions
from edge.errors import ModelError
from edge.faces import Detector, YuNetFileError, find_yunet, make_detector
from edge.follow import RegionFollower
from edge.locations import data_dir, default_model, model_dirs
from edge.mqtt_client import MqttSettings
from edge.pipeline import Daemon
from edge.publisher import Publisher
from edge.sources import FrameSource, hide_password, open_source
from edge.spool import Spool, SpoolError
from edge.tracker import Tracker, TrackerSettings
from edge.yunet_fetch import fetch_yunet

logger = logging.getLogger(__name__)

SPOOL_FILE = "spool.sqlite3"


def load_model(config: Config) -> ExpressionModel:
    path = Path(config.model.path).expanduser() if config.model.path else default_model()
    return ExpressionModel.load(
        path, precision=config.model.precision, threads=config.model.threads, spin_wait=config.model.spin_wait
    )


def build_detector(config: Config, model: ExpressionModel) -> Detector:
    """The configured detector. YuNet is searched beside the expression model first, then in the model folders
    and the data folder; where none is found it is fetched there (see `first_use_yunet`)."""
    # OpenCV's thread pool is process-wide: detection, the resizes and the crop's warp all share it.
    if config.detector.threads:
        cv2.setNumThreads(config.detector.threads)
    yunet = Path(config.detector.yunet_model).expanduser() if config.detector.yunet_model else None
    search_dirs = list(dict.fromkeys([model.path.parent, *model_dirs(), data_dir()]))
    if yunet is None and config.detector.kind != "haar" and find_yunet(search_dirs) is None:
        yunet = first_use_yunet(config)
    try:
        return make_detector(
            kind=config.detector.kind,
            yunet_path=yunet,
            search_dirs=search_dirs,
            detect_width=config.detector.detect_width,
            score_threshold=config.detector.score_threshold,
            min_face_px=config.detector.min_face_px,
        )
    except YuNetFileError as exc:
        if not config.detector.yunet_model:
            raise
        # A file the user named: re-running the installer (the fix for one it fetched) changes nothing.
        raise ModelError(
            f"detector.yunet_model = {config.detector.yunet_model!r}: {exc.cause}; point it at "
            f"face_detection_yunet_2023mar.onnx (`edge models fetch` prints where it puts one) or leave it empty"
        ) from None


def first_use_yunet(config: Config) -> Path | None:
    """YuNet fetched into the data folder from `detector.yunet_url`. Where that fails (offline, checksum, no
    write access), kind "auto" logs one warning naming the file to place and where, and gets None (Haar)."""
    if not config.detector.yunet_url:
        return None
    folder = data_dir()
    try:
        path = fetch_yunet(folder, config.detector.yunet_url, config.detector.yunet_sha256)
    except ModelError as exc:
        if config.detector.kind == "yunet":
            raise
        logger.warning("%s; using the Haar cascade meanwhile", exc)
        return None
    logger.info("YuNet face detector fetched into %s", path)
    return path


def analyzer_cadence(config: Config) -> Cadence:
    return Cadence(
        detect_every=config.detector.detect_every,
        classify_every=config.model.classify_every,
        adaptive_width=config.detector.adaptive_width,
    )


def build_follower(config: Config, detector: Detector) -> RegionFollower | None:
    """What follows faces between full detections; none is needed when every frame gets one."""
    if config.detector.detect_every == 1:
        return None
    return RegionFollower(detector, config.detector.min_face_px)


def open_frame_source(config: Config) -> FrameSource:
    source = config.source
    return open_source(source.uri, source.width, source.height, source.fps)


def frame_grabber(config: Config) -> FrameGrabber:
    """A grabber that opens (and after a failure reopens) the configured source once started."""
    return FrameGrabber(
        lambda: open_frame_source(config),
        name=hide_password(config.source.uri),
        realtime=config.source.realtime,
        reconnect_max_s=config.source.reconnect_max_s,
    )


def spool_path(config: Config) -> Path:
    """One spool per device id, so a run under another id never sends this device's events."""
    return config.state_dir / config.device_id / SPOOL_FILE


def adopt_shared_spool(config: Config) -> None:
    """Earlier versions kept one spool for every device id in the state folder itself. The first device to
    start without a spool of its own takes that file over, so no unsent event is lost on an upgrade."""
    shared, own = config.state_dir / SPOOL_FILE, spool_path(config)
    if not shared.is_file() or own.exists():
        return
    try:
        own.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):  # SQLite's write-ahead log belongs to the file
            if Path(f"{shared}{suffix}").exists():
                os.replace(f"{shared}{suffix}", f"{own}{suffix}")
    except OSError as exc:
        raise SpoolError(
            f"cannot move the spool {shared} to {own} ({exc.strerror}); move it there by hand with its -wal and "
            f"-shm files"
        ) from None
    logger.info("moved the spool of an earlier version from %s to %s", shared, own)


def open_spool(config: Config) -> Spool:
    adopt_shared_spool(config)
    return Spool(
        spool_path(config),
        max_events=config.spool.max_events,
        max_age_s=config.spool.max_age_days * 86400,
        memory_events=config.spool.memory_events,
    )


def build_daemon(config: Config, once: bool = False) -> Daemon:
    """Every part of a running daemon. A part that cannot work raises its UserError before anything starts."""
    model = load_model(config)
    detector = build_detector(config, model)
    tracker = Tracker(model.labels, TrackerSettings(**config.tracking.as_dict()))
    grabber = frame_grabber(config)
    spool = open_spool(config)
    publisher = Publisher(
        MqttSettings.from_config(config),
        spool,
        labels=model.labels,
        model=model.model_id,
        home_assistant=HomeAssistantOptions(**config.homeassistant.as_dict()),
    )
    return Daemon(
        config,
        model=model,
        detector=detector,
        tracker=tracker,
        grabber=grabber,
        spool=spool,
        publisher=publisher,
        cadence=analyzer_cadence(config),
        follower=build_follower(config, detector),
        once=once,
    )
