"""The on-disk event spool: every event is stored here before it is published and removed only once the
broker has acknowledged it, so a broker outage, a crash or a power cut loses nothing within the bound.

One SQLite file in the state dir, WAL mode, `synchronous=FULL`. FULL (an fsync of the WAL per commit)
rather than NORMAL because NORMAL may roll back the last commits on a power cut, and Raspberry Pis are
unplugged: a rolled-back append would not only lose an event that may already have been published,
it would also hand out its `seq` again, and consumers that de-duplicate by seq would then drop a
different event. Events arrive a few per second at most and acks are committed in batches, so the
fsyncs cost little.

`seq` is strictly increasing and never reused: the last one handed out is kept in the same file and
advanced in the same transaction as the insert, also when the spool is empty or events were dropped.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge.errors import UserError

logger = logging.getLogger(__name__)

SPOOL_FORMAT = 1  # PRAGMA user_version of files this code writes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_created ON events (created);
INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', 0), ('dropped', 0);
"""


class SpoolError(UserError):
    """The spool file cannot be opened or written."""


class Spool:
    """Durable FIFO of JSON events keyed by seq; safe to use from several threads.

    The pipeline thread appends, the publisher's thread reads `pending` and acks.
    """

    def __init__(self, path: Path, max_events: int = 100_000, max_age_s: float = 7 * 86400):
        if max_events < 1 or max_age_s <= 0:
            raise ValueError("max_events must be >= 1 and max_age_s > 0")
        self.path = Path(path)
        self.max_events = max_events
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._db = self._open()
        with self._lock, self._failures("open"):
            self._depth = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            self._last_seq = self._meta("last_seq")
            self._dropped = self._meta("dropped")
            dropped_before = self._dropped
            if self._depth:
                self._transaction(self._enforce_bounds, time.time())
        if self._dropped > dropped_before:
            logger.warning(
                "spool %s: dropped %d events older than %.1f days or beyond %d events",
                self.path,
                self._dropped - dropped_before,
                max_age_s / 86400,
                max_events,
            )
        if self._depth:
            logger.info(
                "spool %s holds %d unsent events (seq %d and earlier); they are sent first",
                self.path,
                self._depth,
                self._last_seq,
            )

    # -- public ----------------------------------------------------------------------------------

    def append(self, event: dict[str, Any]) -> int:
        """Store `event` with the next seq (added to the stored JSON) and return that seq.

        Durable on return. Drops the oldest events beyond max_events / max_age_s in the same transaction.
        """
        now = time.time()
        with self._lock, self._failures("write to"):
            return self._transaction(self._insert, event, now)

    def pending(self, limit: int, after: int = 0) -> list[tuple[int, bytes]]:
        """Up to `limit` unacknowledged events with seq > `after`, oldest first, as (seq, JSON bytes)."""
        with self._lock, self._failures("read"):
            rows = self._db.execute(
                "SELECT seq, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [(seq, bytes(payload)) for seq, payload in rows]

    def ack_many(self, seqs: Iterable[int]) -> None:
        """The broker has these events: forget them, in one transaction (one fsync). Acking an unknown or
        dropped seq does nothing."""
        keys = [(int(s),) for s in seqs]
        if not keys:
            return
        with self._lock, self._failures("write to"):
            self._transaction(self._delete, keys)

    @property
    def depth(self) -> int:
        """Events stored and not yet acknowledged."""
        return self._depth

    @property
    def dropped(self) -> int:
        """Events dropped by the max_events / max_age_s bound since the file was created."""
        return self._dropped

    @property
    def last_seq(self) -> int:
        """The seq handed out last (0 before the first event)."""
        return self._last_seq

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else exc.strerror
            raise SpoolError(
                f"spool folder {self.path.parent} cannot be created ({why}); set [spool] dir to a writable folder"
            ) from None
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        except sqlite3.Error as exc:
            raise self._unusable(exc) from None
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SPOOL_FORMAT:
                db.close()
                raise SpoolError(
                    f"spool {self.path} was written by a newer edge-mood (format {version}); "
                    f"upgrade edge-mood or move the file aside"
                )
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.OperationalError("the file system does not support WAL mode")
            db.execute("PRAGMA synchronous=FULL")
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(f"integrity check failed: {problems[0]}")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SPOOL_FORMAT}")
        except sqlite3.Error as exc:
            db.close()
            raise self._unusable(exc) from None
        return db

    def _unusable(self, exc: sqlite3.Error) -> SpoolError:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and any(
            s in text for s in ("unable to open", "readonly", "read-only", "disk I/O", "full")
        ):
            return SpoolError(
                f"spool {self.path} cannot be opened for writing ({text}); make its folder "
                f"writable by this user and check free space, or set [spool] dir"
            )
        aside = self.path.parent / "broken-spool"
        return SpoolError(
            f"spool {self.path} is corrupt ({text}); move it and its -wal/-shm files aside "
            f"(mkdir {aside} && mv {self.path}* {aside}/) and start again; unsent events in it are lost"
        )

    @contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        """Turns a SQLite failure during use (disk full, file removed, I/O error) into a one-line SpoolError."""
        try:
            yield
        except sqlite3.Error as exc:
            raise SpoolError(
                f"cannot {doing} spool {self.path} ({exc}); check free space and that the file "
                f"is writable; move it aside if it is corrupt"
            ) from None

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def _transaction(self, work, *args):
        # IMMEDIATE takes the write lock up front, so the seq read and its update cannot interleave
        # with another writer (e.g. a second process opened on the same file by mistake).
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work(*args)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self._depth = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            self._last_seq, self._dropped = self._meta("last_seq"), self._meta("dropped")
            raise
        return result

    def _insert(self, event: dict[str, Any], now: float) -> int:
        seq = self._meta("last_seq") + 1
        payload = json.dumps(_with_seq(event, seq), separators=(",", ":"), allow_nan=False).encode()
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (seq,))
        self._db.execute("INSERT INTO events (seq, created, payload) VALUES (?, ?, ?)", (seq, now, payload))
        self._last_seq = seq
        self._depth += 1
        self._enforce_bounds(now)
        return seq

    def _delete(self, keys: list[tuple[int]]) -> None:
        before = self._db.total_changes
        self._db.executemany("DELETE FROM events WHERE seq = ?", keys)
        self._depth -= self._db.total_changes - before

    def _enforce_bounds(self, now: float) -> None:
        gone = self._db.execute("DELETE FROM events WHERE created < ?", (now - self.max_age_s,)).rowcount
        excess = self._depth - gone - self.max_events
        if excess > 0:
            gone += self._db.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (excess,)
            ).rowcount
        if gone:
            self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (gone,))
            self._depth -= gone
            self._dropped += gone


def _with_seq(event: dict[str, Any], seq: int) -> dict[str, Any]:
    """A copy of `event` with "seq" right after "device" (or first), so payloads read naturally."""
    out: dict[str, Any] = {}
    if "device" not in event:
        out["seq"] = seq
    for key, value in event.items():
        if key == "seq":
            continue
        out[key] = value
        if key == "device":
            out["seq"] = seq
    return out
