"""Write outputs so that a failure leaves nothing half-written: a staging folder first, moved in place when done."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from quantize.errors import QuantizeError


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a temporary file beside `path`, then rename it over `path`: readers (and a resumed
    run after a crash) see the old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; these are ordinary files
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a failed write (disk full) names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_cache(path: Path, write: Callable[[BinaryIO], object], what: str, log: Callable[[str], None]) -> None:
    """write_atomically for a cache file: a cache folder that is read-only or full costs the next run the time
    to compute `what` again, so it is a warning and this run goes on with what it computed."""
    try:
        write_atomically(path, write)
    except OSError as exc:
        log(
            f"warning: could not cache {what} in {path.parent} ({exc.strerror or exc}); going on without the cache, "
            "so the next run computes them again (--cache-dir names another folder)"
        )


def read_cache(path: Path | None, names: tuple[str, ...]) -> tuple[np.ndarray, ...] | None:
    """The arrays `names` of a cache file written by write_cache with np.savez; None when there is none or
    it is damaged (a run killed mid-write by a full disk, a file cut short), so the caller computes them again
    and overwrites it."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            return tuple(stored[name] for name in names)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(out: Path) -> None:
    """Fail now, not after hours of training, if the files named after `--out` cannot be written: `out` is a
    folder, or its folder cannot be created or written (creates nothing)."""
    if Path(out).is_dir():
        raise QuantizeError(f"--out {out} is a folder; name the output inside it, e.g. --out {Path(out) / 'NAME'}")
    check_folder(Path(out).parent, "--out")


def check_folder(folder: Path, option: str) -> None:
    """Fail now, not after hours of training, if `folder` (named by `option`) cannot be created or written
    into (creates nothing)."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise QuantizeError(f"cannot write into {folder}: {existing} is a file, not a folder; choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise QuantizeError(
            f"cannot write into {folder}: {existing} is not writable; choose another {option} or fix its permissions"
        )


class StagedOutputs:
    """Hands out paths in a hidden staging folder beside `dest`; commit() renames them into `dest` and deletes
    the folder with anything else written there (scratch files such as the QOperator comparison model).

    Files keep their final names while staged, so a staged card finds its staged model the way the daemon
    would. A failure (exception in the `with` block) deletes the staging folder and leaves `dest` untouched.

        with StagedOutputs(Path("models")) as out:
            export(out.path("x.onnx"))
    """

    def __init__(self, dest: Path) -> None:
        self.dest = Path(dest)
        self._dir: Path | None = None
        self._names: list[str] = []

    @property
    def dir(self) -> Path:
        if self._dir is None:
            self.dest.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix=".quantize-staging-", dir=self.dest))
        return self._dir

    def path(self, name: str) -> Path:
        if name not in self._names:
            self._names.append(name)
        return self.dir / name

    def commit(self) -> list[Path]:
        """Move every staged file over its destination; all must exist."""
        missing = [n for n in self._names if not (self.dir / n).is_file()]
        if missing:
            raise FileNotFoundError(f"staged outputs never written: {', '.join(missing)}")
        done = []
        for name in self._names:
            os.replace(self.dir / name, self.dest / name)
            done.append(self.dest / name)
        self.discard()
        return done

    def discard(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._names.clear()

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
