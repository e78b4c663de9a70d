"""`edge check` against real parts: the shipped model, the sample clip, a real broker, a real spool."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.check import run_check, spool_to_check
from edge.config import load_config
from edge.spool import Spool
from edge.wiring import spool_path
from tests.disk_support import fill, free, tiny_disk

SAMPLE = Path(__file__).resolve().parents[1] / "edge" / "sample" / "astronaut.mp4"


def check(broker, spool_dir: Path, capsys) -> tuple[int, dict[str, str]]:
    overrides = {
        "source.uri": str(SAMPLE),
        "mqtt.host": broker.host,
        "mqtt.port": broker.port,
        "mqtt.protocol": broker.protocol,
        "mqtt.device_id": "cam1",
        "spool.dir": str(spool_dir),
    }
    status = run_check(load_config(None, overrides, environ={}))
    lines = capsys.readouterr().out.splitlines()[1:]
    return status, {line.split()[0]: line for line in lines}


def test_every_part_is_reported_and_a_missing_spool_is_not_made(broker, tmp_path, capsys):
    status, report = check(broker, tmp_path / "state", capsys)
    assert status == 0, report
    assert set(report) == {"config", "model", "detector", "source", "spool", "broker"}
    assert "none yet" in report["spool"]
    assert not (tmp_path / "state").exists()


def test_the_spool_is_read_without_writing_a_byte_beside_it(broker, tmp_path, capsys):
    # As root on a system install the spool's folder belongs to the service: a -wal or -shm file made by
    # the check would be root's, and the daemon could no longer write its own spool.
    spool = Spool(tmp_path / "cam1" / "spool.sqlite3")
    for n in range(3):
        spool.append({"n": n})
    spool.ack_many([1])
    spool.close()
    before = {p.name: p.read_bytes() for p in (tmp_path / "cam1").iterdir()}
    status, report = check(broker, tmp_path, capsys)
    assert status == 0, report
    assert "(2 events waiting, last seq 3)" in report["spool"] and "corrupt" not in report["spool"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "cam1").iterdir()} == before
    (tmp_path / "cam1" / "broken-spool-20261127T101500Z").mkdir()  # what the daemon moved aside at a start
    status, report = check(broker, tmp_path, capsys)
    assert status == 0 and "1 corrupt spool(s) moved aside, newest broken-spool-20261127T101500Z" in report["spool"]


def test_a_spool_in_use_is_read_with_the_events_its_daemon_has_not_checkpointed(broker, tmp_path, capsys):
    spool = Spool(tmp_path / "cam1" / "spool.sqlite3")
    try:
        for n in range(3):
            spool.append({"n": n})
        status, report = check(broker, tmp_path, capsys)
    finally:
        spool.close()
    assert status == 0, report
    assert "(3 events waiting, last seq 3)" in report["spool"]


def test_the_installed_copy_run_by_hand_checks_the_services_spool(tmp_path):
    config = load_config(None, {"mqtt.device_id": "cam1"}, environ={})
    assert spool_to_check(config, "/opt/edge-mood/venv") == Path("/var/lib/edge-mood/cam1/spool.sqlite3")
    assert spool_to_check(config, "/home/pi/edge-mood/.venv") == spool_path(config)  # ~/.local/state
    under_systemd = load_config(None, {"mqtt.device_id": "cam1"}, environ={"STATE_DIRECTORY": str(tmp_path)})
    assert spool_to_check(under_systemd, "/opt/edge-mood/venv") == spool_path(under_systemd)


def test_a_spool_folder_that_cannot_be_made_fails_the_check(broker, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    status, report = check(broker, blocker / "state", capsys)
    assert status == 1
    assert "FAIL" in report["spool"] and "not a folder this user may write in" in report["spool"]


def spool_with_events(folder: Path) -> Path:
    spool = Spool(folder / "cam1" / "spool.sqlite3")
    spool.append({"n": 0})
    spool.close()
    return folder / "cam1" / "spool.sqlite3"


def test_a_spool_on_a_full_disk_fails_the_check_as_it_would_stop_the_daemon(broker, tmp_path, capsys):
    with tiny_disk(tmp_path / "disk") as disk:
        spool_with_events(disk)
        fill(disk)
        try:
            status, report = check(broker, disk, capsys)
        finally:
            free(disk)
        assert status == 1 and "FAIL" in report["spool"], report
        assert "is full (0 bytes free), so the daemon could store no event; free space there" in report["spool"]
        assert check(broker, disk, capsys)[0] == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write and read every spool")
def test_a_spool_this_user_may_not_write_or_read_fails_the_check_naming_why(broker, tmp_path, capsys):
    path = spool_with_events(tmp_path)
    path.chmod(0o444)  # as another user's spool is to this one
    status, report = check(broker, tmp_path, capsys)
    assert status == 1 and "cannot be written by this user, so edge run as this user would stop" in report["spool"]
    path.chmod(0o000)
    status, report = check(broker, tmp_path, capsys)
    assert status == 1 and "cannot be looked at (permission denied)" in report["spool"], report
    assert "broken spool" not in report["spool"]
