"""The on-disk event spool: every event is stored here before it is published and removed only once the
broker has acknowledged it, so a broker outage, a crash or a power cut loses nothing within the bound.

One SQLite file in the state dir, WAL mode, `synchronous=FULL` for appends. FULL (an fsync of the WAL per
commit) rather than NORMAL because NORMAL may roll back the last commits on a power cut, and Raspberry Pis
are unplugged: a rolled-back append would not only lose an event that may already have been published,
it would also hand out its `seq` again, and consumers that de-duplicate by seq would then drop a
different event. Acks commit with NORMAL: one rolled back only sends its events again. So a live event
costs one fsync, and a backlog's acks are committed in batches.

`seq` is strictly increasing and never reused: the last one handed out is kept in the same file and
advanced in the same transaction as the insert, also when the spool is empty or events were dropped. A
high-water mark in a separate file (seq_mark.py) keeps it from going backwards when the spool file itself is
moved aside or lost; its epoch goes into every event with the seq.

When the spool cannot be written (disk full, I/O error), new events wait in a bounded memory queue, in
order and without a seq yet; every later append and `retry()` tries to store them again. Acks that cannot
be written are retried the same way. Nothing is lost unless the queue overflows (counted) or the process
ends while it holds events.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import shutil
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge.errors import EXIT_MAY_CLEAR, UserError
from edge.seq_mark import RESERVE_BLOCK, SeqMark, new_epoch, read_mark, write_mark

logger = logging.getLogger(__name__)

SPOOL_FORMAT = 1  # PRAGMA user_version of files this code writes
STORE_CHUNK = 200  # held events written per transaction
CLOCK_STEP_S = 60.0  # a change of the wall clock against the monotonic one this large is a step, not drift
WAL_SIZE_LIMIT = 4 * 1024 * 1024  # bytes
# An emptied spool holding more free pages than this (4 KiB each) gives the space back (VACUUM): after a long
# outage the file would keep its largest size for good, and every start reads it whole (quick_check).
VACUUM_FREE_PAGES = 256
KEEP_BROKEN = 3  # moved-aside corrupt spools kept for `sqlite3 .recover`

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


# The epoch is kept in `meta` as an integer (the column's type), shown as 12 hex digits.
EPOCH_KEY = "epoch"

# A spool that cannot be opened for one of these may work again later (space freed, disk back): a restart
# can fix it, so the service must not treat it as a configuration error.


class SpoolError(UserError):
    """The spool file cannot be opened or written."""


class _Corrupt(SpoolError):
    """The spool file is damaged: not a database, or its integrity check fails (`reason`: SQLite's words)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Spool:
    """Durable FIFO of JSON events keyed by seq; safe to use from several threads.

    The pipeline thread appends; the publisher's thread reads `pending`, acks, and calls `retry`.
    """

    def __init__(
        self,
        path: Path,
        max_events: int = 100_000,
        max_age_s: float = 7 * 86400,
        memory_events: int = 10_000,
        mark_path: Path | None = None,
    ):
        if max_events < 1 or max_age_s <= 0 or memory_events < 1:
            raise ValueError("max_events and memory_events must be >= 1 and max_age_s > 0")
        self.path = Path(path)
        # "spool.seq", not "spool.sqlite3.seq": moving `spool.sqlite3*` aside must leave the mark in place.
        self.mark_path = Path(mark_path) if mark_path else self.path.with_name(self.path.stem + ".seq")
        self.max_events = max_events
        self.max_age_s = max_age_s
        self.memory_events = memory_events
        self._lock = threading.Lock()
        self._held: deque[tuple[float, dict[str, Any]]] = deque()  # (created, event): not written yet
        self._held_dropped = 0
        self._unwritten_acks: set[int] = set()
        self._fault: str | None = None  # why the spool cannot be written right now
        self._overflow_warned = False
        self._clock_offset = time.time() - _since_boot()  # moves when the wall clock is stepped
        self._db = self._open()
        with self._lock, self._failures("open"):
            self._depth = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            self._last_seq = self._meta("last_seq")
            self._dropped = dropped_before = self._meta("dropped")
            self._epoch, self._reserved, self._epoch_saved = self._continue_counter()
            self._seq_at_open = self._last_seq  # events above it are this run's
            if self._depth:
                gone = self._write(self._drop_beyond_bounds, time.time(), self._depth)
                self._depth -= gone
                self._dropped += gone
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

    def append(self, event: dict[str, Any]) -> int | None:
        """Store `event` with the next seq and the epoch (added to the stored JSON) and return that seq.

        Durable on return. Drops the oldest events beyond max_events / max_age_s in the same transaction.
        When the spool cannot be written the event waits in memory and None is returned (module doc).
        Raises ValueError or TypeError for an event that cannot be JSON.
        """
        json.dumps(event, allow_nan=False)  # refuse it now, not when a held event is written later
        with self._lock:
            self._follow_clock()
            self._held.append((time.time(), event))
            self._bound_held()
            stored = self._store_held()
            return stored[-1] if stored and not self._held else None

    def pending(self, limit: int, after: int = 0) -> list[tuple[int, bytes]]:
        """Up to `limit` unacknowledged events with seq > `after`, oldest first, as (seq, JSON bytes)."""
        with self._lock, self._failures("read"):
            rows = self._db.execute(
                "SELECT seq, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit + len(self._unwritten_acks)),
            ).fetchall()
            unacked = [(seq, bytes(payload)) for seq, payload in rows if seq not in self._unwritten_acks]
        return unacked[:limit]

    def ack_many(self, seqs: Iterable[int]) -> None:
        """The broker has these events: forget them, in one transaction (one fsync). Acking an unknown or
        dropped seq does nothing. An ack that cannot be written is kept and written by a later call."""
        with self._lock:
            self._unwritten_acks.update(int(s) for s in seqs)
            self._write_acks()

    def retry(self) -> None:
        """Write what a failure left in memory (events, acks), and drop events that grew older than max_age_s
        while none came in (appends drop them too); the publisher calls it every second."""
        with self._lock:
            self._follow_clock()
            self._write_acks()
            self._store_held()
            self._expire()

    @property
    def depth(self) -> int:
        """Events stored and not yet acknowledged."""
        return max(0, self._depth - len(self._unwritten_acks))

    @property
    def held(self) -> int:
        """Events waiting in memory because the spool cannot be written."""
        return len(self._held)

    @property
    def held_dropped(self) -> int:
        """Events lost since this start because the memory queue overflowed while the spool was unwritable."""
        return self._held_dropped

    @property
    def dropped(self) -> int:
        """Events dropped by the max_events / max_age_s bound since the file was created."""
        return self._dropped

    @property
    def last_seq(self) -> int:
        """The seq handed out last (0 before the first event)."""
        return self._last_seq

    @property
    def epoch(self) -> str:
        """The counter's epoch (12 hex digits), stored in every event beside its seq."""
        return self._epoch

    def close(self) -> None:
        with self._lock:
            self._write_acks()
            self._store_held()
            if self._held:
                logger.error(
                    "%d events kept in memory are lost: spool %s still cannot be written (%s)",
                    len(self._held),
                    self.path,
                    self._fault,
                )
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening ---------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """The spool's database, made or checked. A corrupt file (a power cut at the wrong moment, a failing
        SD card) is moved aside and a new spool started: a service that stayed down until someone moved it
        by hand would lose every event from then on; the file is kept for `sqlite3 FILE .recover`."""
        try:
            return self._connect()
        except _Corrupt as exc:
            aside = self.path.parent / f"broken-spool-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            try:
                aside.mkdir(exist_ok=True)
                for part in self._files():
                    part.rename(aside / part.name)
            except OSError as move_failed:
                raise SpoolError(
                    f"spool {self.path} is corrupt ({exc.reason}) and cannot be moved aside ({move_failed.strerror}); "
                    f"move it and its -wal/-shm files out of {self.path.parent} and start again"
                ) from None
            logger.error(
                "spool %s is corrupt (%s); moved it to %s, where its unsent events stay (`sqlite3 %s .recover` "
                "may retrieve them), and started a new spool",
                self.path,
                exc.reason,
                aside,
                aside / self.path.name,
            )
            self._forget_old_broken_spools(aside)
            return self._connect()  # corrupt again, afresh: _Corrupt's own line says the disk may be failing

    def _forget_old_broken_spools(self, kept: Path) -> None:
        """Keep `kept` (just moved aside) and the newest others up to KEEP_BROKEN moved-aside spools: a card
        that corrupts the spool at every power cut would otherwise fill up with them, one up to a full spool's
        size each. Newest by name, the time of moving aside: `kept` counts as newest even where a Pi's clock,
        not yet set at boot, named it earlier."""
        others = sorted(p for p in self.path.parent.glob("broken-spool-*") if p.is_dir() and p != kept)
        for old in others[: max(0, len(others) - (KEEP_BROKEN - 1))]:
            shutil.rmtree(old, ignore_errors=True)
            if not old.exists():
                logger.warning("deleted %s: only the newest %d moved-aside spools are kept", old, KEEP_BROKEN)

    def _files(self) -> list[Path]:
        """The spool file and the WAL and shared-memory files SQLite keeps beside it (not the seq mark)."""
        return [part for part in (self.path, *_sqlite_companions(self.path)) if part.exists()]

    def _connect(self) -> sqlite3.Connection:
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
            # The write-ahead log shrinks back to this after a checkpoint instead of keeping its largest size
            # (which, after a full disk, took the space freed).
            db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
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
            return _transient_if_it_may_clear(
                SpoolError(
                    f"spool {self.path} cannot be opened for writing ({text}); make its folder "
                    f"writable by this user and check free space, or set [spool] dir"
                ),
                exc,
            )
        if isinstance(exc, sqlite3.OperationalError):  # not the file's fault: locked, or no WAL on this file system
            return SpoolError(
                f"spool {self.path} cannot be used ({text}); check that no other edge-mood uses it and that "
                f"its folder is on a local disk, or set [spool] dir"
            )
        return _Corrupt(
            f"spool {self.path} is corrupt ({text}) although it was just made afresh; the disk under "
            f"{self.path.parent} may be failing: check it (or set [spool] dir to another) and start again",
            text,
        )

    def _continue_counter(self) -> tuple[str, int, bool]:
        """(epoch, reserved, whether the spool already stores that epoch), from the mark and the spool.

        The spool continues the mark's counter when it stores the mark's epoch. A spool without it (a new
        one after the old was moved aside, or one from before marks existed) continues above every seq the
        mark may have handed out. Without a mark the spool's own epoch and last seq go on, or a new epoch
        starts. Nothing is written here: the first append saves the choice.
        """
        mark = read_mark(self.mark_path)
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (EPOCH_KEY,)).fetchone()
        stored = f"{int(row[0]):012x}" if row else None
        if mark is not None and mark.epoch == stored:
            return mark.epoch, max(mark.reserved, self._last_seq), True
        if mark is not None:
            if self._last_seq < mark.reserved:
                logger.info(
                    "spool %s is new: seq goes on after %d (epoch %s, from %s)",
                    self.path,
                    mark.reserved,
                    mark.epoch,
                    self.mark_path,
                )
            self._last_seq = max(self._last_seq, mark.reserved)
            return mark.epoch, self._last_seq, False
        if stored is not None:
            return stored, self._last_seq, True
        epoch = new_epoch()
        if self._last_seq:
            logger.info("spool %s: seq goes on after %d under the new epoch %s", self.path, self._last_seq, epoch)
        return epoch, self._last_seq, False

    # -- writing ---------------------------------------------------------------------------------

    def _store_held(self) -> list[int]:
        """Write the held events, oldest first, STORE_CHUNK to a transaction, until all are written or a write
        fails (the rest stay held): space freed on a full disk takes as many as fit, not all or none."""
        stored: list[int] = []
        while self._held:
            chunk = list(itertools.islice(self._held, STORE_CHUNK))
            try:
                seqs, gone = self._write(self._insert_all, chunk)
            except (sqlite3.Error, OSError) as exc:
                self._failed(exc)
                break
            for _ in chunk:
                self._held.popleft()
            self._last_seq = seqs[-1]
            self._depth += len(seqs) - gone
            self._dropped += gone
            self._epoch_saved = True
            stored += seqs
        if stored:
            self._recovered()
        return stored

    def _follow_clock(self) -> None:
        """Keep event ages true across a step of the wall clock. NTP steps it at boot on a Pi without a
        real-time clock, which starts at the time it shut down, days behind: events stored since would look
        days old to the age bound and be dropped minutes after they were made. Events of an earlier run kept
        their clock's times and are left alone."""
        offset = time.time() - _since_boot()
        step = offset - self._clock_offset
        if abs(step) < CLOCK_STEP_S:
            self._clock_offset = offset  # drift and slewing, followed as they come
            return
        if self._depth:
            shift = "UPDATE events SET created = created + ? WHERE seq > ?"
            try:
                self._write(lambda: self._db.execute(shift, (step, self._seq_at_open)))
            except sqlite3.Error as exc:
                self._failed(exc)
                return  # the step is still seen next time
            self._recovered()
        self._held = deque((created + step, event) for created, event in self._held)
        self._clock_offset = offset
        logger.info("spool %s: the wall clock was stepped by %+.0f s; the events' times follow it", self.path, step)

    def _expire(self) -> None:
        if not self._depth:
            return
        now = time.time()
        too_old = "SELECT 1 FROM events WHERE created < ? LIMIT 1"
        try:
            if self._db.execute(too_old, (now - self.max_age_s,)).fetchone() is None:
                return  # a read only: no write transaction each second
            gone = self._write(self._drop_beyond_bounds, now, self._depth)
        except sqlite3.Error as exc:
            self._failed(exc)
            return
        self._depth -= gone
        self._dropped += gone
        self._recovered()

    def _recovered(self) -> None:
        """After a write that worked: the fault is over once nothing waits in memory any more."""
        if self._fault is not None and not self._held:
            logger.info("spool %s can be written again; nothing waits in memory any more", self.path)
            self._fault, self._overflow_warned = None, False

    def _write_acks(self) -> None:
        if not self._unwritten_acks:
            return
        try:
            # Without an fsync of its own: an ack a power cut rolls back only sends its event again, which
            # consumers drop by seq, and the next append's fsync makes it durable with the WAL before it. Live,
            # one ack per event, this halves the fsyncs an event costs the SD card.
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                removed = self._write(self._delete, sorted(self._unwritten_acks))
            finally:
                self._appends_synced()
        except sqlite3.Error as exc:
            self._failed(exc)
            return
        self._unwritten_acks.clear()
        self._depth -= removed
        self._recovered()
        if self._depth == 0:
            self._shrink()

    def _appends_synced(self) -> None:
        """Back to FULL for the appends, also after a failed ack whose rollback failed too (the pragma cannot
        change inside a transaction); without raising, so that the ack's own error is the one reported."""
        with contextlib.suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._db.execute("PRAGMA synchronous=FULL")

    def _shrink(self) -> None:
        """Give back the space of a backlog once it is sent. With nothing left to copy, VACUUM writes a few
        pages only."""
        try:
            if self._db.execute("PRAGMA freelist_count").fetchone()[0] > VACUUM_FREE_PAGES:
                self._db.execute("VACUUM")
                # PASSIVE: a reader (edge check) holding a snapshot must not make appends wait for it; the
                # automatic checkpoints finish the job.
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # no room for VACUUM's copy: the space is given back another time
            logger.debug("spool %s not shrunk: %s", self.path, exc)

    def _write(self, work: Callable[..., Any], *args: Any) -> Any:
        """Run `work` in one write transaction. In-memory counters change only after it committed."""
        # IMMEDIATE takes the write lock up front, so the seq read and its update cannot interleave
        # with another writer (e.g. a second process opened on the same file by mistake).
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work(*args)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite rolls back by itself on some failures (disk full)
                self._db.execute("ROLLBACK")
            raise
        return result

    def _insert_all(self, held: list[tuple[float, dict[str, Any]]]) -> tuple[list[int], int]:
        # The stored last seq, unless the mark moved it on at open (not saved until this first write).
        seq = max(self._meta("last_seq"), self._last_seq)
        seqs = []
        for created, event in held:
            seq += 1
            self._reserve(seq)
            payload = json.dumps(_stamped(event, seq, self._epoch), separators=(",", ":"), allow_nan=False)
            self._db.execute(
                "INSERT INTO events (seq, created, payload) VALUES (?, ?, ?)", (seq, created, payload.encode())
            )
            seqs.append(seq)
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (seq,))
        if not self._epoch_saved:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (EPOCH_KEY, int(self._epoch, 16))
            )
        return seqs, self._drop_beyond_bounds(time.time(), self._depth + len(seqs))

    def _reserve(self, seq: int) -> None:
        """Move the mark past `seq` before `seq` is handed out (once per RESERVE_BLOCK seqs)."""
        if seq > self._reserved:
            reserved = seq + RESERVE_BLOCK - 1
            write_mark(self.mark_path, SeqMark(self._epoch, reserved))
            self._reserved = reserved

    def _delete(self, seqs: list[int]) -> int:
        before = self._db.total_changes
        self._db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs])
        return self._db.total_changes - before

    def _drop_beyond_bounds(self, now: float, depth: int) -> int:
        """Delete events older than max_age_s and the oldest beyond max_events; returns how many."""
        gone = self._db.execute("DELETE FROM events WHERE created < ?", (now - self.max_age_s,)).rowcount
        excess = depth - gone - self.max_events
        if excess > 0:
            gone += self._db.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (excess,)
            ).rowcount
        if gone:
            self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (gone,))
        return gone

    # -- faults ----------------------------------------------------------------------------------

    def _failed(self, exc: sqlite3.Error | OSError) -> None:
        """One line when the spool stops being writable; the events wait in memory meanwhile."""
        why = _cause(exc)
        if self._fault is None:
            logger.error(
                "spool %s cannot be written (%s); keeping new events in memory (at most %d, stats: "
                "spool_memory) and retrying; free space or fix the folder",
                self.path,
                why,
                self.memory_events,
            )
        self._fault = why

    def _bound_held(self) -> None:
        while len(self._held) > self.memory_events:
            self._held.popleft()
            self._held_dropped += 1
            if not self._overflow_warned:
                logger.warning(
                    "memory queue full (%d events) while spool %s cannot be written: dropping the oldest "
                    "(stats: spool_memory_dropped)",
                    self.memory_events,
                    self.path,
                )
                self._overflow_warned = True

    @contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        """Turns a SQLite failure during use (disk full, file removed, I/O error) into a one-line SpoolError."""
        try:
            yield
        except sqlite3.Error as exc:
            raise _transient_if_it_may_clear(
                SpoolError(
                    f"cannot {doing} spool {self.path} ({exc}); check free space and that the file "
                    f"is writable; move it aside if it is corrupt"
                ),
                exc,
            ) from None

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])


