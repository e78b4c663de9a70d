"""Accuracy of the daemon's whole path (detector -> eye-levelled crop -> model) on FER2013 faces.

Each face is enlarged, padded with its own border (so the detector sees some surroundings), pasted into
a 640x480 frame and run through the same FrameAnalyzer the daemon uses. The table compares that with
the model fed the original 48x48 face directly: a gap means live crops are framed differently from the
training faces (tune the card's crop margin), or the detector misses faces.

    python bench/pipeline_on_fer.py --model models/x.onnx --split Training --faces 700
    python bench/pipeline_on_fer.py --split Holdout --margins -0.05 0 0.05 0.1   # sweep the crop margin

Choose a margin on the Holdout split (Training faces the student did not train on; the rest of Training is
memorised and favours the training faces' own framing); report PublicTest.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from fer_frames import FER, HOLDOUT, SPLITS, YUNET, balanced_sample, face_frame

from edge.analyzer import FrameAnalyzer
from edge.classifier import ExpressionModel
from edge.faces import make_detector
from edge.locations import default_model
from edge.stats import StageTimer


def direct_top1(model: ExpressionModel, faces: np.ndarray, labels: np.ndarray) -> float:
    probs = np.concatenate([model.predict(list(faces[i : i + 256])) for i in range(0, len(faces), 256)])
    return float((probs.argmax(1) == labels).mean())


def pipeline_top1(model: ExpressionModel, detector, faces: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(share of faces found, top-1 over the faces found)."""
    analyzer = FrameAnalyzer(detector, model, StageTimer())
    found, correct = 0, 0
    for face, label in zip(faces, labels):
        scored = analyzer.analyze(face_frame(face))
        if not scored:
            continue
        best = max(scored, key=lambda s: s.face.box[2] * s.face.box[3])
        found += 1
        correct += int(best.scores.argmax() == label)
    return found / len(faces), correct / max(found, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="expression model (default: the shipped one)")
    parser.add_argument("--precision", default="fp32", choices=("auto", "int8", "fp32"))
    parser.add_argument(
        "--split",
        default="PublicTest",
        choices=SPLITS,
        help=f"{HOLDOUT}: the Training faces the shipped student never trained on",
    )
    parser.add_argument("--faces", type=int, default=700, help="faces in all, balanced over the classes")
    parser.add_argument("--margins", type=float, nargs="*", help="crop margins to try (default: the card's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not FER.exists():
        raise SystemExit(f"needs {FER} (the team's shared data)")

    cv2.setNumThreads(1)
    model = ExpressionModel.load(args.model or default_model(), precision=args.precision, threads=1)
    faces, labels = balanced_sample(args.split, args.faces // 7, args.seed)
    detectors = {"yunet": make_detector("yunet", YUNET, [], detect_width=640), "haar": make_detector("haar")}
    print(
        f"model {model.model_id} ({model.precision}), {len(faces)} {args.split} faces, "
        f"direct 48x48 top-1 {100 * direct_top1(model, faces, labels):.1f}%"
    )
    print(f"{'detector':<8} {'margin':>7} {'found':>7} {'top-1':>7}")
    original_card = model.card
    for margin in args.margins if args.margins else [original_card.crop_margin]:
        model.card = replace(original_card, crop_margin=margin)
        for name, detector in detectors.items():
            share, top1 = pipeline_top1(model, detector, faces, labels)
            print(f"{name:<8} {margin:>7.2f} {100 * share:>6.1f}% {100 * top1:>6.1f}%")


if __name__ == "__main__":
    main()
