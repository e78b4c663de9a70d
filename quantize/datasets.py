"""Face-expression data sets as 48x48 grey arrays: the FER2013 CSV (plain or gzip) and class-per-folder images.

Classes are mapped by name onto CANONICAL_LABELS, so a six-class set (no disgust) lines up with seven-class models.
The parsed FER2013 CSV is cached as .npz under ~/.cache/edge-mood (keyed by path, size and mtime), because every
subcommand reads it and parsing 35k rows of text costs seconds.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from edge.contract import CANONICAL_LABELS, IMAGE_SUFFIXES
from quantize.errors import QuantizeError
from quantize.labels import is_other_class, map_label_name
from quantize.outputs import read_cache, write_atomically

SIZE = 48
# Requested split -> FER2013 Usage value.
CSV_SPLITS = {"train": "Training", "test": "PublicTest", "private": "PrivateTest"}
# Requested split -> folder names used by the public image-folder exports.
FOLDER_SPLITS = {
    "train": ("train", "Train", "Training", "training"),
    "test": ("test", "Test", "Testing", "testing", "PublicTest"),
    "val": ("val", "Val", "validation", "Validation"),
}
_CACHE_VERSION = "1"


@dataclass
class FaceSet:
    """Grey 48x48 faces with canonical label indices.

    A label source that gives each face a distribution over the classes (annotator votes, quantize.label_sources)
    sets `targets`; the hard term of quantize.distill_loss then learns those instead of `labels`."""

    images: np.ndarray  # uint8 (N, 48, 48)
    labels: np.ndarray  # int64 (N,), indices into CANONICAL_LABELS
    source: str
    split: str
    skipped: int = 0  # unreadable images left out (only with skip_corrupt)
    rows: np.ndarray | None = None  # int64 (N,): each face's data row in a CSV file (None for image folders)
    targets: np.ndarray | None = None  # float32 (N, len(CANONICAL_LABELS)): per-face class distributions
    file_rows: int | None = None  # data rows in that CSV file, every split's (None for image folders)
    usage: str | None = None  # the CSV's Usage value of these rows (None without a Usage column)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray | list[int] | slice) -> FaceSet:
        """The faces at `idx` (indices, boolean mask or slice) as a new set."""
        return replace(
            self,
            images=self.images[idx],
            labels=self.labels[idx],
            skipped=0,
            rows=None if self.rows is None else self.rows[idx],
            targets=None if self.targets is None else self.targets[idx],
        )

    def target_distributions(self) -> np.ndarray:
        """(N, classes) float32: the label source's distributions, or each hard label as a one-hot row."""
        if self.targets is not None:
            return self.targets
        return np.eye(len(CANONICAL_LABELS), dtype=np.float32)[self.labels]

    def class_counts(self) -> dict[str, int]:
        """Faces per canonical label, all seven listed (zero where a set lacks a class)."""
        counts = np.bincount(self.labels, minlength=len(CANONICAL_LABELS))
        return {name: int(c) for name, c in zip(CANONICAL_LABELS, counts)}


