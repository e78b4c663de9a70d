"""Data sets of the offline tool: FER2013 CSV (plain, gzip, real rows) and both image-folder layouts."""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.contract import CANONICAL_LABELS
from quantize.datasets import FaceSet, load_dataset, stratified_split
from quantize.errors import QuantizeError
from quantize.labels import map_label_name, map_label_names
from quantize.training_data import FaceOptions, load_training_data

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FER_CSV = SHARED / "data" / "fer2013" / "fer2013.csv.gz"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the parse cache of every test in its own folder instead of ~/.cache."""
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def _faces(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 48, 48), dtype=np.uint8)


def _csv_lines(images: np.ndarray, labels: list[int], usage: list[str] | None) -> list[str]:
    lines = ["emotion,pixels" + (",Usage" if usage else "")]
    for i, (image, label) in enumerate(zip(images, labels)):
        row = f"{label},{' '.join(map(str, image.ravel()))}"
        lines.append(row + (f",{usage[i]}" if usage else ""))
    return lines


def _write(path: Path, lines: list[str]) -> Path:
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


# ---------------------------------------------------------------- labels


def test_label_names_map_case_insensitively_with_aliases() -> None:
    assert CANONICAL_LABELS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert map_label_name("Suprise") == CANONICAL_LABELS.index("surprise")
    assert map_label_name("ANGER") == 0
    assert map_label_name("happiness") == 3
    assert map_label_name(" Sadness ") == 4
    assert map_label_name("fearful") == 2
    assert map_label_name("disgusted") == 1
    assert map_label_name("Neutral") == 6


def test_unknown_label_lists_the_known_names() -> None:
    with pytest.raises(QuantizeError, match=r"'bored'.*angry, disgust, fear, happy, sad, surprise, neutral"):
        map_label_name("bored")
    with pytest.raises(QuantizeError, match="same expression twice"):
        map_label_names(["happy", "Happiness"])


# ---------------------------------------------------------------- CSV


@pytest.mark.parametrize("name", ["fer.csv", "fer.csv.gz"])
def test_csv_splits_load_with_their_pixels_and_labels(tmp_path: Path, name: str) -> None:
    images = _faces(9, seed=1)
    labels = [0, 1, 2, 3, 4, 5, 6, 3, 6]
    usage = ["Training"] * 5 + ["PublicTest"] * 3 + ["PrivateTest"]
    path = _write(tmp_path / name, _csv_lines(images, labels, usage))

    train = load_dataset(path, "train")
    test = load_dataset(path, "test")
    private = load_dataset(path, "private")
    assert (len(train), len(test), len(private)) == (5, 3, 1)
    assert train.images.dtype == np.uint8 and train.images.shape == (5, 48, 48)
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.images, images[:5])
    np.testing.assert_array_equal(test.labels, [5, 6, 3])
    np.testing.assert_array_equal(private.images[0], images[8])
    assert test.split == "test" and test.source == str(path)
    # The Usage values themselves are accepted as split names.
    np.testing.assert_array_equal(load_dataset(path, "PublicTest").images, test.images)
    assert train.class_counts() == {
        "angry": 1,
        "disgust": 1,
        "fear": 1,
        "happy": 1,
        "sad": 1,
        "surprise": 0,
        "neutral": 0,
    }


def test_csv_parse_is_cached_and_refreshed_when_the_file_changes(tmp_path: Path, _private_cache: Path) -> None:
    path = _write(tmp_path / "fer.csv", _csv_lines(_faces(2, seed=2), [3, 4], ["Training", "Training"]))
    first = load_dataset(path, "train")
    cached = list(_private_cache.rglob("*.npz"))
    assert len(cached) == 1
    np.testing.assert_array_equal(load_dataset(path, "train").images, first.images)

    changed = _faces(3, seed=3)
    _write(path, _csv_lines(changed, [0, 0, 1], ["Training"] * 3))
    reloaded = load_dataset(path, "train")
    np.testing.assert_array_equal(reloaded.images, changed)


@pytest.mark.parametrize("damage", [lambda data: data[: len(data) // 2], lambda data: b"", lambda data: b"junk" * 9])
def test_a_damaged_parse_cache_is_parsed_again_and_rewritten(tmp_path: Path, _private_cache: Path, damage) -> None:
    path = _write(tmp_path / "fer.csv", _csv_lines(_faces(2, seed=2), [3, 4], ["Training", "Training"]))
    first = load_dataset(path, "train")
    [cached] = _private_cache.rglob("*.npz")
    cached.write_bytes(damage(cached.read_bytes()))  # a run killed mid-write, a disk that filled up
    np.testing.assert_array_equal(load_dataset(path, "train").images, first.images)
    with np.load(cached) as rewritten:
        np.testing.assert_array_equal(rewritten["images"], first.images)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda lab, pix, use: f"{lab},{pix.rsplit(' ', 1)[0]},{use}", r"line 3: 2303 pixel values, expected 2304"),
        (
            lambda lab, pix, use: f"{lab},x {pix.split(' ', 1)[1]},{use}",
            r"line 3: pixels hold a value that is not "
            "an integer",
        ),
        (
            lambda lab, pix, use: f"{lab},1.5 {pix.split(' ', 1)[1]},{use}",
            r"line 3: pixels hold a value that is not "
            "an integer",
        ),
        (lambda lab, pix, use: f"{lab},300 {pix.split(' ', 1)[1]},{use}", r"line 3: pixel value 300 outside 0\.\.255"),
        (lambda lab, pix, use: f"9,{pix},{use}", r"line 3: label 9 out of range 0\.\.6"),
        (lambda lab, pix, use: f"happy,{pix},{use}", r"line 3: label b?'happy' is not an integer"),
        (lambda lab, pix, use: f"{lab},{pix}", r"line 3: 2 fields, expected 3"),
    ],
)
def test_corrupt_csv_row_names_its_line_and_the_fault(tmp_path: Path, mutate, message: str) -> None:
    lines = _csv_lines(_faces(3, seed=4), [1, 2, 3], ["Training"] * 3)
    lines[2] = mutate(*lines[2].split(","))
    path = _write(tmp_path / "bad.csv", lines)
    with pytest.raises(QuantizeError, match=message):
        load_dataset(path, "train")


def test_csv_without_usage_is_one_training_split(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.csv", _csv_lines(_faces(4, seed=6), [0, 1, 2, 3], None))
    assert len(load_dataset(path, "train")) == 4
    with pytest.raises(QuantizeError, match="no Usage column"):
        load_dataset(path, "test")


def test_csv_whose_usage_names_its_splits_train_and_test_loads_them(tmp_path: Path) -> None:
    path = _write(tmp_path / "own.csv", _csv_lines(_faces(3, seed=8), [0, 1, 2], ["train", "train", "test"]))
    assert list(load_dataset(path, "train").labels) == [0, 1]
    assert list(load_dataset(path, "test").labels) == [2]


def test_the_training_faces_are_never_the_faces_a_build_is_tested_on(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.csv", _csv_lines(_faces(4, seed=6), [0, 1, 2, 3], None))
    with pytest.raises(QuantizeError, match="'train' split is the training faces"):
        load_training_data(path, "train", FaceOptions(), None, lambda _: None)


def test_missing_split_and_bad_files_say_what_is_wrong(tmp_path: Path) -> None:
    path = _write(tmp_path / "fer.csv", _csv_lines(_faces(2, seed=7), [0, 1], ["Training", "Training"]))
    with pytest.raises(QuantizeError, match=r"no rows with Usage 'PublicTest' \(present: Training\)"):
        load_dataset(path, "test")
    with pytest.raises(QuantizeError, match="does not exist"):
        load_dataset(tmp_path / "nowhere.csv", "train")
    other = tmp_path / "other.csv"
    other.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(QuantizeError, match="not a FER2013-style CSV"):
        load_dataset(other, "train")
    broken = tmp_path / "broken.csv.gz"
    whole = gzip.compress("\n".join(_csv_lines(_faces(20, seed=8), [0] * 20, ["Training"] * 20)).encode())
    broken.write_bytes(whole[: len(whole) // 2])  # an interrupted download
    with pytest.raises(QuantizeError, match="cannot read"):
        load_dataset(broken, "train")


def test_csv_saved_by_excel_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    lines = _csv_lines(_faces(2, seed=9), [3, 4], ["Training", "Training"])
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    assert load_dataset(path, "train", cache=False).labels.tolist() == [3, 4]


def test_header_only_csv_is_an_empty_split(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.csv", ["emotion,pixels"])
    with pytest.raises(QuantizeError, match="holds no faces"):
        load_dataset(path, "train")


@pytest.mark.skipif(not FER_CSV.exists(), reason=f"shared FER2013 CSV absent ({FER_CSV})")
def test_real_fer2013_rows_parse_like_the_csv_says(tmp_path: Path) -> None:
    with gzip.open(FER_CSV, "rt") as f:
        lines = [next(f).rstrip("\n") for _ in range(301)]  # header + 300 rows, not the whole file
    path = _write(tmp_path / "head.csv.gz", lines)
    faces = load_dataset(path, "train")
    assert len(faces) == 300
    for row, image, label in zip(lines[1:], faces.images, faces.labels):
        emotion, pixels, usage = row.split(",")
        assert usage == "Training"
        assert label == int(emotion)
        assert image.ravel().tolist() == [int(p) for p in pixels.split()]
    assert faces.images.std() > 20  # real faces, not a constant image


# ---------------------------------------------------------------- image folders


def _write_image(path: Path, size: int, seed: int, suffix: str = ".jpg") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    file = path.with_suffix(suffix)
    assert cv2.imwrite(str(file), np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8))
    return file


def test_kaggle_folder_layout_maps_classes_by_name(tmp_path: Path) -> None:
    for split, per_class in (("train", 2), ("test", 1)):
        for i, name in enumerate(CANONICAL_LABELS):
            for j in range(per_class):
                _write_image(tmp_path / split / name / f"im{j}", 48, seed=i * 10 + j, suffix=".png" if j else ".jpg")
    (tmp_path / "train" / "happy" / "notes.txt").write_text("not an image")
    train = load_dataset(tmp_path, "train")
    test = load_dataset(tmp_path, "test")
    assert len(train) == 14 and len(test) == 7
    assert set(train.class_counts().values()) == {2}
    png = cv2.imread(str(tmp_path / "train" / "sad" / "im1.png"), cv2.IMREAD_GRAYSCALE)
    sad = train.images[train.labels == CANONICAL_LABELS.index("sad")]
    assert any(np.array_equal(png, image) for image in sad)


def test_images_in_subfolders_of_a_class_folder_belong_to_that_class(tmp_path: Path) -> None:
    """As torchvision's ImageFolder reads them: a class folder split into batches, or by source."""
    for i, name in enumerate(CANONICAL_LABELS):
        _write_image(tmp_path / "train" / name / "im", 48, seed=i)
    for j in range(3):
        _write_image(tmp_path / "train" / "happy" / f"batch{j}" / "more" / "im", 48, seed=100 + j)
    _write_image(tmp_path / "train" / "happy" / ".thumbnails" / "im", 48, seed=200)  # hidden: not a face
    counts = load_dataset(tmp_path, "train").class_counts()
    assert counts["happy"] == 4 and sum(counts.values()) == 10


