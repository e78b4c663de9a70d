"""The SQLite event spool: seq assignment, acks, bounds, durability across SIGKILL, faults."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import edge.spool as spool_module
from edge.spool import Spool, SpoolError


def event(i: int) -> dict:
    return {"schema": 1, "device": "cam1", "type": "expression", "n": i}


def seqs(spool: Spool, limit: int = 10_000) -> list[int]:
    return [seq for seq, _ in spool.pending(limit)]


def test_append_assigns_increasing_seq_stored_in_the_payload(tmp_path):
    with Spool(tmp_path / "spool.sqlite3") as spool:
        assert [spool.append(event(i)) for i in range(5)] == [1, 2, 3, 4, 5]
        rows = spool.pending(10)
        assert [seq for seq, _ in rows] == [1, 2, 3, 4, 5]
        bodies = [json.loads(payload) for _, payload in rows]
        assert [b["seq"] for b in bodies] == [1, 2, 3, 4, 5]
        assert [b["n"] for b in bodies] == [0, 1, 2, 3, 4]
        assert list(bodies[0])[:3] == ["schema", "device", "seq"]  # seq right after device
        assert spool.depth == 5 and spool.last_seq == 5


def test_ack_removes_only_that_event_and_unknown_acks_are_harmless(tmp_path):
    with Spool(tmp_path / "spool.sqlite3") as spool:
        for i in range(4):
            spool.append(event(i))
        spool.ack_many([2])
        spool.ack_many([2])
        spool.ack_many([99])
        assert seqs(spool) == [1, 3, 4] and spool.depth == 3
        spool.ack_many([1, 4])
        assert seqs(spool) == [3] and spool.depth == 1


def test_pending_pages_by_seq(tmp_path):
    with Spool(tmp_path / "spool.sqlite3") as spool:
        for i in range(7):
            spool.append(event(i))
        assert [s for s, _ in spool.pending(3)] == [1, 2, 3]
        assert [s for s, _ in spool.pending(3, after=3)] == [4, 5, 6]
        assert [s for s, _ in spool.pending(3, after=6)] == [7]


def test_seq_continues_after_reopen_even_when_the_spool_was_emptied(tmp_path):
    path = tmp_path / "spool.sqlite3"
    with Spool(path) as spool:
        for i in range(3):
            spool.append(event(i))
        spool.ack_many([1, 2, 3])
        assert spool.depth == 0
    with Spool(path) as spool:
        assert spool.last_seq == 3
        assert spool.append(event(3)) == 4


def test_unsent_events_survive_reopen(tmp_path):
    path = tmp_path / "spool.sqlite3"
    with Spool(path) as spool:
        for i in range(3):
            spool.append(event(i))
        spool.ack_many([1])
    with Spool(path) as spool:
        assert seqs(spool) == [2, 3] and spool.depth == 2


def test_max_events_drops_the_oldest_and_counts_them_persistently(tmp_path):
    path = tmp_path / "spool.sqlite3"
    with Spool(path, max_events=3) as spool:
        for i in range(8):
            spool.append(event(i))
        assert seqs(spool) == [6, 7, 8]
        assert spool.dropped == 5 and spool.depth == 3
    with Spool(path, max_events=3) as spool:
        assert spool.dropped == 5
        assert spool.append(event(8)) == 9  # a dropped seq is never handed out again
        assert seqs(spool) == [7, 8, 9] and spool.dropped == 6


def test_max_age_drops_events_older_than_the_bound(tmp_path):
    with Spool(tmp_path / "spool.sqlite3", max_age_s=0.3) as spool:
        spool.append(event(0))
        spool.append(event(1))
        time.sleep(0.5)  # not a timing assertion: just makes the first two older than the bound
        spool.append(event(2))
        assert seqs(spool) == [3]
        assert spool.dropped == 2


def test_a_smaller_bound_applies_when_the_spool_is_opened(tmp_path, caplog):
    path = tmp_path / "spool.sqlite3"
    with Spool(path) as spool:
        for i in range(10):
            spool.append(event(i))
    with Spool(path, max_events=4) as spool:
        assert seqs(spool) == [7, 8, 9, 10] and spool.dropped == 6
    assert "dropped 6 events" in caplog.text


def test_an_event_that_is_not_json_is_refused_without_using_a_seq(tmp_path):
    with Spool(tmp_path / "spool.sqlite3") as spool:
        spool.append(event(0))
        with pytest.raises(TypeError):
            spool.append({"device": "cam1", "bad": object()})
        with pytest.raises(ValueError):
            spool.append({"device": "cam1", "confidence": float("nan")})
        assert spool.depth == 1 and spool.last_seq == 1
        assert spool.append(event(1)) == 2


def test_appends_and_acks_from_different_threads(tmp_path):
    """The pipeline thread appends while the publisher's thread acks, as in the daemon."""
    spool = Spool(tmp_path / "spool.sqlite3")
    total = 300
    appended: list[int] = []
    acked: list[int] = []

    def producer() -> None:
        for i in range(total):
            appended.append(spool.append(event(i)))

    def consumer() -> None:
        after = 0
        while len(acked) < total:
            rows = spool.pending(20, after=after)
            if rows:
                after = rows[-1][0]
                spool.ack_many(seq for seq, _ in rows)
                acked.extend(seq for seq, _ in rows)

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert appended == list(range(1, total + 1))
    assert acked == appended
    assert spool.depth == 0
    spool.close()


