"""The daemon's main loop: frame grabber -> analyzer -> tracker -> spool -> MQTT publisher.

Capture runs on its own thread and always hands over the newest frame; this loop analyses it, turns
tracker events into payloads, writes them to the on-disk spool (so nothing is lost while the broker is
away) and wakes the publisher. It feeds the systemd watchdog only while frames keep flowing.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import cv2

from edge.analyzer import FrameAnalyzer, is_usable_frame
from edge.capture import Frame, FrameGrabber
from edge.classifier import ExpressionModel
from edge.config import Config
from edge.discovery import HomeAssistantOptions
from edge.faces import make_detector
from edge.locations import default_model, model_dirs
from edge.mqtt_client import MqttSettings
from edge.payloads import event_payload, state_payload, stats_payload
from edge.publisher import Publisher
from edge.sdnotify import SystemdNotifier
from edge.sources import open_source
from edge.spool import Spool
from edge.stats import StageTimer
from edge.tracker import Detection, Tracker, TrackerSettings, TrackEvent

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.sqlite3"
DRAIN_TIMEOUT_S = 10.0  # at the end of a finite source, wait this long for the broker to take the spool
STATE_REFRESH_S = 60.0  # republish the retained state at least this often while nothing changes


def load_model(config: Config) -> ExpressionModel:
    path = Path(config.model.path).expanduser() if config.model.path else default_model()
    return ExpressionModel.load(path, precision=config.model.precision, threads=config.model.threads)


def build_detector(config: Config, model: ExpressionModel):
    yunet = Path(config.detector.yunet_model).expanduser() if config.detector.yunet_model else None
    return make_detector(
        kind=config.detector.kind,
        yunet_path=yunet,
        search_dirs=list(dict.fromkeys([model.path.parent, *model_dirs()])),
        detect_width=config.detector.detect_width,
        score_threshold=config.detector.score_threshold,
        min_face_px=config.detector.min_face_px,
    )


def mqtt_settings(config: Config) -> MqttSettings:
    m = config.mqtt
    return MqttSettings(
        host=m.host,
        port=m.port,
        protocol=m.protocol,
        prefix=m.prefix,
        device_id=config.device_id,
        username=m.username or None,
        password=config.mqtt_password(),
        tls=m.tls,
        tls_ca=m.tls_ca or None,
        tls_cert=m.tls_cert or None,
        tls_key=m.tls_key or None,
        tls_insecure=m.tls_insecure,
        keepalive=m.keepalive,
        qos=m.qos,
        discovery=m.discovery,
        discovery_prefix=m.discovery_prefix,
    )


def open_spool(config: Config) -> Spool:
    return Spool(
        config.state_dir / SPOOL_FILE,
        max_events=config.spool.max_events,
        max_age_s=config.spool.max_age_days * 86400,
    )


def tracker_settings(config: Config) -> TrackerSettings:
    return TrackerSettings(**config.tracking.as_dict())


class Daemon:
    """Owns every part of a running pipeline; `run()` returns the process exit status."""

    def __init__(self, config: Config, once: bool = False):
        self.config = config
        self.once = once
        self.stop_requested = threading.Event()
        self.timer = StageTimer()
        self.notifier = SystemdNotifier()
        self.device = config.device_id

        self.model = load_model(config)
        self.detector = build_detector(config, self.model)
        self.analyzer = FrameAnalyzer(self.detector, self.model, self.timer)
        self.tracker = Tracker(self.model.labels, tracker_settings(config))
        source_spec = config.source.uri
        self.grabber = FrameGrabber(
            lambda: open_source(source_spec, config.source.width, config.source.height, config.source.fps),
            realtime=config.source.realtime,
            reconnect_max_s=config.source.reconnect_max_s,
        )
        self.spool = open_spool(config)
        self.publisher = Publisher(
            mqtt_settings(config),
            self.spool,
            labels=self.model.labels,
            model=self.model.model_id,
            home_assistant=HomeAssistantOptions(**config.homeassistant.as_dict()),
        )

        self.faces_now = 0
        self.bad_frames = 0
        self._ready = False
        self._last_frame_at = time.monotonic()
        self._stalled = False
        self._last_state_at = 0.0
        self._last_stats_at = time.monotonic()
        self._last_watchdog_at = 0.0
        self._frame_size = (1, 1)

    # -- lifecycle -------------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, _frame=None) -> None:
        if signum is not None:
            log.info("received %s; shutting down", signal.Signals(signum).name)
        self.stop_requested.set()

    def run(self) -> int:
        self.publisher.start()
        self.grabber.start()
        log.info(
            "device %s: source %s, detector %s, model %s (%s), spool %s",
            self.device,
            self.grabber.description,
            self.detector.name,
            self.model.model_id,
            self.model.precision,
            self.config.state_dir / SPOOL_FILE,
        )
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _loop(self) -> None:
        last_clock = 0.0
        while not self.stop_requested.is_set():
            waited = time.perf_counter()
            frame = self.grabber.get(timeout=0.5)
            if frame is None:
                if self.grabber.finished:
                    log.info("source ended after %d frames", self.timer.frames)
                    break
                self._housekeeping()
                continue
            self.timer.add("capture_wait", time.perf_counter() - waited)
            last_clock = self._frame_clock(frame)
            self._process(frame, last_clock)
            self._housekeeping()
        if self.grabber.finished or self.once:
            self._emit(self.tracker.finish(last_clock), frame_index=-1)
            self._publish_state()

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.grabber.stop()
        if self.once and self.spool.depth:
            self.publisher.wait_drained(DRAIN_TIMEOUT_S)
        left = self.spool.depth
        if left:
            log.warning("%d events are still in the spool; they are sent when the broker is back", left)
        self.publisher.stop()
        self.spool.close()
        self.notifier.close()

    # -- per frame -------------------------------------------------------------------------------

    def _frame_clock(self, frame: Frame) -> float:
        """Seconds used for face timeouts: media time for files read at full speed, so results do not
        depend on how fast this machine is; wall time for live and paced sources."""
        if self.grabber.live or self.config.source.realtime:
            return frame.captured_at
        fps = self.grabber.fps or self.config.source.fps
        return frame.index / fps

    def _process(self, frame: Frame, clock: float) -> None:
        started = time.perf_counter()
        if not is_usable_frame(frame.image):
            self._count_bad_frame(frame, "not an 8-bit image")
            return
        self._frame_size = (frame.image.shape[1], frame.image.shape[0])
        try:
            scored = self.analyzer.analyze(frame.image)
        except cv2.error as exc:
            self._count_bad_frame(frame, str(exc).strip().splitlines()[-1])
            return
        tracked = time.perf_counter()
        events = self.tracker.update([Detection(s.face.box, s.scores) for s in scored], clock)
        self.timer.add("track", time.perf_counter() - tracked)
        published = time.perf_counter()
        self._emit(events, frame.index)
        self.faces_now = len(scored)
        if events or time.monotonic() - self._last_state_at > STATE_REFRESH_S:
            self._publish_state()
        self.timer.add("publish", time.perf_counter() - published)
        self.timer.add("total", time.perf_counter() - started)
        self.timer.frame_done()
        self._last_frame_at = time.monotonic()
        if self._stalled:
            log.info("frames flow again")
            self._stalled = False
        if not self._ready:
            self._ready = True
            self.notifier.ready(f"processing {self.grabber.description}")
            log.info("first frame processed; ready")

    def _count_bad_frame(self, frame: Frame, why: str) -> None:
        self.bad_frames += 1
        if self.bad_frames == 1 or self.bad_frames % 100 == 0:
            log.warning("skipped unusable frame %d (%s); %d so far", frame.index, why, self.bad_frames)

    def _emit(self, events: list[TrackEvent], frame_index: int) -> None:
        if not events:
            return
        for event in events:
            payload = event_payload(
                device=self.device,
                type=event.type,
                frame=frame_index,
                ts=time.time(),
                track_id=event.track_id,
                expression=event.expression,
                confidence=event.confidence,
                scores=event.scores,
                bbox_norm=self._normalized(event.box),
                model=self.model.model_id,
                extra=event.extra,
            )
            seq = self.spool.append(payload)
            log.debug("event %d: %s track %d %s", seq, event.type, event.track_id, event.expression or "")
        self.publisher.wake()

    def _normalized(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A box in frame pixels as fractions of the frame (what payloads carry)."""
        width, height = self._frame_size
        return box[0] / width, box[1] / height, box[2] / width, box[3] / height

    def _publish_state(self) -> None:
        faces = [
            {
                "track_id": t.id,
                "expression": self.model.labels[t.settled] if t.settled is not None else None,
                "confidence": float(t.smoothed[t.settled]) if t.settled is not None else None,
                "bbox": self._normalized(t.box),
            }
            for t in self.tracker.visible
        ]
        self.publisher.publish_state(
            state_payload(device=self.device, ts=time.time(), faces=faces, model=self.model.model_id)
        )
        self._last_state_at = time.monotonic()

    # -- health and stats ------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        now = time.monotonic()
        healthy = now - self._last_frame_at < self.config.service.stall_timeout_s
        if not healthy and not self._stalled:
            self._stalled = True
            log.warning(
                "no frame for %.0f s from %s; the watchdog is no longer fed",
                now - self._last_frame_at,
                self.grabber.description,
            )
        interval = self.notifier.watchdog_interval_s or 5.0
        if healthy and self._ready and now - self._last_watchdog_at >= interval / 2:
            self.notifier.watchdog()
            self._last_watchdog_at = now
        if now - self._last_stats_at >= self.config.stats.interval_s:
            self._last_stats_at = now
            self.publisher.publish_stats(self.stats())

    def stats(self) -> dict:
        return stats_payload(
            device=self.device,
            ts=time.time(),
            fps=round(self.timer.fps(), 2),
            stage_ms=self.timer.stage_ms(),
            faces=self.faces_now,
            frames=self.timer.frames,
            frames_dropped=self.grabber.dropped,
            frames_corrupt=self.grabber.corrupt + self.bad_frames,
            source_reconnects=self.grabber.reconnects,
            spool_depth=self.spool.depth,
            spool_dropped=self.spool.dropped,
            cpu_percent=self.timer.cpu_percent(),
            rss_mb=self.timer.rss_mb(),
            uptime_s=self.timer.uptime_s(),
            detector=self.detector.name,
            model=self.model.model_id,
            precision=self.model.precision,
        )


def install_signal_handlers(daemon: Daemon) -> None:
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