def test_six_class_training_testing_layout_with_suprise_folder(tmp_path: Path) -> None:
    classes = ["Angry", "Fear", "Happy", "Neutral", "Sad", "Suprise"]
    for split in ("Training", "Testing"):
        for i, name in enumerate(classes):
            _write_image(tmp_path / split / name / "a", 96, seed=i)  # bigger than 48: resized
    train = load_dataset(tmp_path, "train")
    test = load_dataset(tmp_path, "test")
    assert train.images.shape == (6, 48, 48) and len(test) == 6
    counts = train.class_counts()
    assert counts["surprise"] == 1 and counts["disgust"] == 0
    big = cv2.imread(str(tmp_path / "Training" / "Suprise" / "a.jpg"), cv2.IMREAD_GRAYSCALE)
    expected = cv2.resize(big, (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(train.images[train.labels == CANONICAL_LABELS.index("surprise")][0], expected)


def test_unknown_class_folder_is_named(tmp_path: Path) -> None:
    _write_image(tmp_path / "train" / "happy" / "a", 48, seed=1)
    _write_image(tmp_path / "train" / "bored" / "a", 48, seed=2)
    with pytest.raises(QuantizeError, match=r"class folder .*bored.*unknown expression label 'bored'.*move it out"):
        load_dataset(tmp_path, "train")


def test_a_contempt_folder_as_in_ferplus_exports_is_left_out_with_a_warning(tmp_path: Path) -> None:
    _write_image(tmp_path / "train" / "happy" / "a", 48, seed=1)
    _write_image(tmp_path / "train" / "contempt" / "a", 48, seed=2)
    with pytest.warns(UserWarning, match="left out contempt: not one of the seven expressions"):
        faces = load_dataset(tmp_path, "train")
    assert len(faces) == 1 and faces.class_counts()["happy"] == 1


def test_corrupt_image_fails_naming_the_file_unless_skipped(tmp_path: Path) -> None:
    _write_image(tmp_path / "train" / "happy" / "good", 48, seed=1)
    bad = tmp_path / "train" / "sad" / "broken.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(QuantizeError, match=r"cannot decode image .*sad/broken\.jpg"):
        load_dataset(tmp_path, "train")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        faces = load_dataset(tmp_path, "train", skip_corrupt=True)
    assert len(faces) == 1 and faces.skipped == 1


def test_empty_and_missing_split_folders(tmp_path: Path) -> None:
    (tmp_path / "train" / "happy").mkdir(parents=True)
    with pytest.raises(QuantizeError, match=r"holds no readable images"):
        load_dataset(tmp_path, "train")
    with pytest.raises(QuantizeError, match=r"no folder for split 'test'.*found train"):
        load_dataset(tmp_path, "test")


# ---------------------------------------------------------------- splitting


def test_stratified_split_keeps_class_proportions_and_is_reproducible() -> None:
    labels = np.repeat(np.arange(7), [50, 10, 40, 100, 60, 30, 70])
    faces = FaceSet(_faces(len(labels), seed=8), labels.astype(np.int64), "memory", "train")
    train, val = stratified_split(faces, 0.2, seed=3)
    assert len(train) + len(val) == len(faces)
    for label, count in enumerate([50, 10, 40, 100, 60, 30, 70]):
        assert (val.labels == label).sum() == round(count * 0.2)
    again_train, again_val = stratified_split(faces, 0.2, seed=3)
    np.testing.assert_array_equal(val.images, again_val.images)
    other_val = stratified_split(faces, 0.2, seed=4)[1]
    assert not np.array_equal(val.images, other_val.images)
    # No face lands on both sides.
    seen = {image.tobytes() for image in train.images}
    assert not any(image.tobytes() in seen for image in val.images)
    with pytest.raises(QuantizeError, match="between 0 and 1"):
        stratified_split(faces, 1.5)
