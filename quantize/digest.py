"""Content fingerprints: sha256 of files and folders (teachers, models, data sets) and of face arrays (cache keys)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edge.contract import file_sha256


def path_sha256(path: Path) -> str:
    """Hex sha256 of a file (as the daemon checks models), or for a folder, of every file's relative path
    and sha256 in sorted path order."""
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def faces_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """Hex sha256 of the face pixels and labels: the same faces in the same order give the same key."""
    digest = hashlib.sha256()
    digest.update(str(images.shape).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()
