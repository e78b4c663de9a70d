"""FrameGrabber: reads a frame source on its own thread and hands frames to the pipeline.

Live sources (and finite ones in realtime mode) go through a one-slot buffer that always holds the newest
frame: a slow consumer skips frames instead of falling behind, so latency cannot grow. Finite sources in
normal mode hand over every frame (the reader waits for the consumer), so results do not depend on speed.
A live source that fails is closed and reopened with exponential back-off; it never ends the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge.sources import FrameSource, SourceUnavailable

logger = logging.getLogger(__name__)

STOP_JOIN_S = 5.0


@dataclass
class Frame:
    image: np.ndarray
    index: int  # source frame number: counts every frame read, dropped ones included
    # time.monotonic() when the frame was read (or released, for a paced file): face timeouts and durations run
    # on it, so a clock step (NTP at boot on a Pi without a real-time clock) cannot hold or cut a face's stay.
    captured_at: float


class FrameGrabber:
    """Capture thread plus handoff slot. `get()` returns None on timeout or once `finished`."""

    def __init__(
        self,
        open_fn: Callable[[], FrameSource],
        name: str = "the source",
        realtime: bool = False,
        reconnect_initial_s: float = 1.0,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self._open_fn = open_fn
        self._realtime = realtime
        self._initial_s = reconnect_initial_s
        self._max_s = max(reconnect_max_s, reconnect_initial_s)
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._ended = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source: FrameSource | None = None
        self._corrupt_before = 0  # images skipped by sources already closed
        self._next_index = 0
        self._ever_attached = False
        self._opening_since: float | None = None  # monotonic start of the reopen attempt under way
        # The wait before the next reopen: it keeps growing while the source fails soon after it opens (a
        # flaky stream), as while it cannot be opened at all; a source that stayed up a while starts over.
        self._next_wait_s = reconnect_initial_s
        self._attached_at = 0.0
        self.dropped = 0
        self.reconnects = 0
        self.connected = False
        self.description = f"{name} (not opened yet)"  # until a source says what it is
        # What the last attached source said of itself; a source that cannot be opened yet is a live one.
        self.live = True
        self.fps: float | None = None

    @property
    def finished(self) -> bool:
        """The source has ended (or the grabber was stopped) and its last frame has been taken."""
        with self._cond:
            return self._ended and self._slot is None

    def waiting_for_source(self, hung_after_s: float) -> bool:
        """The live source is gone (or not there yet) and the capture thread retries it with back-off: no
        frame is due. Not so once one attempt to open it has taken longer than `hung_after_s`: a wedged
        driver, which a restart may cure."""
        opening_since, thread = self._opening_since, self._thread
        if opening_since is not None and time.monotonic() - opening_since > hung_after_s:
            return False
        return not self.connected and thread is not None and thread.is_alive() and not self._ended

    @property
    def corrupt(self) -> int:
        source = self._source
        return self._corrupt_before + (getattr(source, "corrupt", 0) if source is not None else 0)

    def start(self) -> None:
        """Open the source and start the capture thread.

        Raises SourceError when the source cannot work at all (bad path, missing library). A live source
        that is merely absent right now (camera unplugged, stream down) is retried with back-off instead.
        """
        source: FrameSource | None
        try:
            source = self._open_fn()
        except SourceUnavailable as exc:
            logger.warning("%s; retrying with back-off up to %g s", exc, self._max_s)
            source = None
        if source is not None:
            self._attach(source)
            logger.info("reading %s", source.description)
        self._thread = threading.Thread(target=self._run, name="frame-grabber", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the capture thread; it closes the source. Safe to call more than once."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_JOIN_S)
            if self._thread.is_alive():
                logger.warning(
                    "%s did not stop within %.0f s; leaving its thread behind", self.description, STOP_JOIN_S
                )
        with self._cond:
            self._slot = None  # a stopped grabber hands out nothing more

    def get(self, timeout: float) -> Frame | None:
        """The next frame (the newest one for live sources); None after `timeout` s or when finished."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._stop.is_set():
                return None
            while self._slot is None:
                remaining = deadline - time.monotonic()
                if self._ended or remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame, self._slot = self._slot, None
            self._cond.notify_all()
            return frame

    def _attach(self, source: FrameSource) -> None:
        self._source = source
        self._attached_at = time.monotonic()
        self.description = source.description
        self.live = source.live
        self.fps = getattr(source, "fps", None)
        self.connected = True
        self._ever_attached = True

    def _detach(self) -> None:
        source, self._source = self._source, None
        self.connected = False
        if source is None:
            return
        self._corrupt_before += getattr(source, "corrupt", 0)
        try:
            source.close()
        except Exception as exc:  # a half-dead device may fail to close; we drop it either way
            logger.debug("closing %s failed: %s", source.description, exc)

    def _run(self) -> None:
        pacer: _Pacer | None = None
        try:
            while not self._stop.is_set():
                if self._source is None and not self._reopen():
                    break
                source = self._source
                assert source is not None
                try:
                    image = source.read()
                except Exception as exc:
                    if not source.live:
                        logger.error("%s failed (%s); stopping at frame %d", source.description, exc, self._next_index)
                        break
                    logger.warning(
                        "lost %s (%s); reconnecting with back-off %g..%g s",
                        source.description,
                        exc,
                        self._initial_s,
                        self._max_s,
                    )
                    self._detach()
                    continue
                if image is None:
                    if source.live:
                        logger.warning("lost %s (it ended); reconnecting", source.description)
                        self._detach()
                        continue
                    logger.info("%s ended after %d frames", source.description, self._next_index)
                    break
                index, self._next_index = self._next_index, self._next_index + 1
                keep_newest = source.live or self._realtime
                if self._realtime and not source.live:
                    pacer = pacer or _Pacer(getattr(source, "fps", None))
                    if not pacer.wait(self._stop):
                        break
                self._hand_over(Frame(image, index, time.monotonic()), keep_newest)
        finally:
            self._detach()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _hand_over(self, frame: Frame, keep_newest: bool) -> None:
        with self._cond:
            if keep_newest:
                if self._slot is not None:
                    self.dropped += 1
            else:
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait()
            self._slot = frame
            self._cond.notify_all()

    def _reopen(self) -> bool:
        """Reopen the source with exponential back-off; False if stopped first."""
        was_connected = self._ever_attached
        attempts, since = 0, time.monotonic()
        if since - self._attached_at >= self._max_s:
            self._next_wait_s = self._initial_s
        delay = self._next_wait_s
        while not self._stop.wait(delay):
            attempts += 1
            self._opening_since = time.monotonic()
            try:
                source = self._open_fn()
            except Exception as exc:  # includes SourceError; every failure is retried, never fatal
                logger.debug("reopen attempt %d failed: %s", attempts, exc)
                delay = min(delay * 2, self._max_s)
                continue
            finally:
                self._opening_since = None
            self._next_wait_s = min(delay * 2, self._max_s)
            self._attach(source)
            if was_connected:
                self.reconnects += 1
                logger.info(
                    "reconnected to %s after %.0f s (%d attempts)",
                    source.description,
                    time.monotonic() - since,
                    attempts,
                )
            else:
                logger.info("reading %s (available after %d attempts)", source.description, attempts)
            return True
        return False


class _Pacer:
    """Releases frames of a file at its nominal rate, as a camera would deliver them."""

    def __init__(self, fps: float | None) -> None:
        self._period = 1.0 / fps if fps else 0.0
        self._due = time.monotonic()

    def wait(self, stop: threading.Event) -> bool:
        """Sleep until the next frame is due; False if stopped meanwhile."""
        if not self._period:
            return not stop.is_set()
        now = time.monotonic()
        if self._due < now - self._period:  # reading fell behind: restart the clock, do not burst
            self._due = now
        stopped = stop.wait(max(0.0, self._due - now))
        self._due += self._period
        return not stopped
