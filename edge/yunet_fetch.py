"""The YuNet face detector file: fetched once from its pinned URL into the data folder, and refused when its
sha256 is not the pinned one.

Three callers share this code: the detector factory on first use (`wiring.build_detector`), `edge models
fetch`, and systemd/install.sh, which runs `python3 -m edge.yunet_fetch` from the checkout before the venv
exists. So it uses the standard library only.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from edge.errors import EXIT_MAY_CLEAR, ModelError
from edge.locations import YUNET_GLOB, YUNET_SHA256, YUNET_URL, data_dir

TIMEOUT_S = 20.0  # per network operation; an offline machine fails at once (no name resolution)
MAX_BYTES = 20 * 1024 * 1024  # the real file is 232,589 bytes; anything far larger is not it


class YuNetUnavailable(ModelError):
    """The file could not be downloaded for a fault that may clear (no network yet, a timeout, a server error):
    at a boot where the network comes late, a restart later may fetch it."""

    exit_status = EXIT_MAY_CLEAR


def file_name(url: str) -> str:
    return Path(urlsplit(url).path).name or "face_detection_yunet.onnx"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def placement_hint(folder: Path, url: str = YUNET_URL, sha256: str = YUNET_SHA256) -> str:
    """What a user without internet does instead: the file to place and where."""
    return f"place {file_name(url)} (sha256 {sha256}, from {url}) in {folder}, or run `edge models fetch --file PATH`"


def fetch_yunet(folder: Path, url: str = YUNET_URL, sha256: str = YUNET_SHA256, local_file: Path | None = None) -> Path:
    """The checked YuNet file in `folder`: kept if already there, else copied from `local_file` or downloaded.

    Raises ModelError on a checksum mismatch (nothing is written) or an unwritable folder, and
    YuNetUnavailable when the download fails.
    """
    sha256 = sha256.strip().lower()
    # A local copy keeps its name only where the daemon would find it by that name (a browser's "yunet (1).onnx"
    # would not be).
    kept = local_file.name if local_file and fnmatch.fnmatchcase(local_file.name, YUNET_GLOB) else None
    target = folder / (kept or file_name(url))
    if target.is_file() and sha256_of(target) == sha256:
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".yunet.", dir=folder)
    except OSError as exc:
        raise ModelError(
            f"cannot write the YuNet model into {folder} ({exc.strerror}); make that folder writable, or put "
            f"{target.name} in another (`edge models fetch --dir FOLDER`) and set detector.yunet_model to it"
        ) from None
    partial = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            if local_file is not None:
                _copy(local_file, out)
            else:
                _download(url, out, folder, sha256)
        got = sha256_of(partial)
        source = local_file or url
        if got != sha256:
            raise ModelError(
                f"YuNet checksum mismatch: {source} has sha256 {got}, expected {sha256}; refusing this file "
                f"(a different release needs its own --sha256)"
            )
        partial.chmod(0o644)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _copy(source: Path, out) -> None:
    try:
        with source.open("rb") as fh:
            shutil.copyfileobj(fh, out)
    except OSError as exc:
        raise ModelError(f"YuNet file {source} cannot be read ({exc.strerror}); fix the path") from None


def _download(url: str, out, folder: Path, sha256: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            size = 0
            while block := response.read(1 << 16):
                size += len(block)
                if size > MAX_BYTES:
                    raise ModelError(f"{url} sends more than {MAX_BYTES} bytes; that is not the YuNet model")
                out.write(block)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        fault = YuNetUnavailable if _may_clear(exc) else ModelError
        raise fault(f"cannot download the YuNet face detector ({why}); {placement_hint(folder, url, sha256)}") from None


def _may_clear(exc: Exception) -> bool:
    """Whether a failed download may succeed later by itself (no network or name service yet, a timeout, a
    server error), rather than never (a URL the server does not know, or no URL at all)."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500
    if isinstance(exc, urllib.error.URLError):
        return isinstance(exc.reason, OSError)
    return isinstance(exc, OSError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edge models fetch` (and of `python -m edge.yunet_fetch`)."""
    parser.add_argument("--dir", type=Path, help=f"folder to put it in (default: {data_dir()})")
    parser.add_argument("--file", type=Path, help="use this local copy instead of downloading (checksum still checked)")
    parser.add_argument("--url", help="download from here (default: the OpenCV Model Zoo's 2023mar release)")
    parser.add_argument("--sha256", help="expected sha256 (default: the pinned one of that release)")


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the file's path; on failure one line on stderr and exit status 2."""
    parser = argparse.ArgumentParser(prog="python -m edge.yunet_fetch", description="Fetch the YuNet face detector.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        print(fetch_yunet(args.dir or data_dir(), args.url or YUNET_URL, args.sha256 or YUNET_SHA256, args.file))
    except ModelError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
