"""What the daemon sees in still photos: every face found, its expression and runner-up, plus annotated copies.

Each photo goes through the daemon's own FrameAnalyzer (detector, eye-levelled crop with the card's margin,
expression model), exactly as a camera frame would. The table lists each face left to right; the annotated
images (box, label, probability) and the 48x48 crops the model saw land in bench/out/photos/ for a human to
look at.

    python bench/photos.py                                   # ../shared/data/photos, shipped model, YuNet
    python bench/photos.py my_photos/ --model models/x.onnx --detect-width 1280 --precision fp32
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edge.analyzer import FrameAnalyzer
from edge.classifier import ExpressionModel
from edge.crop import crop_face
from edge.faces import find_yunet, make_detector
from edge.locations import default_model, model_dirs
from edge.stats import StageTimer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OUT = ROOT / "bench" / "out" / "photos"


def annotate(image: np.ndarray, box: tuple[float, ...], text: str) -> None:
    x, y, w, h = (int(round(v)) for v in box)
    thickness = max(1, image.shape[1] // 800)
    cv2.rectangle(image, (x, y), (x + w, y + h), (0, 255, 0), thickness)
    cv2.putText(
        image,
        text,
        (x, max(12, y - 4)),
        cv2.FONT_HERSHEY_SIMPLEX,
        max(0.4, w / 160),
        (0, 255, 0),
        thickness,
        cv2.LINE_AA,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", default=SHARED / "data" / "photos")
    parser.add_argument("--model", type=Path, help="expression model (default: the shipped one)")
    parser.add_argument("--precision", default="int8", choices=("auto", "int8", "fp32"))
    parser.add_argument(
        "--detect-width",
        type=int,
        default=1280,
        help="detector input width; group photos need more than the daemon's default 320",
    )
    args = parser.parse_args()
    photos = sorted(p for p in args.folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise SystemExit(f"no .jpg/.png photos in {args.folder}")

    model = ExpressionModel.load(args.model or default_model(), precision=args.precision, threads=1)
    yunet = find_yunet([*model_dirs(), SHARED / "models"])
    detector = make_detector("yunet" if yunet else "haar", yunet, detect_width=args.detect_width)
    analyzer = FrameAnalyzer(detector, model, StageTimer())
    OUT.mkdir(parents=True, exist_ok=True)
    print(
        f"model {model.model_id} ({model.precision}), detector {'YuNet' if yunet else 'Haar'} "
        f"at width {args.detect_width}; annotated copies in {OUT}"
    )
    print(f"{'photo':<24} {'face':>4} {'box x,y,w,h':>20}  {'expression':<16} runner-up")
    for photo in photos:
        image = cv2.imread(str(photo))
        if image is None:
            print(f"{photo.name:<24} unreadable image, skipped")
            continue
        scored = sorted(analyzer.analyze(image), key=lambda s: s.face.box[0])
        shown = image.copy()
        for i, s in enumerate(scored, 1):
            first, second = np.argsort(s.scores)[::-1][:2]
            top = f"{model.labels[first]} {s.scores[first]:.2f}"
            box = ",".join(str(int(round(v))) for v in s.face.box)
            print(f"{photo.name:<24} {i:>4} {box:>20}  {top:<16} {model.labels[second]} {s.scores[second]:.2f}")
            annotate(shown, s.face.box, f"{i} {top}")
            cv2.imwrite(str(OUT / f"{photo.stem}.face{i}.png"), crop_face(image, s.face, model.card))
        if not scored:
            print(f"{photo.name:<24} no faces found")
        cv2.imwrite(str(OUT / f"{photo.stem}.annotated.jpg"), shown)


if __name__ == "__main__":
    main()
