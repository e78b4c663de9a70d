"""From the config to the daemon's parts: the expression model, the face detector, the frame source and its
grabber, the spool, the publisher, the tracker, and the `Daemon` that runs them.

`edge run`, `edge check` and `edge bench` build what they need here; the loop in pipeline.py builds
nothing itself. The broker settings come from `MqttSettings.from_config`, which lives beside the settings it
fills so that `edge tail` can reach them without loading OpenCV and onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

from edge.capture import FrameGrabber
from edge.classifier import ExpressionModel
from edge.config import Config
from edge.discovery import HomeAssistantOptions
from edge.faces import Detector, make_detector
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
    return ExpressionModel.load(path, precision=config.model.precision, threads=config.model.threads)


def build_detector(config: Config, model: ExpressionModel) -> Detector:
    """The configured detector; YuNet is searched beside the expression model first, then the model folders."""
    yunet = Path(config.detector.yunet_model).expanduser() if config.detector.yunet_model else None
    return make_detector(
        kind=config.detector.kind,
        yunet_path=yunet,
        search_dirs=list(dict.fromkeys([model.path.parent, *model_dirs()])),
        detect_width=config.detector.detect_width,
        score_threshold=config.detector.score_threshold,
        min_face_px=config.detector.min_face_px,
    )


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
        once=once,
    )
