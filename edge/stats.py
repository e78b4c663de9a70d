"""Rolling per-stage timings, frame rate and process load for the periodic stats message."""

from __future__ import annotations

import os
import resource
import time
from collections import defaultdict, deque

# The stages the daemon times, in the order a frame meets them (Home Assistant's diagnostics list them).
STAGES = ("capture_wait", "detect", "follow", "crop", "classify", "track", "publish", "total")


class StageTimer:
    """Keeps the stage durations of the last `window` frames and the frame completion times.

    A stage may run on some frames only (the detector every few frames, say): its mean is taken over every
    frame of the window, so the stages add up to what a frame costs on average."""

    def __init__(self, window: int = 200, fps_span_s: float = 10.0):
        self._frames: deque[dict[str, float]] = deque(maxlen=window)
        self._fps_span_s = fps_span_s
        self._current: dict[str, float] = defaultdict(float)  # stages of the frame in progress
        self._frame_times: deque[float] = deque(maxlen=window)
        self._cpu_mark = (time.monotonic(), time.process_time())
        self.started = time.monotonic()
        self.frames = 0

    def add(self, stage: str, seconds: float) -> None:
        self._current[stage] += seconds

    def frame_done(self) -> None:
        self.frames += 1
        self._frames.append(dict(self._current))
        self._current.clear()
        self._frame_times.append(time.monotonic())

    def fps(self) -> float:
        """Frames a second over the last `fps_span_s` seconds: 0 soon after frames stop (a camera gone), not
        the rate it had when it went."""
        now = time.monotonic()
        recent = [t for t in self._frame_times if now - t <= self._fps_span_s]
        if len(recent) < 2:
            return 0.0
        span = recent[-1] - recent[0]
        return (len(recent) - 1) / span if span > 0 else 0.0

    def stage_ms(self) -> dict[str, float]:
        """Mean milliseconds per frame of each stage over the window (0 on frames where it did not run)."""
        if not self._frames:
            return {}
        totals: dict[str, float] = defaultdict(float)
        for stages in self._frames:
            for stage, seconds in stages.items():
                totals[stage] += seconds
        return {stage: round(1000 * seconds / len(self._frames), 2) for stage, seconds in totals.items()}

    def cpu_percent(self) -> float:
        """CPU time of this process since the last call, as % of one core."""
        wall, cpu = time.monotonic(), time.process_time()
        last_wall, last_cpu = self._cpu_mark
        self._cpu_mark = (wall, cpu)
        return round(100 * (cpu - last_cpu) / (wall - last_wall), 1) if wall > last_wall else 0.0

    @staticmethod
    def rss_mb() -> float:
        """Resident memory now (from /proc where it exists, else the peak)."""
        try:
            with open(f"/proc/{os.getpid()}/statm") as fh:
                pages = int(fh.read().split()[1])
            return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
        except OSError:
            return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    def uptime_s(self) -> float:
        return round(time.monotonic() - self.started, 1)
