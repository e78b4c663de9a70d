"""Class names as data sets and teachers spell them (a class folder, a teacher spec's label list), mapped onto
the canonical labels of edge.contract."""

from __future__ import annotations

from edge.contract import CANONICAL_LABELS
from quantize.errors import QuantizeError

# Spellings found in public data sets and checkpoints; "suprise" is the folder name of a popular Kaggle export.
_ALIASES: dict[str, str] = {
    "anger": "angry",
    "angry": "angry",
    "mad": "angry",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "scared": "fear",
    "afraid": "fear",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
    "suprise": "surprise",
    "suprised": "surprise",
    "neutral": "neutral",
}


# Classes some models answer beside the seven and FER2013 has no faces for: FER+'s eight-class models add
# contempt (and its vote file unknown and not-a-face). A teacher's outputs for them are left out.
OTHER_CLASSES = frozenset({"contempt", "unknown", "nf", "not_a_face"})


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def is_other_class(name: str) -> bool:
    """A class FER2013 does not have (contempt, unknown, not-a-face)."""
    return _key(name) in OTHER_CLASSES


def map_label_name(name: str) -> int:
    """Index into CANONICAL_LABELS of a class name, case-insensitive and tolerant of common aliases."""
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        raise QuantizeError(
            f"unknown expression label {name!r}; known names: {', '.join(CANONICAL_LABELS)} "
            f"(aliases: {', '.join(sorted(k for k in _ALIASES if k not in CANONICAL_LABELS))})"
        )
    return CANONICAL_LABELS.index(canonical)


def map_label_names(names: list[str] | tuple[str, ...]) -> list[int]:
    """Canonical indices of a model's or data set's label list; two names for one expression are an error."""
    indices = [map_label_name(n) for n in names]
    if len(set(indices)) != len(indices):
        raise QuantizeError(f"labels {list(names)} name the same expression twice; give each class once")
    return indices