KILLED_WRITER = """
import sys, time
from pathlib import Path
from edge.spool import Spool
spool = Spool(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    spool.append({"device": "cam1", "n": i})
print("appended", flush=True)
time.sleep(60)
"""


def test_events_appended_before_a_sigkill_are_all_there(tmp_path):
    path = tmp_path / "spool.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), "40"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "appended"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with Spool(path) as spool:
        assert seqs(spool) == list(range(1, 41))
        assert spool.append(event(40)) == 41


def test_a_corrupt_file_is_moved_aside_and_a_new_spool_goes_on_after_the_old_seqs(tmp_path, caplog):
    path = tmp_path / "spool.sqlite3"
    with Spool(path) as spool:
        assert [spool.append(event(i)) for i in range(3)] == [1, 2, 3]
    path.write_bytes(b"this is not a database" * 500)  # a power cut at the wrong moment, a failing card
    with caplog.at_level(logging.ERROR, logger="edge.spool"), Spool(path) as spool:
        assert spool.depth == 0 and spool.append(event(3)) > 3, "seq must not be handed out again"
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    (aside,) = tmp_path.glob("broken-spool-*")
    assert str(path) in line and str(aside) in line and ".recover" in line
    assert (aside / "spool.sqlite3").read_bytes().startswith(b"this is not a database"), "kept for recovery"
    assert (tmp_path / "spool.seq").exists(), "the seq mark stays beside the new spool"


def test_only_the_newest_three_corrupt_spools_are_kept(tmp_path, caplog):
    """A card that corrupts the spool at every power cut must not fill up with moved-aside spools."""
    path = tmp_path / "spool.sqlite3"
    for day in range(1, 5):  # earlier ones, oldest first by their names' times
        (tmp_path / f"broken-spool-2026110{day}T000000Z").mkdir()
    (tmp_path / "broken-spool-20991231T000000Z").write_text("a file of the user's, not a moved-aside spool")
    path.write_bytes(b"this is not a database" * 500)
    with caplog.at_level(logging.WARNING, logger="edge.spool"), Spool(path):
        pass
    kept = sorted(p.name for p in tmp_path.glob("broken-spool-*") if p.is_dir())
    assert len(kept) == 3 and kept[:2] == ["broken-spool-20261103T000000Z", "broken-spool-20261104T000000Z"]
    assert (tmp_path / kept[2] / "spool.sqlite3").exists(), "the newest, just moved aside, is kept"
    deleted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("deleted")]
    assert len(deleted) == 2 and "20261101" in deleted[0]
    assert (tmp_path / "broken-spool-20991231T000000Z").is_file()


