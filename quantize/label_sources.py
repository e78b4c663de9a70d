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
from quantize.ferplus import read_votes, vote_distributions


def with_vote_targets(faces: FaceSet, votes_file: Path, weight: float) -> tuple[FaceSet, dict[str, Any]]:
    """`faces` with targets mixed from the vote file's distributions, and the record the card keeps of it."""
    if not 0.0 < weight <= 1.0:
        raise QuantizeError(f"votes weight {weight} must lie in (0, 1]: the share of the votes in each face's target")
    if faces.rows is None or faces.file_rows is None:
        raise QuantizeError(
            f"{faces.source} is an image folder; a vote file goes with a FER2013-layout CSV, whose rows it follows"
        )
    votes = read_votes(votes_file)
    # Longer is as wrong as shorter: a vote file of another CSV lines its rows up with the wrong faces.
    if len(votes) != faces.file_rows:
        raise QuantizeError(
            f"vote file {votes_file} has {len(votes)} rows but {faces.source} has {faces.file_rows} data rows; "
            "give the vote file made for this CSV (one row per data row, same order)"
        )
    distributions, usable = vote_distributions(votes[faces.rows])
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


def own_labels_record(faces: FaceSet) -> dict[str, Any]:
    """The card's record when the data set's own labels are the targets."""
    return {"kind": "dataset labels", "faces": len(faces)}
