"""The seq high-water mark: a small file beside the spool naming the counter (its epoch) and the highest seq
it may have handed out.

seq must never go backwards for a device, also after the spool file was moved aside or lost. The spool
keeps its last seq too, but the spool is the file a user moves aside when it is corrupt, so this mark lives
in a file of its own. It is written atomically (temporary file, fsync, rename, fsync of the folder): after a
power cut it holds the old or the new content, never a torn one.

The spool reserves seqs in blocks and writes the mark once per block, before it hands out the first seq of
the block, so the mark costs one small write per `RESERVE_BLOCK` events.

The epoch names one run of the counter. It is made with the mark and kept while the mark lives; a new one
means the counter started again (the mark was lost with the rest of the state), so consumers can tell
a reset from a replay.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

RESERVE_BLOCK = 1000  # seqs reserved per write of the mark; a spool started afresh skips at most this many


@dataclass(frozen=True)
class SeqMark:
    epoch: str  # 12 hex digits
    reserved: int  # every seq handed out under this epoch is <= reserved


def new_epoch() -> str:
    return secrets.token_hex(6)


def read_mark(path: Path) -> SeqMark | None:
    """The mark in `path`; None when there is none or it cannot be used (then a new epoch starts)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        mark = SeqMark(epoch=str(data["epoch"]), reserved=int(data["reserved"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("seq mark %s cannot be read (%s); starting a new epoch", path, exc)
        return None
    if len(mark.epoch) != 12 or mark.reserved < 0:
        logger.warning("seq mark %s holds %r; starting a new epoch", path, mark)
        return None
    return mark


def write_mark(path: Path, mark: SeqMark) -> None:
    """Replace the mark atomically and durably. Raises OSError (ENOSPC when the disk is full)."""
    temporary = path.with_name(path.name + ".tmp")
    data = json.dumps({"epoch": mark.epoch, "reserved": mark.reserved}).encode()
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # makes the rename itself durable
    finally:
        os.close(folder)
