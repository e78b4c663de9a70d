"""A full disk under the spool: a real tmpfs of a few hundred KiB, filled mid-run and freed again.

Mounting needs root (CI runs as root); elsewhere these tests skip and say so. The daemon must say "disk
full" in one line, keep running, hold new events in a bounded memory queue (counted in stats) and store
them once there is room, losing nothing that fits the bound. And the service must come back by itself from
a fault that can clear.
"""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.errors import EXIT_EVENTS_UNSENT, EXIT_MAY_CLEAR
from edge.spool import Spool, SpoolError
from tests.disk_support import FILLER, fill, free
from tests.disk_support import tiny_disk as mounted
from tests.scenes import SHARED, Segment, write_images
from tests.test_daemon_e2e import BRIGHT, write_config
from tests.test_systemd_unit import UNIT, parse_unit


class Disk:
    """A tmpfs mounted at `path`; `fill()` takes every free byte, `free()` gives them back."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / FILLER

    def fill(self) -> None:
        fill(self.path)

    def free(self) -> None:
        free(self.path)


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Disk]:
    with mounted(tmp_path / "tiny-disk", size="512k") as path:
        yield Disk(path)


def event(i: int) -> dict:
    # About a kilobyte, like a real event with seven scores: the disk fills after a few hundred.
    return {"schema": 1, "device": "cam1", "type": "expression", "n": i, "pad": "x" * 900}


def disk_full_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "disk full" in r.getMessage()]


def test_a_full_disk_holds_events_in_memory_and_stores_them_in_order_once_freed(tiny_disk, caplog):
    caplog.set_level(logging.INFO, logger="edge")
    with Spool(tiny_disk.path / "spool.sqlite3") as spool:
        assert [spool.append(event(i)) for i in range(3)] == [1, 2, 3]
        tiny_disk.fill()
        held = [spool.append(event(i)) for i in range(3, 40)]  # enough to need room the disk no longer has
        stored_before_full = [s for s in held if s is not None]
        assert held[-1] is None and spool.held > 0
        assert len(disk_full_lines(caplog)) == 1
        assert "spool_memory" in disk_full_lines(caplog)[0]
        spool.ack_many([1])  # an ack that cannot be written is kept, not lost and not raised
        spool.retry()
        assert len(disk_full_lines(caplog)) == 1  # once per episode, not once per try
        tiny_disk.free()
        spool.retry()
        assert spool.held == 0
        assert "can be written again" in caplog.text
        rows = spool.pending(1000)
        assert [seq for seq, _ in rows] == list(range(2, 41))  # 1 acked; nothing lost, nothing reordered
        assert [int(p.split(b'"n":')[1].split(b",")[0]) for _, p in rows] == list(range(1, 40))
        assert stored_before_full == list(range(4, 4 + len(stored_before_full)))


def test_room_for_part_of_the_held_events_stores_that_part_oldest_first(tiny_disk):
    # After a full disk, freed space took none of the held events until all of them fitted at once: a
    # restart in that window lost every one of them.
    with Spool(tiny_disk.path / "spool.sqlite3", memory_events=2000) as spool:
        spool.append(event(0))
        tiny_disk.fill()
        for i in range(1, 700):  # 700 KiB of events: more than the whole 512 KiB disk holds
            spool.append(event(i))
        assert spool.held == 699 and spool.depth == 1
        tiny_disk.free()
        spool.retry()
        assert 1 < spool.depth and spool.held > 0 and spool.depth + spool.held == 700
        stored = [int(p.split(b'"n":')[1].split(b",")[0]) for _, p in spool.pending(1000)]
        assert stored == list(range(len(stored)))  # the oldest first, in order


def test_after_an_ack_that_could_not_be_written_old_events_still_expire(tiny_disk):
    # A fault with nothing held in memory (only an ack failed) must end with the next write that works;
    # it kept the age bound off until a new event came.
    with Spool(tiny_disk.path / "spool.sqlite3", max_age_s=0.5) as spool:
        spool.append(event(0))
        spool.append(event(1))
        tiny_disk.fill()
        spool.ack_many([1])
        tiny_disk.free()
        time.sleep(0.6)
        spool.retry()
        assert spool.depth == 0 and spool.dropped == 1


def test_the_memory_queue_is_bounded_and_counts_what_it_drops(tiny_disk, caplog):
    with Spool(tiny_disk.path / "spool.sqlite3", memory_events=5) as spool:
        spool.append(event(0))
        tiny_disk.fill()
        for i in range(1, 60):
            spool.append(event(i))
        assert spool.held == 5 and spool.held_dropped > 0
        overflow = [r for r in caplog.records if "memory queue full" in r.getMessage()]
        assert len(overflow) == 1 and "spool_memory_dropped" in overflow[0].getMessage()
        tiny_disk.free()
        spool.retry()
        kept = [int(p.split(b'"n":')[1].split(b",")[0]) for _, p in spool.pending(1000)]
        assert kept[-5:] == list(range(55, 60))  # the newest five survived, in order
        assert spool.held == 0


def test_a_spool_that_cannot_open_for_a_full_disk_may_be_restarted(tiny_disk):
    tiny_disk.fill()
    with pytest.raises(SpoolError) as caught:
        Spool(tiny_disk.path / "spool.sqlite3")
    assert "full" in str(caught.value)
    assert caught.value.exit_status != 2  # the unit does not restart status 2


def test_the_unit_restarts_every_fault_that_may_clear_and_never_gives_up():
    unit = parse_unit(UNIT.read_text())
    # Status 2 is kept for faults found before the loop that a restart cannot fix (config, model).
    assert unit["RestartPreventExitStatus"][-1] == "2"
    assert EXIT_MAY_CLEAR != 2 and unit["Restart"][-1] == "on-failure"
    # A start limit turns a fault that lasts a few minutes (disk full, broker host down at boot) into a
    # service that stays down for good; 0 turns the limit off, RestartSec spaces the tries.
    assert unit["StartLimitIntervalSec"][-1] == "0"
    assert int(unit["RestartSec"][-1].rstrip("s")) >= 5


# -- the daemon ------------------------------------------------------------------------------------------

VISITS = 6
SCRIPT = [Segment(8, None)] + [Segment(12, BRIGHT), Segment(12, None)] * VISITS


def start_once_run(tmp_path: Path, broker, spool_dir: Path, script: list[Segment]) -> subprocess.Popen:
    """`edge run --once` on frames of `script` played like a camera, its spool in `spool_dir`."""
    folder = tmp_path / "frames"
    write_images(folder, script)
    config = write_config(
        tmp_path,
        broker,
        folder,
        source={"realtime": True, "fps": 10.0},
        spool={"dir": str(spool_dir)},
        tracking={"leave_after_s": 0.3},
    )
    return subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--once", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared (real photos and the YuNet model)")
def test_the_daemon_survives_a_full_disk_mid_run_and_loses_no_event(tiny_disk, tmp_path, broker, subscriber):
    sub = subscriber(broker, "edge-mood/room1/#")
    daemon = start_once_run(tmp_path, broker, tiny_disk.path, SCRIPT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(daemon.stdout), daemon=True)
    reader.start()
    try:
        sub.wait_for(1, topic="edge-mood/room1/events", timeout=60)
        tiny_disk.fill()
        deadline = time.monotonic() + 30
        while not any("disk full" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("disk full" in line for line in lines), "".join(lines[-20:])
        sub.wait_until(lambda ms: any(m.json().get("spool_memory", 0) > 0 for m in ms), topic="edge-mood/room1/stats")
        time.sleep(2)  # events go on arriving in memory meanwhile
    finally:
        tiny_disk.free()
    daemon.wait(timeout=120)
    reader.join(10)
    output = "".join(lines)
    assert daemon.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    assert len([line for line in lines if "disk full" in line]) == 1
    events = [m.json() for m in sub.wait_for(3 * VISITS, topic="edge-mood/room1/events")]
    first_seen = {e["seq"]: e for e in events}
    ordered = [first_seen[s] for s in sorted(first_seen)]
    assert [e["type"] for e in ordered] == ["face_enter", "expression", "face_leave"] * VISITS
    assert [e["seq"] for e in ordered] == list(range(1, 3 * VISITS + 1))


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared (real photos and the YuNet model)")
def test_a_once_run_whose_disk_stays_full_says_what_is_lost_and_exits_3(tiny_disk, tmp_path, broker, subscriber):
    sub = subscriber(broker, "edge-mood/room1/events")
    daemon = start_once_run(tmp_path, broker, tiny_disk.path, SCRIPT[:5])
    sub.wait_for(1, timeout=60)
    tiny_disk.fill()  # and never freed: what comes after waits in memory and is lost at the end
    output, _ = daemon.communicate(timeout=120)
    assert daemon.returncode == EXIT_EVENTS_UNSENT, output[-3000:]
    assert "events kept in memory are lost" in output and "Traceback" not in output


def test_a_tool_output_that_does_not_fit_names_its_file_and_leaves_no_part_behind(tiny_disk):
    from quantize.outputs import write_atomically  # the quantize tool's; its command line prints the name

    tiny_disk.fill()
    target = tiny_disk.path / "mood.onnx"
    with pytest.raises(OSError) as caught:
        write_atomically(target, lambda f: f.write(b"\0" * 65536))
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
    assert list(tiny_disk.path.iterdir()) == [tiny_disk.filler], "no temporary file left"
