"""Where the training targets come from: the data set's own label per face, or a distribution per face from
annotators' votes (FER+, quantize.ferplus) mixed with it.

FER2013's own labels disagree with the majority of FER+'s ten annotators on a third of the faces. With a vote
file, each face the votes cover learns `weight * votes + (1 - weight) * its own label` (both as distributions);
a face the vote file has no votes for keeps its own label.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edge.contract import CANONICAL_LABELS
from quantize.datasets import FaceSet
from quantize.digest import path_sha256
from quantize.errors import QuantizeError
from quantize.ferplus import VoteFile, read_vote_file, vote_distributions

_MADE_FOR_THIS_CSV = "give the vote file made for this CSV (one row per data row, same order)"


def with_vote_targets(faces: FaceSet, votes_file: Path, weight: float) -> tuple[FaceSet, dict[str, Any]]:
    """`faces` with targets mixed from the vote file's distributions, and the record the card keeps of it."""
    if not 0.0 < weight <= 1.0:
        raise QuantizeError(f"votes weight {weight} must lie in (0, 1]: the share of the votes in each face's target")
    if faces.rows is None or faces.file_rows is None:
        raise QuantizeError(
            f"{faces.source} is an image folder; a vote file goes with a FER2013-layout CSV, whose rows it follows"
        )
    file = read_vote_file(votes_file)
    # Longer is as wrong as shorter: a vote file of another CSV lines its rows up with the wrong faces.
    if len(file.votes) != faces.file_rows:
        raise QuantizeError(
            f"vote file {votes_file} has {len(file.votes)} rows but {faces.source} has {faces.file_rows} data rows; "
            f"{_MADE_FOR_THIS_CSV}"
        )
    _check_rows_match(file, faces, votes_file)
    distributions, usable = vote_distributions(file.votes[faces.rows])
    own = np.eye(len(CANONICAL_LABELS), dtype=np.float32)[faces.labels]
    targets = np.where(usable[:, None], weight * distributions + (1.0 - weight) * own, own).astype(np.float32)
    record = {
        "kind": "votes",
        "file": Path(votes_file).name,
        "sha256": path_sha256(Path(votes_file)),
        "weight": weight,
        "faces_with_votes": int(usable.sum()),
        "faces": len(faces),
    }
    return replace(faces, targets=targets), record


def _check_rows_match(file: VoteFile, faces: FaceSet, votes_file: Path) -> None:
    """Refuse a vote file whose rows say they are for other faces than the CSV's: a row number (our `row`
    column) that is not its position, or a usage that is not the CSV's Usage of that row. The same
    row count alone does not tell the vote file of another CSV, or of this one in another order, apart."""
    assert faces.rows is not None
    ours = np.zeros(len(file.votes), dtype=bool)
    ours[faces.rows] = True  # the rows whose CSV Usage is faces.usage
    for position, (usage, number, line) in enumerate(zip(file.usages, file.rows, file.lines)):
        where = f"vote file {votes_file} line {line}"
        if number is not None and number != position:
            raise QuantizeError(
                f"{where} is for data row {number}, but it lines up with data row {position} of {faces.source}; "
                f"{_MADE_FOR_THIS_CSV}"
            )
        if usage is not None and faces.usage is not None and (usage.lower() == faces.usage.lower()) != ours[position]:
            theirs = f"Usage {faces.usage!r}" if ours[position] else f"a Usage other than {faces.usage!r}"
            raise QuantizeError(
                f"{where} has usage {usage!r}, but data row {position} of {faces.source} has {theirs}; "
                f"{_MADE_FOR_THIS_CSV}"
            )


def own_labels_record(faces: FaceSet) -> dict[str, Any]:
    """The card's record when the data set's own labels are the targets."""
    return {"kind": "dataset labels", "faces": len(faces)}
