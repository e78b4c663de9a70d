"""Stage timings are per frame: a stage that runs on some frames only is averaged over all of them."""

from __future__ import annotations

import time

import pytest

from edge.stats import StageTimer


def test_a_stage_on_every_other_frame_counts_half_per_frame() -> None:
    timer = StageTimer(window=4)
    for i in range(6):
        timer.add("follow" if i % 2 else "detect", 0.004)
        timer.add("total", 0.005)
        timer.frame_done()
    assert timer.stage_ms() == {"detect": pytest.approx(2.0), "follow": pytest.approx(2.0), "total": pytest.approx(5.0)}
    assert timer.frames == 6


def test_stages_of_one_frame_add_up_and_only_the_window_counts() -> None:
    timer = StageTimer(window=2)
    timer.add("detect", 0.010)
    timer.frame_done()
    for _ in range(2):
        timer.add("detect", 0.001)
        timer.add("detect", 0.002)  # a stage timed twice in one frame (two regions followed)
        timer.frame_done()
    assert timer.stage_ms() == {"detect": pytest.approx(3.0)}


def test_no_frame_yet_gives_no_stages() -> None:
    timer = StageTimer()
    timer.add("detect", 0.010)
    assert timer.stage_ms() == {}


def test_fps_falls_to_zero_once_frames_stop() -> None:
    # Home Assistant's frame-rate sensor showed a gone camera's last rate for as long as it stayed away.
    timer = StageTimer(fps_span_s=1.0)
    for _ in range(5):
        timer.frame_done()
        time.sleep(0.02)
    assert timer.fps() > 0
    time.sleep(1.1)
    assert timer.fps() == 0.0
