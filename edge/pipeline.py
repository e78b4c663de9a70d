"""The daemon's main loop: frame grabber -> analyzer -> tracker -> spool -> MQTT publisher.

Capture runs on its own thread and always hands over the newest frame; this loop analyses it, turns
tracker events into payloads, writes them to the on-disk spool (so nothing is lost while the broker is
away) and wakes the publisher. It feeds the systemd watchdog while frames keep flowing, and while the
camera is gone and being retried (a restart would not bring it back sooner); it stops feeding it when frames
stop although the camera is attached, or an attempt to reopen it hangs: a wedged camera or driver, which a
restart may cure. systemd then sends SIGTERM (the unit's WatchdogSignal), and the daemon stops as for
`systemctl stop`.

While no face is in view and no face is still tracked, the loop analyses frames at `detector.idle_fps`
only and lets the others pass; the first face seen brings back every frame. How each analysed frame finds
and classifies its faces (every frame, or following them between detections) is the analyzer's `Cadence`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import asdict
from typing import Any

import cv2

from edge.analyzer import EVERY_FRAME, Cadence, FrameAnalyzer, unusable_frame
from edge.boxes import normalized
from edge.capture import Frame, FrameGrabber
from edge.classifier import ExpressionModel
from edge.config import Config
from edge.errors import EXIT_EVENTS_UNSENT
from edge.faces import Detector
from edge.follow import RegionFollower
from edge.payloads import event_payload, state_payload, stats_payload
from edge.publisher import Publisher
from edge.sdnotify import SystemdNotifier
from edge.spool import Spool
from edge.stats import StageTimer
from edge.tracker import Detection, Tracker, TrackEvent

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0  # at the end of a finite source, wait this long for the broker to take the spool
STATE_REFRESH_S = 60.0  # republish the retained state at least this often while nothing changes
# Between events the state is sent again once a face's confidence has moved this far from the one sent (a
# settled face going blank), at most every STATE_CHANGE_S of the frame clock: Home Assistant's confidence and
# mood should not stay at the last event's.
CONFIDENCE_STEP = 0.1
STATE_CHANGE_S = 1.0


class Daemon:
    """Runs the parts it is handed (`wiring.build_daemon` builds them); `run()` returns the exit status."""

    def __init__(
        self,
        config: Config,
        *,
        model: ExpressionModel,
        detector: Detector,
        tracker: Tracker,
        grabber: FrameGrabber,
        spool: Spool,
        publisher: Publisher,
        cadence: Cadence = EVERY_FRAME,
        follower: RegionFollower | None = None,
        once: bool = False,
    ):
        self.config = config
        self.once = once
        self.stop_requested = threading.Event()
        self.timer = StageTimer()
        self.notifier = SystemdNotifier()
        self.device = config.device_id

        self.model = model
        self.detector = detector
        self.analyzer = FrameAnalyzer(detector, model, self.timer, cadence, follower)
        idle_fps = config.detector.idle_fps
        self._idle_period = 1.0 / idle_fps if idle_fps > 0 else 0.0
        self._analysed_at: float | None = None  # frame clock of the last analysed frame
        self.tracker = tracker
        self.grabber = grabber
        self.spool = spool
        self.publisher = publisher

        self.faces_now = 0
        self.bad_frames = 0
        self._frame_seen = False
        self._doing: str | None = None  # what systemd was last told ("processing", "waiting for"); None: not ready
        self._last_frame_at = time.monotonic()  # the stall clock: also moved on while the camera is waited for
        self._frame_seen_at = self._last_frame_at  # when the last usable frame was analysed
        self._stalled = False
        self._last_state_at = 0.0
        self._published: dict[int, tuple[str | None, float | None]] = {}  # track id: (expression, confidence) sent
        self._published_clock = 0.0  # the frame clock when the state was last sent
        self._last_stats_at = time.monotonic()
        self._last_watchdog_at = 0.0
        self._last_clock = 0.0  # the frame clock of the last frame (_frame_clock)
        self._last_bad: str | None = None  # why the last unusable frame was unusable
        self._last_bad_at = 0.0  # when it came: a stall mentions it only if it came within the stall timeout

    # -- lifecycle -------------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, _frame: object = None) -> None:
        if signum is not None:
            # After a stall that is most likely systemd's watchdog, which then restarts the service.
            why = " after frames stopped" if self._stalled else ""
            logger.info("received %s%s; shutting down", signal.Signals(signum).name, why)
        self.stop_requested.set()

    def run(self) -> int:
        """0, or EXIT_EVENTS_UNSENT when a --once run ends with events the broker did not take."""
        self.publisher.start()
        self.grabber.start()
        logger.info(
            "device %s: source %s, detector %s, model %s (%s), spool %s",
            self.device,
            self.grabber.description,
            self.detector.name,
            self.model.model_id,
            self.model.precision,
            self.spool.path,
        )
        try:
            self._loop()
        finally:
            unsent = self._shutdown()
        return EXIT_EVENTS_UNSENT if self.once and unsent else 0

    def _loop(self) -> None:
        # The retained state may still show the faces of a run that ended without saying so (a crash, a power
        # cut); none is tracked yet, whether or not the camera is there.
        self._publish_state()
        while not self.stop_requested.is_set():
            waited = time.perf_counter()
            frame = self.grabber.get(timeout=0.5)
            if frame is None:
                if self.grabber.finished:
                    logger.info("source ended after %d frames", self.timer.frames)
                    break
                self._housekeeping()
                continue
            self.timer.add("capture_wait", time.perf_counter() - waited)
            self._last_clock = self._frame_clock(frame)
            self._process(frame, self._last_clock)
            self._housekeeping()
        # The source ended or the daemon stops (systemctl stop, an upgrade).
        self._all_faces_leave()

    def _all_faces_leave(self) -> None:
        """Nobody watches the room any more: every face in view leaves and the retained state says so, rather
        than standing until frames come again (an MQTT reader, or Home Assistant after a restart, would take
        it for now)."""
        self._emit(self.tracker.finish(self._last_clock), frame_index=-1)
        self._publish_state()

    def _shutdown(self) -> int:
        """Stops every part; returns the number of events the broker did not take: left in the spool, or lost
        with a spool that still could not be written (the spool says how many)."""
        self.notifier.stopping()
        self.grabber.stop()
        if self.once and (self.spool.depth or self.spool.held):
            self.publisher.wait_drained(DRAIN_TIMEOUT_S)
        self.publisher.stop()
        self.spool.close()  # stores what memory still holds, if the disk lets it
        left = self.spool.depth
        if left:
            logger.log(
                logging.ERROR if self.once else logging.WARNING,
                "%d events not taken by broker %s wait in %s; they are sent first by the next `edge run` "
                "with device id %s",
                left,
                self.publisher.settings.broker,
                self.spool.path,
                self.device,
            )
        self.notifier.close()
        return left + self.spool.held

    # -- per frame -------------------------------------------------------------------------------

    def _frame_clock(self, frame: Frame) -> float:
        """Seconds used for face timeouts: media time for files read at full speed, so results do not
        depend on how fast this machine is; monotonic time for live and paced sources (events carry wall time)."""
        if self.grabber.live or self.config.source.realtime:
            return frame.captured_at
        fps = self.grabber.fps or self.config.source.fps
        return frame.index / fps

    def _process(self, frame: Frame, clock: float) -> None:
        started = time.perf_counter()
        unusable = unusable_frame(frame.image)
        if unusable is not None:
            self._count_bad_frame(frame, unusable)
            return
        if self._idle(clock):
            self._frame_done(started)
            return
        try:
            scored = self.analyzer.analyze(frame.image)
        except cv2.error as exc:
            self._count_bad_frame(frame, str(exc).strip().splitlines()[-1])
            return
        self._analysed_at = clock
        tracked = time.perf_counter()
        height, width = frame.image.shape[:2]
        # Tracks, events and the state message carry boxes as fractions of the frame they were seen in.
        detections = [Detection(normalized(s.face.box, width, height), s.scores) for s in scored]
        events = self.tracker.update(detections, clock)
        self.timer.add("track", time.perf_counter() - tracked)
        published = time.perf_counter()
        self._emit(events, frame.index)
        self.faces_now = len(scored)
        stale = time.monotonic() - self._last_state_at > STATE_REFRESH_S
        if events or stale or (clock - self._published_clock > STATE_CHANGE_S and self._state_moved()):
            self._publish_state()
        self.timer.add("publish", time.perf_counter() - published)
        self._frame_done(started)

    def _idle(self, clock: float) -> bool:
        """Whether this frame may pass unanalysed: nothing in view or tracked, and the idle rate's next
        frame is not due yet. The frame clock decides, so files read at full speed give the same events."""
        if not self._idle_period or self.analyzer.following or self.tracker.tracking or self._analysed_at is None:
            return False
        # A frame within a tenth of the period counts as due: camera timestamps jitter.
        return clock - self._analysed_at < 0.9 * self._idle_period

    def _frame_done(self, started: float) -> None:
        self.timer.add("total", time.perf_counter() - started)
        self.timer.frame_done()
        self._last_frame_at = self._frame_seen_at = time.monotonic()
        if self._stalled:
            logger.info("frames flow again")
            self._stalled = False
        if not self._frame_seen:
            self._frame_seen = True
            logger.info("first frame processed; ready")
        self._announce("processing")

    def _announce(self, doing: str) -> None:
        """Tell systemd what the service does now, with what source (`systemctl status`); the first time, that
        it is up. Called per frame: only a change is sent."""
        if doing == self._doing:
            return
        status = f"{doing} {self.grabber.description}"
        if self._doing is None:
            self.notifier.ready(status)
        else:
            self.notifier.status(status)
        self._doing = doing

    def _count_bad_frame(self, frame: Frame, why: str) -> None:
        self.bad_frames += 1
        self._last_bad, self._last_bad_at = why, time.monotonic()
        if self.bad_frames == 1 or self.bad_frames % 100 == 0:
            logger.warning("skipped unusable frame %d (%s); %d so far", frame.index, why, self.bad_frames)

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
                bbox_norm=event.box,
                model=self.model.model_id,
                extra=event.extra,
            )
            seq = self.spool.append(payload)  # None: held in memory until the spool can be written
            logger.debug("event %s: %s track %d %s", seq, event.type, event.track_id, event.expression or "")
        self.publisher.wake()

    def _state_moved(self) -> bool:
        """Whether a face came, went, settled or moved its confidence by CONFIDENCE_STEP since the state sent."""
        now = {f.track_id: (f.expression, f.confidence) for f in self.tracker.visible}
        if now.keys() != self._published.keys():
            return True
        return any(
            expression != self._published[k][0]
            or (confidence is not None and (sent := self._published[k][1]) is not None)
            and abs(confidence - sent) >= CONFIDENCE_STEP
            for k, (expression, confidence) in now.items()
        )

    def _publish_state(self) -> None:
        visible = self.tracker.visible
        self._published = {f.track_id: (f.expression, f.confidence) for f in visible}
        self._published_clock = self._last_clock
        faces = [asdict(face) for face in visible]
        self.publisher.publish_state(
            state_payload(device=self.device, ts=time.time(), faces=faces, model=self.model.model_id)
        )
        self._last_state_at = time.monotonic()

    # -- health and stats ------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        now = time.monotonic()
        # The grabber has logged the loss and retries with back-off (unless an attempt hangs).
        waiting = self.grabber.waiting_for_source(hung_after_s=self.config.service.stall_timeout_s)
        if waiting:
            self._last_frame_at = now  # no frame is due until the camera is back
            self._announce("waiting for")  # absent at start: up, and waiting
        healthy = now - self._last_frame_at < self.config.service.stall_timeout_s
        # The camera stalled, or has been gone as long as a face may go unseen before it leaves (a glitch that
        # reconnects sooner keeps the faces, as frames without them would).
        gone = waiting and now - self._frame_seen_at >= self.config.tracking.leave_after_s
        if self.tracker.tracking and (gone or not healthy):
            self._all_faces_leave()
        if not healthy and not self._stalled:
            self._stalled = True
            # Unusable frames that came before the camera was lost and reopened do not come now.
            bad = self._last_bad if now - self._last_bad_at < self.config.service.stall_timeout_s else None
            logger.warning(
                "no %sframe for %.0f s from %s%s%s",
                "" if bad is None else "usable ",
                now - self._last_frame_at,
                self.grabber.description,
                "" if bad is None else f" (frames come, but unusable: {bad})",
                # Only systemd acts on it: it restarts the service once the watchdog is not fed.
                "; the systemd watchdog is no longer fed" if self.notifier.watchdog_interval_s else "",
            )
        interval = self.notifier.watchdog_interval_s or 5.0
        if healthy and self._doing is not None and now - self._last_watchdog_at >= interval / 2:
            self.notifier.watchdog()
            self._last_watchdog_at = now
        if now - self._last_stats_at >= self.config.stats.interval_s:
            self._last_stats_at = now
            self.publisher.publish_stats(self.stats())

    def stats(self) -> dict[str, Any]:
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
            spool_memory=self.spool.held,
            spool_memory_dropped=self.spool.held_dropped,
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
