"""bench/fleet.py on a small fleet: three daemons on one mosquitto, each with its own login under the shipped
ACL; the bench's own checks (unique client ids, per-device topics and retained state, no cross-talk, a clean
stop of all) must pass. The full fleet of 20 is run by hand (docs/reliability.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scenes import SHARED

FLEET = Path(__file__).resolve().parents[1] / "bench" / "fleet.py"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared (real photos and the YuNet model)")
@pytest.mark.skipif(not shutil.which("mosquitto_passwd"), reason="needs mosquitto (apt install mosquitto)")
def test_three_daemons_share_one_broker_without_cross_talk_and_stop_cleanly():
    done = subprocess.run(
        [sys.executable, str(FLEET), "--daemons", "3", "--seconds", "8"], capture_output=True, text=True, timeout=300
    )
    table = done.stdout
    assert done.returncode == 0, table + done.stderr[-2000:]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()]
    rows = {row[0]: row[1] for row in cells if len(row) == 2}
    assert rows["checks"] == "ok"
    assert rows["client ids"].startswith("3 distinct of 3")
    assert rows["cross-talk messages"] == "0"
    assert rows["retained status offline"].startswith("3 / 3")
    assert rows["clean stop (exit 0)"].startswith("3 / 3")