def _sqlite_companions(path: Path) -> tuple[Path, Path]:
    """The write-ahead log and shared-memory files SQLite keeps beside a database in WAL mode."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _since_boot() -> float:
    """Seconds since boot, suspended time included (unlike time.monotonic, which would read a suspend as a step
    of the wall clock); the monotonic clock where the system has no such clock."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


def peek(path: Path) -> tuple[int, int]:
    """(events waiting, last seq) of a spool file, read without making a file beside it: as another user (root
    in `edge check`) a -wal or -shm file of ours would lock the daemon out of its own spool. A running daemon
    keeps both: they are read (read-only). Without them nobody writes, and SQLite's immutable mode reads the
    file alone."""
    in_use = all(part.exists() for part in _sqlite_companions(path))
    uri = f"{path.resolve().as_uri()}?{'mode=ro' if in_use else 'immutable=1'}"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            depth = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
    except sqlite3.Error as exc:
        row, cause = None, str(exc)
    else:
        cause = "no seq counter"
    if row is None:
        raise SpoolError(f"spool {path} cannot be read ({cause}); the daemon moves a broken spool aside at start")
    return int(depth), int(row[0])


def _cause(exc: sqlite3.Error | OSError) -> str:
    """ "disk full" for every way a full file system shows up; else the error's own text."""
    if isinstance(exc, OSError):
        return "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    text = str(exc)
    return "disk full" if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "full" in text else text


def _transient_if_it_may_clear(error: SpoolError, exc: sqlite3.Error) -> SpoolError:
    """A full disk or an I/O error may clear by itself: let the service restart for those."""
    text = str(exc)
    if "full" in text or "disk I/O" in text:
        error.exit_status = EXIT_MAY_CLEAR
    return error


def _stamped(event: dict[str, Any], seq: int, epoch: str) -> dict[str, Any]:
    """A copy of `event` with "seq" and "epoch" right after "device" (or first), so payloads read naturally."""
    out: dict[str, Any] = {}
    if "device" not in event:
        out.update(seq=seq, epoch=epoch)
    for key, value in event.items():
        if key in ("seq", "epoch"):
            continue
        out[key] = value
        if key == "device":
            out.update(seq=seq, epoch=epoch)
    return out
