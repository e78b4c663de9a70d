"""FER+ votes: ten annotators' votes per FER2013 face, as soft targets and as majority labels.

The vote file (Microsoft FERPlus layout, one row per data row of a FER2013-layout CSV, in the same order) has the
columns `usage,row,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF`. A row with no
votes is a face FER+ dropped or could not match.

The majority label is the expression with the most votes (on a tie, the first in the file's column order); a face
whose most-voted column is contempt, unknown or not-a-face has none, as FER2013 has no such class. Soft targets
drop single votes first, as FERPlus's own training code does: one annotator alone is mostly noise.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.contract import CANONICAL_LABELS
from quantize.errors import QuantizeError

VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
# Vote column of each canonical label, in CANONICAL_LABELS order (angry, disgust, fear, happy, sad, surprise, neutral).
_CANONICAL_COLUMNS = [
    VOTE_COLUMNS.index(n) for n in ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
]
NO_LABEL = -1


@dataclass
class VoteFile:
    """A vote file's rows in file order: their votes and what each row says about the face it is for."""

    votes: np.ndarray  # float32 (N, 10), NaN rows where FER+ has none
    usages: list[str | None]  # each row's usage column (None without one)
    rows: list[int | None]  # each row's data row number, from its row column (None without one)
    lines: list[int]  # each row's line in the file, for messages


def read_vote_file(path: Path) -> VoteFile:
    """Every row of a vote file. A file that is not UTF-8 text (a BOM is fine), a row cut short, or a count
    that is negative, not finite or not a number is a QuantizeError naming the line."""
    path = Path(path).expanduser()
    try:
        raw = gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
        with raw as handle:
            text = handle.read().decode("utf-8-sig")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise QuantizeError(f"cannot read FER+ vote file {path}: {exc}; check that the file is complete") from None
    except UnicodeDecodeError as exc:  # Latin-1, or UTF-16 as spreadsheets save "Unicode text"
        raise QuantizeError(
            f"FER+ vote file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save it as CSV in UTF-8"
        ) from None
    rows = list(csv.reader(io.StringIO(text)))
    header = [h.strip() for h in rows[0]] if rows else []
    missing = [c for c in VOTE_COLUMNS if c not in header]
    if missing:
        raise QuantizeError(
            f"{path} is not a FER+ vote file: no column {', '.join(missing)} (expected "
            f"usage,row,{','.join(VOTE_COLUMNS)})"
        )
    columns = [header.index(c) for c in VOTE_COLUMNS]
    lowered = [h.lower() for h in header]
    usage_col = lowered.index("usage") if "usage" in lowered else None
    # Only our own layout numbers its rows. Microsoft's names images (fer0000123.png), and its numbering runs one
    # behind the data rows after its first unnamed face, so a name says nothing about the row.
    row_col = lowered.index("row") if "row" in lowered else None
    width = max(columns + [c for c in (usage_col, row_col) if c is not None]) + 1
    votes: list[list[float]] = []
    usages: list[str | None] = []
    numbers: list[int | None] = []
    lines: list[int] = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < width:
            raise QuantizeError(
                f"{path.name} line {line_no} has {len(row)} columns where the header has {len(header)}; the file "
                "is cut short or the row lost cells: give the complete vote file"
            )
        cells = [row[c].strip() for c in columns]
        usages.append(None if usage_col is None else row[usage_col].strip())
        number = None if row_col is None else re.search(r"\d+", row[row_col])
        numbers.append(int(number.group()) if number else None)
        lines.append(line_no)
        if not any(cells):
            votes.append([np.nan] * len(VOTE_COLUMNS))
            continue
        try:
            counts = [float(c or 0) for c in cells]
        except ValueError:
            raise QuantizeError(f"{path.name} line {line_no}: a vote count is not a number") from None
        if not all(math.isfinite(c) and c >= 0 for c in counts):
            raise QuantizeError(
                f"{path.name} line {line_no}: a vote count is negative or not finite; counts are how many "
                "annotators chose each column (0 or more)"
            )
        votes.append(counts)
    return VoteFile(np.asarray(votes, dtype=np.float32).reshape(-1, len(VOTE_COLUMNS)), usages, numbers, lines)


def read_votes(path: Path, usage: str | None = None) -> np.ndarray:
    """(N, 10) float32 votes in file order (NaN rows where FER+ has none), of every row or of one Usage value."""
    file = read_vote_file(path)
    if usage is None:
        return file.votes
    return file.votes[np.asarray([u == usage for u in file.usages], dtype=bool)]


def _denoised(votes: np.ndarray) -> np.ndarray:
    """Votes with single votes (one annotator alone) removed."""
    return np.where(votes <= 1.0, 0.0, votes)


def majority_labels(votes: np.ndarray) -> np.ndarray:
    """Canonical label index per face, NO_LABEL where FER+ has no votes or the most votes are for no FER2013 class."""
    counts = np.nan_to_num(votes, nan=0.0)
    top = counts.argmax(axis=1)
    voted = counts.sum(axis=1) > 0
    labels = np.full(len(votes), NO_LABEL, dtype=np.int64)
    for canonical, column in enumerate(_CANONICAL_COLUMNS):
        labels[voted & (top == column)] = canonical
    return labels


def vote_distributions(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(targets (N, 7) over CANONICAL_LABELS, usable (N,) bool): each face's votes for the seven expressions,
    single votes dropped, normalised to sum 1. A face is unusable when it has no votes left for them."""
    clean = np.nan_to_num(_denoised(votes), nan=0.0)[:, _CANONICAL_COLUMNS]
    total = clean.sum(axis=1, keepdims=True)
    usable = total[:, 0] > 0
    targets = np.divide(clean, total, out=np.zeros_like(clean), where=total > 0)
    assert targets.shape[1] == len(CANONICAL_LABELS)
    return targets.astype(np.float32), usable
