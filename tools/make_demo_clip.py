"""Writes edge/sample/astronaut.mp4, the clip `edge demo` plays when no camera opens.

The face is the astronaut photo that scikit-image ships in its data module (Eileen Collins, NASA; public
domain): `pip install scikit-image`, then `python tools/make_demo_clip.py`. An empty 640x480 frame, then the
photo for about five seconds, drifting slowly (so the tracker sees a live face), then the empty frame again:
the daemon reports the face arriving, its expression and the face leaving. The photo appears and goes at
once and hardly moves: a camera-paced daemon on a slow device skips frames, and a face that moved far between
two of them would count as a new face, while a half-faded one is misread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

FRAME_W, FRAME_H = 640, 480
FPS = 15
PHOTO_SIDE = 440
BACKGROUND = (70, 62, 58)  # BGR, a dull wall
# (first frame, last frame, the photo's left edge at the first and at the last frame; None: not in view)
PARTS = [
    (0, 9, None, None),  # empty room
    (10, 79, 110, 80),  # someone in view, drifting slowly
    (80, 89, None, None),  # empty room again
]
OUT = Path(__file__).resolve().parents[1] / "edge" / "sample" / "astronaut.mp4"


def astronaut() -> np.ndarray:
    from skimage import data  # only needed to remake the clip

    rgb = data.astronaut()
    return cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (PHOTO_SIDE, PHOTO_SIDE), interpolation=cv2.INTER_AREA)


def frames(photo: np.ndarray):
    top = (FRAME_H - PHOTO_SIDE) // 2
    for first, last, start_x, end_x in PARTS:
        for index in range(first, last + 1):
            frame = np.full((FRAME_H, FRAME_W, 3), BACKGROUND, np.uint8)
            if start_x is not None and end_x is not None:
                x = round(start_x + (index - first) / (last - first) * (end_x - start_x))
                frame[top : top + PHOTO_SIDE, x : x + PHOTO_SIDE] = photo
            yield frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (FRAME_W, FRAME_H))
    count = 0
    for frame in frames(astronaut()):
        writer.write(frame)
        count += 1
    writer.release()
    print(f"wrote {args.out}: {count} frames, {count / FPS:.1f} s, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
