"""Which zoom views to build into a student's graph (`quantize build --zoom-view Z`): top-1 of each centre zoom
alone and averaged with the face itself, on the student's validation split and on the test split.

Views are made by OpenCV on the faces at the model's input size (the centre crop and bilinear enlargement the
exported graph makes, see quantize.student.ViewAveraged) and combined by averaging log-probabilities, which
ranks classes as the graph's logit average does. Choose on the validation split (the stratified share of
Training that `quantize build` holds out, same fraction and seed) and report the test split. Give a model
without zoom views in its graph; a flip-averaged one is fine (the mirror is then part of every view).

    python bench/zoom_views.py --model models/mood-m.fp32.onnx [--zooms 1.05 1.1 1.15 1.2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from edge.contract import card_path_for, load_card
from quantize.datasets import DEFAULT_VAL_FRACTION, load_dataset, stratified_split
from quantize.evaluate import load_daemon_model, predict
from quantize.student import zoom_crop
from quantize.student_input import resize_faces

ROOT = Path(__file__).resolve().parents[1]
FER = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"


def zoomed(faces: np.ndarray, zoom: float) -> np.ndarray:
    size = faces.shape[-1]
    first, side = zoom_crop(size, zoom)
    return np.stack(
        [
            cv2.resize(face[first : first + side, first : first + side], (size, size), interpolation=cv2.INTER_LINEAR)
            for face in faces
        ]
    )


def log_probs(model, faces: np.ndarray, zooms: list[float]) -> dict[float, np.ndarray]:
    views = {1.0: faces, **{z: zoomed(faces, z) for z in zooms}}
    return {z: np.log(np.clip(predict(model, v), 1e-12, None)) for z, v in views.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="FP32 or INT8 .onnx with its card")
    parser.add_argument("--data", type=Path, default=FER)
    parser.add_argument("--zooms", type=float, nargs="+", default=[1.05, 1.1, 1.15, 1.2])
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, help="as given to quantize build")
    parser.add_argument("--seed", type=int, default=0, help="as given to quantize build")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"needs {args.data} (the shared data folder beside the project, or --data)", file=sys.stderr)
        return 2
    card = load_card(card_path_for(args.model))
    if card.raw.get("zoom_views"):
        print(
            f"{args.model} already has zoom views {card.raw['zoom_views']} in its graph; give one without",
            file=sys.stderr,
        )
        return 2
    model = load_daemon_model(args.model, threads=2)
    _, val = stratified_split(load_dataset(args.data, "train"), args.val_fraction, args.seed)
    test = load_dataset(args.data, "test")
    splits = {}
    for faces in (val, test):
        images = resize_faces(faces.images, card.height)
        splits[faces.split] = (log_probs(model, images, args.zooms), faces.labels)

    rows = [("face", [1.0])] + [(f"zoom {z:g}", [z]) for z in args.zooms]
    rows += [(f"face + zoom {z:g}", [1.0, z]) for z in args.zooms]
    flip = " (each view also mirrored)" if card.raw.get("flip_average") else ""
    print(
        f"{card.name} ({args.model.name}){flip}: top-1 by views; validation = {args.val_fraction:g} of "
        f"Training (seed {args.seed}, {len(val)} faces), test = {test.split} ({len(test)} faces)"
    )
    print("\n| views | validation top-1 | test top-1 |\n|---|---:|---:|")
    for title, zooms in rows:
        cells = []
        for scores, labels in splits.values():
            combined = sum(scores[z] for z in zooms)
            cells.append(f"{(combined.argmax(1) == labels).mean() * 100:.2f}%")
        print(f"| {title} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