def test_a_corrupt_spool_moved_aside_before_the_clock_is_set_is_kept(tmp_path, monkeypatch):
    """At boot a Pi without a real-time clock may name the folder it moves a spool into earlier than the
    folders of spools moved aside before: the one just moved aside is kept all the same."""
    path = tmp_path / "spool.sqlite3"
    for day in range(1, 4):
        (tmp_path / f"broken-spool-2026110{day}T000000Z").mkdir()
    path.write_bytes(b"this is not a database" * 500)
    monkeypatch.setattr(spool_module.time, "gmtime", lambda *_: time.struct_time((2026, 1, 1, 0, 0, 0, 3, 1, 0)))
    with Spool(path):
        pass
    assert (tmp_path / "broken-spool-20260101T000000Z" / "spool.sqlite3").exists()
    assert len([p for p in tmp_path.glob("broken-spool-*")]) == 3


def test_a_corrupt_file_that_cannot_be_moved_names_the_path_and_the_fix(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root may rename in a read-only folder")
    folder = tmp_path / "spool"
    folder.mkdir()
    path = folder / "spool.sqlite3"
    path.write_bytes(b"this is not a database" * 500)
    folder.chmod(0o500)
    try:
        with pytest.raises(SpoolError, match=r"is corrupt .* cannot be moved aside .*; move it and its -wal"):
            Spool(path)
    finally:
        folder.chmod(0o700)


def test_a_path_that_cannot_be_a_database_file(tmp_path):
    path = tmp_path / "spool.sqlite3"
    path.mkdir()
    with pytest.raises(SpoolError, match="cannot be opened for writing"):
        Spool(path)


def test_a_file_where_the_folder_should_be(tmp_path):
    (tmp_path / "state").write_text("x")
    with pytest.raises(SpoolError, match="set \\[spool\\] dir"):
        Spool(tmp_path / "state" / "spool.sqlite3")


def test_a_spool_from_a_newer_version_is_not_touched(tmp_path):
    path = tmp_path / "spool.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(SpoolError, match="newer edge-mood"):
        Spool(path)


def test_wal_mode_and_full_sync_are_on(tmp_path):
    path = tmp_path / "spool.sqlite3"
    with Spool(path) as spool:
        spool.append(event(0))
        assert spool._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_events_older_than_max_age_are_dropped_also_when_no_new_event_comes(tmp_path):
    # An outage in an empty room: nothing is appended, yet week-old events must not be sent when the broker
    # is back (retry() is what the publisher calls every second).
    spool = Spool(tmp_path / "spool.sqlite3", max_age_s=0.5)
    try:
        for n in range(3):
            spool.append({"n": n})
        spool.retry()
        assert spool.depth == 3
        time.sleep(0.6)
        spool.retry()
        assert spool.depth == 0 and spool.dropped == 3 and spool.pending(10) == []
    finally:
        spool.close()


class SteppedClock:
    """The clocks as the spool sees them: the wall clock `step` seconds off the real one (stepping the machine's
    own would need root and disturb everything else on it), and both clocks `elapsed` seconds on."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.elapsed = 0.0

    def __getattr__(self, name: str):
        return getattr(time, name)

    def time(self) -> float:
        return time.time() + self.step + self.elapsed

    def monotonic(self) -> float:
        return time.monotonic() + self.elapsed

    def clock_gettime(self, clock: int) -> float:
        return time.clock_gettime(clock) + self.elapsed


def test_a_clock_stepped_forward_after_boot_does_not_age_the_events_stored_before(tmp_path, monkeypatch):
    # A Pi without a real-time clock, off for 8 days, boots 8 days behind; the broker is not reachable yet.
    clock = SteppedClock(-8 * 86400)
    monkeypatch.setattr(spool_module, "time", clock)
    spool = Spool(tmp_path / "spool.sqlite3", max_age_s=7 * 86400)
    try:
        for n in range(5):
            spool.append({"n": n})
        clock.step = 0.0  # NTP steps the clock 8 days forward
        spool.append({"n": 5})
        spool.retry()
        assert spool.depth == 6 and spool.dropped == 0
        clock.elapsed = 8 * 86400  # a week and a day later all of them are old, and go
        spool.retry()
        assert spool.depth == 0 and spool.dropped == 6
    finally:
        spool.close()


def test_a_clock_step_leaves_the_times_of_an_earlier_runs_events_alone(tmp_path, monkeypatch):
    # The earlier run's events carry that run's (true) times: shifted with this run's step they would move
    # into the future and outlive the age bound.
    day = 86400
    clock = SteppedClock(-6 * day)  # the earlier run, six days ago
    monkeypatch.setattr(spool_module, "time", clock)
    with Spool(tmp_path / "spool.sqlite3", max_age_s=7 * day) as spool:
        spool.append({"run": "earlier"})
    clock.step = -8 * day  # this boot, days behind until NTP
    spool = Spool(tmp_path / "spool.sqlite3", max_age_s=7 * day)
    try:
        spool.append({"run": "this"})
        clock.step = 0.0
        spool.retry()
        assert spool.depth == 2
        clock.elapsed = 1.5 * day  # the earlier event is now 7.5 days old, this one 1.5
        spool.retry()
        assert [json.loads(p)["run"] for _, p in spool.pending(10)] == ["this"]
    finally:
        spool.close()


LIVE_EVENTS = """
import sys
from edge.spool import Spool
spool = Spool(sys.argv[1])
for i in range(int(sys.argv[2])):  # as live: each event appended, published and acknowledged on its own
    seq = spool.append({"type": "face_enter", "i": i})
    spool.ack_many([seq])
spool.close()
"""


def _syncs(tmp_path, events: int) -> int:
    """fsync and fdatasync calls of a process that spools `events` events one by one, counted by strace."""
    report = tmp_path / f"strace-{events}.txt"
    spool = tmp_path / f"spool-{events}.sqlite3"
    command = ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(report)]
    done = subprocess.run([*command, sys.executable, "-c", LIVE_EVENTS, str(spool), str(events)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"strace cannot trace here: {done.stderr.decode(errors='replace').strip()[-200:]}")
    rows = [line.split() for line in report.read_text().splitlines()]
    return sum(int(row[3]) for row in rows if row and row[-1] in ("fsync", "fdatasync"))


def test_a_live_event_costs_the_sd_card_one_fsync(tmp_path):
    """The append is synced (a power cut must not roll it back); its ack need not be: one rolled back only
    sends the event again. Two syncs per event would double the writes that wear a Pi's SD card."""
    if not shutil.which("strace"):
        pytest.skip("strace not found (apt install strace)")
    per_event = (_syncs(tmp_path, 60) - _syncs(tmp_path, 0)) / 60
    assert 0.9 <= per_event <= 1.2, f"{per_event:.2f} fsyncs per event"


def test_a_spool_emptied_after_a_long_outage_gives_its_space_back(tmp_path):
    path = tmp_path / "spool.sqlite3"
    with Spool(path) as spool:
        seqs = [spool.append({"type": "face_enter", "padding": "x" * 2000}) for _ in range(3000)]
        grown = path.stat().st_size + path.with_name(path.name + "-wal").stat().st_size
        spool.ack_many(seqs)  # the broker is back and has taken them all
        spool.append({"type": "face_enter"})  # and life goes on
    assert grown > 6_000_000
    assert path.stat().st_size < 200_000, f"{path.stat().st_size} bytes kept of {grown}"
    with Spool(path) as spool:
        assert spool.depth == 1 and spool.append({"type": "face_leave"}) == seqs[-1] + 2


def test_giving_space_back_does_not_wait_for_a_reader(tmp_path):
    """`edge check` may read the spool while the daemon empties it; appends must not wait for that reader
    (the busy timeout is 10 s, far beyond a frame)."""
    path = tmp_path / "spool.sqlite3"
    with Spool(path) as spool:
        seqs = [spool.append({"type": "face_enter", "padding": "x" * 2000}) for _ in range(3000)]
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchone()  # holds its snapshot
        started = time.monotonic()
        spool.ack_many(seqs)
        waited = time.monotonic() - started
        reader.rollback()
        reader.close()
    assert waited < 5.0, f"the acks waited {waited:.1f} s for a reader"
