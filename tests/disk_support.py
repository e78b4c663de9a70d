"""A full disk for tests: a real tmpfs of a few hundred KiB, filled to the last byte and freed again.

Mounting needs root (CI runs as root); elsewhere the tests that use it skip and say so."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

FILLER = "filler"


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "256k") -> Iterator[Path]:
    """`path` as a tmpfs of `size`, unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the full-disk tests needs root (CI runs as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "edge-mood-test", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); a container needs CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(folder: Path, leave: int = 0) -> None:
    """Take every free byte of the file system under `folder` but `leave`: a write larger than that then
    fails part way, as one does on a disk that fills while it is written."""
    filler = folder / FILLER
    with open(filler, "ab", buffering=0) as out:
        for size in (65536, 4096, 1):  # down to the last byte
            try:
                while out.write(b"\0" * size):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)


def free(folder: Path) -> None:
    (folder / FILLER).unlink(missing_ok=True)
