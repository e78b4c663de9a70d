"""Per-stage timing of the vision pipeline on one thread: detect, crop+align, classify, and end-to-end fps.

Frames are 640x480 BGR, built from a real photo: 1, 2 or 3 jurors' heads cut (as ovals) from
12_angry_men.jpg, faces scaled to 100 px wide, pasted onto a heavily blurred copy of the same photo.
Each configuration runs --repeat frames after a short warm-up; the table shows medians per frame.

    python bench/edge_stages.py [--model models/x.onnx] [--repeat 100] [--detect-width 320]

Without --model it times the shipped model, found where the daemon finds it (models/ in a checkout).
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np

from edge.classifier import ExpressionModel
from edge.crop import crop_face
from edge.errors import UserError
from edge.faces import find_yunet, make_detector
from edge.locations import default_model
from quantize.evaluate import measure_latency

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PHOTO = SHARED / "data" / "photos" / "12_angry_men.jpg"
FRAME_W, FRAME_H = 640, 480
FACE_PX = 100  # face box width on the canvas: a person about 1.5 m from a 640x480 camera
WARMUP_FRAMES = 5
SLOTS = [(20, 130), (220, 100), (420, 150)]  # top-left corners of up to three pasted heads


def cut_heads(photo: np.ndarray, yunet: Path, count: int, face_px: int = FACE_PX) -> list[np.ndarray]:
    """The `count` most confident heads of the photo, each a square BGR patch with its face `face_px` wide."""
    faces = make_detector("yunet", yunet_path=yunet, detect_width=photo.shape[1]).detect(photo)
    heads = []
    for face in sorted(faces, key=lambda f: -f.score)[:count]:
        x, y, w, h = face.box
        cx, cy, side = x + w / 2, y + h / 2, 1.6 * max(w, h)
        scale = face_px / w
        size = round(side * scale)
        matrix = np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]])
        heads.append(cv2.warpAffine(photo, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE))
    return heads


def blurred_background(photo: np.ndarray) -> np.ndarray:
    return cv2.resize(cv2.GaussianBlur(photo, (0, 0), 25), (FRAME_W, FRAME_H), interpolation=cv2.INTER_AREA)


def paste_head(frame: np.ndarray, head: np.ndarray, left: int, top: int) -> None:
    """Blend the head into the float32 frame in place as an oval, feathered cut-out: only this person's head,
    none of the neighbours' in the photo."""
    size = head.shape[0]
    mask = np.zeros((size, size), np.float32)
    cv2.ellipse(mask, (size // 2, size // 2), (int(size * 0.36), int(size * 0.46)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), size * 0.03)[..., None]
    region = frame[top : top + size, left : left + size]
    region[:] = mask * head + (1 - mask) * region


def build_frames(photo: np.ndarray, yunet: Path) -> dict[int, np.ndarray]:
    """640x480 frames with 1, 2 and 3 real heads cut from the photo."""
    heads = cut_heads(photo, yunet, 3)
    background = blurred_background(photo)
    frames = {}
    for count in (1, 2, 3):
        frame = background.astype(np.float32)
        for head, (left, top) in zip(heads[:count], SLOTS):
            paste_head(frame, head, left, top)
        frames[count] = frame.astype(np.uint8)
    return frames


def run_config(detector, model: ExpressionModel, frame: np.ndarray, repeat: int) -> dict[str, float]:
    stages: dict[str, list[float]] = {"detect": [], "crop": [], "classify": [], "total": []}
    found = []
    for i in range(WARMUP_FRAMES + repeat):
        start = time.perf_counter()
        faces = detector.detect(frame)
        detected = time.perf_counter()
        crops = [crop_face(frame, face, model.card) for face in faces]
        cropped = time.perf_counter()
        model.predict(crops)
        done = time.perf_counter()
        if i >= WARMUP_FRAMES:
            for name, seconds in (
                ("detect", detected - start),
                ("crop", cropped - detected),
                ("classify", done - cropped),
                ("total", done - start),
            ):
                stages[name].append(seconds * 1000)
            found.append(len(faces))
    result = {name: statistics.median(values) for name, values in stages.items()}
    result["found"] = statistics.median(found)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="expression model (default: the shipped one, as the daemon finds it)"
    )
    parser.add_argument("--precision", default="auto", choices=["auto", "int8", "fp32"])
    parser.add_argument("--repeat", type=int, default=100, help="timed frames per row (default 100)")
    parser.add_argument("--detect-width", type=int, default=320)
    parser.add_argument("--yunet", type=Path, help="YuNet ONNX (default: found in models/ or ../shared/models)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if not PHOTO.is_file():
        print(f"needs {PHOTO} (the shared data folder beside the project)", file=sys.stderr)
        return 2
    yunet = args.yunet or find_yunet([ROOT / "models", SHARED / "models"])
    if yunet is None:
        print("needs a YuNet model to cut faces for the test frames; pass --yunet", file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    try:
        model_path = args.model or default_model()
        model = ExpressionModel.load(model_path, precision=args.precision, threads=1)
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 2
    shown = model_path.relative_to(ROOT) if model_path.is_relative_to(ROOT) else model_path
    frames = build_frames(cv2.imread(str(PHOTO)), yunet)
    detectors = [
        make_detector("yunet", yunet_path=yunet, detect_width=args.detect_width),
        make_detector("haar", detect_width=args.detect_width),
    ]

    print(
        f"# edge vision stages: {FRAME_W}x{FRAME_H} BGR frames, 1 thread (OpenCV {cv2.__version__}, "
        f"onnxruntime {version('onnxruntime')}), {platform.machine()} {platform.processor() or ''}".rstrip()
    )
    print(
        f"# model: {shown} -> {model.model_id} {model.precision} "
        f"{model.card.channels}x{model.card.height}x{model.card.width}"
    )
    print(f"# YuNet: {yunet.name}; detect width {args.detect_width}; {args.repeat} frames per row, median ms per frame")
    print()
    print("| detector | faces | found | detect ms | crop+align ms | classify ms | total ms | fps |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for detector in detectors:
        for count, frame in frames.items():
            r = run_config(detector, model, frame, args.repeat)
            print(
                f"| {detector.name} | {count} | {r['found']:.0f} | {r['detect']:.2f} | {r['crop']:.2f} | "
                f"{r['classify']:.2f} | {r['total']:.2f} | {1000 / r['total']:.0f} |",
                flush=True,
            )
    face = detectors[0].detect(frames[1])[0]
    alone = measure_latency(model.path, crop_face(frames[1], face, model.card), runs=args.repeat)["median"]
    print(
        f"\n# classify alone, one face, {args.repeat} calls in a row (warm caches, no detector between): "
        f"{alone:.3f} ms median"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
