"""What tests that publish through a real broker share: an event to publish and a wait for a condition.
(Started publishers come from the `make_publisher` fixture in conftest.py.)"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from edge.payloads import event_payload


def sample_event(i: int, device: str = "cam1") -> dict:
    """A face_enter event of frame and track `i`, as the tracker emits one."""
    return event_payload(
        device=device,
        type="face_enter",
        frame=i,
        ts=time.time(),
        track_id=i,
        expression=None,
        confidence=None,
        scores={"happy": 0.5, "sad": 0.5},
        bbox_norm=(0.1, 0.1, 0.2, 0.2),
        model="m@1",
    )


def wait_until(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Poll `condition` until it is true; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
