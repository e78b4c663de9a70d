"""FER+ vote files: majority labels and soft targets over the seven FER2013 classes."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from edge.contract import CANONICAL_LABELS
from quantize.errors import QuantizeError
from quantize.ferplus import NO_LABEL, majority_labels, read_votes, vote_distributions

HEADER = "usage,row,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
SHARED_VOTES = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ferplus" / "fer2013_ferplus_votes.csv.gz"
)


def _write(path: Path, rows: list[str]) -> Path:
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join([HEADER, *rows]) + "\n")
    return path


def test_majority_is_the_most_voted_expression_and_none_for_other_columns(tmp_path: Path) -> None:
    votes = read_votes(
        _write(
            tmp_path / "votes.csv.gz",
            [
                "Training,0,0,9,0,0,0,0,0,0,1,0",  # happiness
                "Training,1,2,0,0,0,6,0,0,2,0,0",  # anger
                "PublicTest,2,0,0,0,0,0,0,0,7,3,0",  # contempt: no FER2013 class
                "PublicTest,3,,,,,,,,,,",  # FER+ dropped this face
            ],
        )
    )
    assert votes.shape == (4, 10)
    labels = majority_labels(votes)
    assert labels.tolist() == [CANONICAL_LABELS.index("happy"), CANONICAL_LABELS.index("angry"), NO_LABEL, NO_LABEL]


def test_soft_targets_drop_single_votes_and_sum_to_one(tmp_path: Path) -> None:
    votes = read_votes(_write(tmp_path / "v.csv.gz", ["Training,0,6,0,1,3,0,0,0,0,0,0", "Training,1,,,,,,,,,,"]))
    targets, usable = vote_distributions(votes)
    assert usable.tolist() == [True, False]
    neutral, sad, surprise = (CANONICAL_LABELS.index(n) for n in ("neutral", "sad", "surprise"))
    assert targets[0, neutral] == pytest.approx(6 / 9)
    assert targets[0, sad] == pytest.approx(3 / 9)
    assert targets[0, surprise] == 0.0  # one annotator alone
    assert targets[0].sum() == pytest.approx(1.0)


def test_usage_selects_rows_in_file_order(tmp_path: Path) -> None:
    path = _write(tmp_path / "v.csv.gz", ["Training,0,10,0,0,0,0,0,0,0,0,0", "PublicTest,1,0,10,0,0,0,0,0,0,0,0"])
    assert majority_labels(read_votes(path, "PublicTest")).tolist() == [CANONICAL_LABELS.index("happy")]


def test_a_file_that_is_not_a_vote_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "fer2013.csv"
    path.write_text("emotion,pixels,Usage\n0,1 2 3,Training\n")
    with pytest.raises(QuantizeError, match="not a FER\\+ vote file"):
        read_votes(path)


@pytest.mark.skipif(not SHARED_VOTES.exists(), reason="needs ../shared/data/ferplus (the team's shared data)")
def test_shared_vote_file_covers_fer2013_row_for_row() -> None:
    training, public = read_votes(SHARED_VOTES, "Training"), read_votes(SHARED_VOTES, "PublicTest")
    assert (len(training), len(public)) == (28709, 3589)  # FER2013's split sizes, per ../shared/README.md
    targets, usable = vote_distributions(public)
    assert usable.mean() > 0.95
    assert np.allclose(targets[usable].sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("latin-1", r"v.csv is not UTF-8 text \(byte 0xe9 at offset \d+\); save it as CSV in UTF-8"),
        ("utf-16", r"v.csv is not UTF-8 text \(byte 0xff at offset 0\); save it as CSV in UTF-8"),
        ("cut short", r"v.csv line 3 has 4 columns where the header has 12; the file is cut short"),
        ("negative", r"v.csv line 3: a vote count is negative or not finite"),
        ("not finite", r"v.csv line 3: a vote count is negative or not finite"),
    ],
)
def test_a_vote_file_that_cannot_be_right_is_refused_naming_the_line(case: str, expected: str, tmp_path: Path) -> None:
    rows = ["Training,0,0,9,0,0,0,0,0,0,1,0", "Training,1,8,0,0,1,0,0,1,0,0,0"]
    encoding = {"latin-1": "latin-1", "utf-16": "utf-16"}.get(case, "utf-8")
    if case == "latin-1":
        rows[1] += ",café"  # a note in an extra column, as a spreadsheet saves it
    elif case == "cut short":
        rows[1] = "Training,1,8,0"
    elif case == "negative":
        rows[1] = "Training,1,8,0,0,-1,0,0,1,0,0,0"
    elif case == "not finite":
        rows[1] = "Training,1,8,0,0,nan,0,0,1,0,0,0"
    path = tmp_path / "v.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding=encoding)
    with pytest.raises(QuantizeError, match=expected):
        read_votes(path)


def test_a_utf8_file_with_a_byte_order_mark_reads_its_usage(tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    path.write_text(f"{HEADER}\nPublicTest,0,0,10,0,0,0,0,0,0,0,0\n", encoding="utf-8-sig")
    assert majority_labels(read_votes(path, "PublicTest")).tolist() == [CANONICAL_LABELS.index("happy")]
