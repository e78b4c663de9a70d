"""From the config to the daemon's parts: the expression model, the face detector, the frame source and its
grabber, the spool, the publisher, the tracker, and the `Daemon` that runs them.

`edge run`, `edge check` and `edge bench` build what they need here; the loop in pipeline.py builds
nothing itself. The broker settings come from `MqttSettings.from_config`, which lives beside the settings it
fills so that `edge tail` can reach them without loading OpenCV and onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import cv2

from edge.analyzer import Cadence
from edge.capture import FrameGrabber
from edge.classifier import ExpressionModel
from edge.config import Config
from edge.faces import Detector, make_detector
from edge.follow import RegionFollower
from edge.locations import default_model, model_dirs
from edge.mqtt_client import MqttSettings
from edge.pipeline import Daemon
from edge.publisher import Publisher
from edge.sources import FrameSource, open_source
from edge.spool import Spool
from edge.tracker import Tracker, TrackerSettings

SPOOL_FILE = "spool.sqlite3"


def load_model(config: Config) -> ExpressionModel:
    path = Path(config.model.path).expanduser() if config.model.path else default_model()
    return ExpressionModel.load(
        path, precision=config.model.precision, threads=config.model.threads, spin_wait=config.model.spin_wait
    )


def build_detector(config: Config, model: ExpressionModel) -> Detector:
    """The configured detector; YuNet is searched beside the expression model first, then the model folders."""
    # OpenCV's thread pool is process-wide: detection, the resizes and the crop's warp all share it.
    if config.detector.threads:
        cv2.setNumThreads(config.detector.threads)
    yunet = Path(config.detector.yunet_model).expanduser() if config.detector.yunet_model else None
    return make_detector(
        kind=config.detector.kind,
        yunet_path=yunet,
        search_dirs=list(dict.fromkeys([model.path.parent, *model_dirs()])),
        detect_width=config.detector.detect_width,
        score_threshold=config.detector.score_threshold,
        min_face_px=config.detector.min_face_px,
    )


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
        realtime=config.source.realtime,
        reconnect_max_s=config.source.reconnect_max_s,
    )


def spool_path(config: Config) -> Path:
    return config.state_dir / SPOOL_FILE


def open_spool(config: Config) -> Spool:
    return Spool(
        spool_path(config),
        max_events=config.spool.max_events,
        max_age_s=config.spool.max_age_days * 86400,
    )


def build_daemon(config: Config, once: bool = False) -> Daemon:
    """Every part of a running daemon. A part that cannot work raises its UserError before anything starts."""
    model = load_model(config)
    detector = build_detector(config, model)
    tracker = Tracker(model.labels, TrackerSettings(**config.tracking.as_dict()))
    grabber = frame_grabber(config)
    spool = open_spool(config)
    publisher = Publisher(MqttSettings.from_config(config), spool, labels=model.labels, model=model.model_id)
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