def load_dataset(path: Path, split: str, *, skip_corrupt: bool = False, cache: bool = True) -> FaceSet:
    """One split of a data set: a FER2013 CSV (.csv/.csv.gz) or a folder of `<split>/<class>/` images.

    CSV splits: train (Training), test (PublicTest), private (PrivateTest), or the Usage value itself.
    Folder splits: train (train/ or Training/), test (test/ or Testing/), val (val/).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise QuantizeError(f"data set {path} does not exist; give a FER2013 CSV (.csv or .csv.gz) or an image folder")
    if path.is_dir():
        faces = _load_folder(path, split, skip_corrupt)
    else:
        faces = _load_csv_split(path, split, cache)
    if len(faces) == 0:
        raise QuantizeError(f"data set {path} split {split!r} holds no faces; check the path and split name")
    return faces


# The share of the training faces `quantize build` holds out to pick the epoch, unless told otherwise.
DEFAULT_VAL_FRACTION = 0.1


def stratified_split(faces: FaceSet, val_fraction: float, seed: int = 0) -> tuple[FaceSet, FaceSet]:
    """(train, val) with every class split in the same proportion, reproducibly for a seed."""
    if not 0.0 < val_fraction < 1.0:
        raise QuantizeError(f"validation fraction {val_fraction} must lie between 0 and 1")
    rng = np.random.default_rng(seed)
    val_idx: list[np.ndarray] = []
    for label in np.unique(faces.labels):
        members = rng.permutation(np.flatnonzero(faces.labels == label))
        take = int(round(len(members) * val_fraction))
        if len(members) >= 2:
            take = min(max(take, 1), len(members) - 1)  # keep each class on both sides
        val_idx.append(members[:take])
    val_mask = np.zeros(len(faces), dtype=bool)
    val_mask[np.concatenate(val_idx)] = True
    train, val = faces.subset(~val_mask), faces.subset(val_mask)
    train.split, val.split = f"{faces.split}-train", f"{faces.split}-val"
    return train, val


# ---------------------------------------------------------------- image folders


def _load_folder(root: Path, split: str, skip_corrupt: bool) -> FaceSet:
    names = FOLDER_SPLITS.get(split.lower(), (split,))
    split_dir = next((root / n for n in names if (root / n).is_dir()), None)
    if split_dir is None:
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise QuantizeError(
            f"{root} has no folder for split {split!r} (looked for {', '.join(names)}; found "
            f"{', '.join(present) or 'no folders'}); expected <root>/train|test/<class>/*.jpg"
        )
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped = 0
    left_out: list[str] = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_other_class(class_dir.name):  # FER+ and AffectNet exports hold contempt, unknown, not-a-face
            left_out.append(class_dir.name)
            continue
        try:
            label = map_label_name(class_dir.name)
        except QuantizeError as exc:
            raise QuantizeError(
                f"class folder {class_dir}: {exc}; rename it, or move it out of {split_dir} to leave it out"
            ) from None
        # Subfolders of a class folder hold more of its images, as torchvision's ImageFolder reads them.
        for file in sorted(class_dir.rglob("*")):
            hidden = any(part.startswith(".") for part in file.relative_to(class_dir).parts)
            if hidden or file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
                continue
            image = _read_grey(file)
            if image is None:
                if skip_corrupt:
                    skipped += 1
                    continue
                raise QuantizeError(
                    f"cannot decode image {file}; delete or replace it (train-teacher also takes --skip-corrupt)"
                )
            images.append(image)
            labels.append(label)
    if not images:
        raise QuantizeError(f"split folder {split_dir} holds no readable images in <class>/ subfolders")
    faces = FaceSet(np.stack(images), np.asarray(labels, dtype=np.int64), str(root), split, skipped)
    if skipped:
        warnings.warn(f"{split_dir}: skipped {skipped} unreadable images", stacklevel=3)
    if left_out:
        warnings.warn(f"{split_dir}: left out {', '.join(left_out)}: not one of the seven expressions", stacklevel=3)
    return faces


def _read_grey(file: Path) -> np.ndarray | None:
    data = np.fromfile(file, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        return None
    if image.shape != (SIZE, SIZE):
        image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return image


# ---------------------------------------------------------------- FER2013 CSV


def _load_csv_split(path: Path, split: str, cache: bool) -> FaceSet:
    images, labels, usage, usage_names = _parsed_csv(path, cache)
    if not usage_names:  # no Usage column: the whole file is one split
        if split.lower() not in ("train", "all"):
            raise QuantizeError(
                f"{path} has no Usage column, so all its faces are training faces; for faces to test on, give a "
                "CSV whose Usage column marks them (Training / PublicTest, or train / test)"
            )
        return FaceSet(images, labels, str(path), split, rows=np.arange(len(labels)), file_rows=len(labels))
    wanted = CSV_SPLITS.get(split.lower(), split)
    # FER2013's Usage value first; other CSVs name their splits as image-folder exports do (train, test, val).
    lowered = [u.lower() for u in usage_names]
    names = (wanted, *FOLDER_SPLITS.get(split.lower(), ()))
    match = next((lowered.index(n.lower()) for n in names if n.lower() in lowered), None)
    if match is None:
        raise QuantizeError(
            f"{path} has no rows with Usage {wanted!r} (present: {', '.join(usage_names)}); "
            f"use one of {', '.join(CSV_SPLITS)} or a Usage value"
        )
    mask = usage == match
    return FaceSet(
        images[mask],
        labels[mask],
        str(path),
        split,
        rows=np.flatnonzero(mask),
        file_rows=len(labels),
        usage=usage_names[match],
    )


def _cache_file(path: Path) -> Path:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{_CACHE_VERSION}"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-mood" / "datasets"
    return base / f"{path.name}.{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _parsed_csv(path: Path, cache: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    cache_file = _cache_file(path) if cache else None
    cached = read_cache(cache_file, ("images", "labels", "usage", "usage_names"))
    if cached is not None:
        images, labels, usage, usage_names = cached
        return images, labels, usage, [str(u) for u in usage_names]
    parsed = _parse_csv(path)
    if cache_file is not None:
        _write_cache(cache_file, *parsed)
    return parsed


def _write_cache(
    cache_file: Path, images: np.ndarray, labels: np.ndarray, usage: np.ndarray, usage_names: list[str]
) -> None:
    try:
        write_atomically(
            cache_file,
            lambda f: np.savez(
                f, images=images, labels=labels, usage=usage, usage_names=np.asarray(usage_names, dtype=str)
            ),
        )
    except OSError:
        pass  # a read-only home only costs the next run the parse time


def _read_text(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise QuantizeError(f"cannot read {path}: {exc}; check that the file is complete") from None


def _parse_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """images uint8 (N,48,48), labels int64, usage codes uint8, usage names; one error per bad row."""
    lines = _read_text(path).split(b"\n")
    # utf-8-sig: a CSV saved by Excel starts with a byte order mark, which is not part of the first column's name.
    header = [h.strip().strip('"').lower() for h in lines[0].decode("utf-8-sig", "replace").split(",")]
    try:
        col_label = next(header.index(n) for n in ("emotion", "label", "labels") if n in header)
        col_pixels = header.index("pixels")
    except (StopIteration, ValueError):
        raise QuantizeError(
            f"{path} is not a FER2013-style CSV: header is {lines[0][:80]!r}, expected emotion,pixels,Usage"
        ) from None
    col_usage = header.index("usage") if "usage" in header else None
    n_cols = len(header)
    n_pixels = SIZE * SIZE
    images = np.empty((len(lines), SIZE, SIZE), dtype=np.uint8)
    labels = np.empty(len(lines), dtype=np.int64)
    usage = np.zeros(len(lines), dtype=np.uint8)
    usage_names: list[str] = []
    n = 0
    for line_no, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if not line:
            continue
        where = f"{path.name} line {line_no}"
        fields = [f.strip().strip(b'"') for f in line.split(b",")]
        if len(fields) != n_cols:
            raise QuantizeError(f"{where}: {len(fields)} fields, expected {n_cols} ({','.join(header)})")
        try:
            label = int(fields[col_label])
        except ValueError:
            raise QuantizeError(f"{where}: label {fields[col_label][:20]!r} is not an integer") from None
        if not 0 <= label < len(CANONICAL_LABELS):
            raise QuantizeError(f"{where}: label {label} out of range 0..{len(CANONICAL_LABELS) - 1}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # older numpy only warns about unparsable text
                pixels = np.fromstring(fields[col_pixels].decode("ascii"), dtype=np.int32, sep=" ")
        except (ValueError, UnicodeDecodeError, DeprecationWarning):
            raise QuantizeError(f"{where}: pixels hold a value that is not an integer") from None
        if pixels.size != n_pixels:
            raise QuantizeError(f"{where}: {pixels.size} pixel values, expected {n_pixels} (48x48)")
        if pixels.min() < 0 or pixels.max() > 255:
            raise QuantizeError(
                f"{where}: pixel value {int(pixels.max() if pixels.max() > 255 else pixels.min())} outside 0..255"
            )
        images[n] = pixels.reshape(SIZE, SIZE)
        labels[n] = label
        if col_usage is not None:
            name = fields[col_usage].decode("utf-8", "replace")
            if name not in usage_names:
                usage_names.append(name)
            usage[n] = usage_names.index(name)
        n += 1
    return images[:n].copy(), labels[:n].copy(), usage[:n].copy(), usage_names
