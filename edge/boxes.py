"""Face boxes as (x, y, w, h): clipping to a frame and turning pixels into fractions of the frame.

The detectors clip their boxes to the frame in pixels; the loop turns each box into fractions of its own
frame once, before tracking; the payloads clip fractions to 0..1, so a message never carries a box outside
the frame, whoever built it.
"""

from __future__ import annotations

Box = tuple[float, float, float, float]  # x, y, w, h


def clipped(box: Box, width: float, height: float) -> Box:
    """The part of `box` inside a `width` x `height` frame (w or h 0 where nothing is inside)."""
    x, y, w, h = box
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    return x0, y0, x1 - x0, y1 - y0


def normalized(box: Box, width: int, height: int) -> Box:
    """A box in pixels of a `width` x `height` frame as fractions of that frame."""
    x, y, w, h = box
    return x / width, y / height, w / width, h / height
