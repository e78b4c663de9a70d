"""The daemon speaks systemd's notify protocol when started exactly as edge-mood.service starts it.

The test plays systemd's part: it takes ExecStart= and Environment= from the unit file (only the venv's
`edge` becomes `python -m edge` and the config path a temporary one), sets NOTIFY_SOCKET to an AF_UNIX
datagram socket it reads, WATCHDOG_USEC/WATCHDOG_PID and STATE_DIRECTORY as systemd does, and runs a real
mosquitto. WATCHDOG_USEC is 2 s, as a drop-in `WatchdogSec=2s` would give, so the test need not wait for
the shipped 30 s.

Frames come from an MJPEG-over-HTTP stream of a real photo served by the test: a stand-in for the Pi's
camera that the test can stall (stop sending, connection kept open) and resume, as a wedged camera would.
"""

from __future__ import annotations

import http.server
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import paho.mqtt.publish as publish
import pytest

from tests.tiny_model import write_tiny_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PHOTO = SHARED / "data" / "photos" / "12_angry_men.jpg"
YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"
UNIT = REPO / "systemd" / "edge-mood.service"
UNIT_CONFIG = "/etc/edge-mood/config.toml"

WATCHDOG_S = 2.0
STALL_TIMEOUT_S = 2.0
DEVICE = "notify-test"


def unit_entries(key: str) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]


def unit_environment() -> dict[str, str]:
    """The variables the unit's Environment= lines set."""
    return dict(
        assignment.partition("=")[::2] for entry in unit_entries("Environment") for assignment in shlex.split(entry)
    )


def unit_stop_timeout_s() -> float:
    (value,) = unit_entries("TimeoutStopSec")
    return float(value.rstrip("s"))


class MjpegStream:
    """multipart/x-mixed-replace JPEG stream on 127.0.0.1, 10 frames/s while `flowing` is set; cleared, it
    keeps connections open and sends nothing."""

    def __init__(self, jpeg: bytes, fps: float = 10.0, port: int = 0):
        self.flowing = threading.Event()
        self.flowing.set()
        self._closed = threading.Event()
        stream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg) + jpeg + b"\r\n"
                try:
                    while not stream._closed.is_set():
                        if stream.flowing.wait(0.1):
                            self.wfile.write(part)
                            self.wfile.flush()
                            time.sleep(1 / fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *_args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()


class NotifySocket:
    """The receiving end of $NOTIFY_SOCKET: records every datagram's lines with their arrival time."""

    def __init__(self, path: Path):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages += [(time.monotonic(), line) for line in data.decode().splitlines()]
                self._cond.notify_all()

    def times(self, line: str) -> list[float]:
        with self._cond:
            return [at for at, got in self.messages if got == line]

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"timed out after {timeout} s waiting for {what}; got {[m for _, m in self.messages][-8:]}"
                    )
                self._cond.wait(min(left, 0.2))

    def close(self) -> None:
        self._closed = True
        self._sock.close()


@pytest.fixture
def jpeg() -> bytes:
    if not PHOTO.exists():
        pytest.skip(f"needs the shared photos ({PHOTO} is absent)")
    ok, encoded = cv2.imencode(".jpg", cv2.resize(cv2.imread(str(PHOTO)), (640, 360)))
    assert ok
    return encoded.tobytes()


@pytest.fixture
def stream(jpeg: bytes) -> Iterator[MjpegStream]:
    served = MjpegStream(jpeg)
    yield served
    served.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short path: an AF_UNIX socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn-", dir="/tmp") as folder:
        yield Path(folder)


def write_config(folder: Path, broker, source: str, tracking: str = "") -> Path:
    model = write_tiny_model(folder / "model")
    detector = f'yunet_model = "{YUNET}"' if YUNET.exists() else 'kind = "haar"'
    path = folder / "config.toml"
    path.write_text(f"""
[source]
uri = "{source}"
reconnect_max_s = 1.0
[detector]
{detector}
[model]
path = "{model}"
[mqtt]
host = "{broker.host}"
port = {broker.port}
protocol = "{broker.protocol}"
device_id = "{DEVICE}"
discovery = false
[stats]
interval_s = 3600.0
[service]
stall_timeout_s = {STALL_TIMEOUT_S}
[tracking]
{tracking}
""")
    return path


def start_like_systemd(config: Path, state_dir: Path, notify_socket: Path, log: Path) -> subprocess.Popen:
    """ExecStart= and Environment= from the unit, with the environment systemd gives a Type=notify
    service that has a watchdog."""
    (exec_start,) = unit_entries("ExecStart")
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/edge-mood/venv/bin/edge" and UNIT_CONFIG in argv
    argv = [sys.executable, "-m", "edge", *(str(config) if a == UNIT_CONFIG else a for a in argv[1:])]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_", "EDGE_MOOD_"))}
    env.update(unit_environment())
    env.update(
        NOTIFY_SOCKET=str(notify_socket),
        WATCHDOG_USEC=str(int(WATCHDOG_S * 1e6)),
        STATE_DIRECTORY=str(state_dir),
        INVOCATION_ID="0" * 32,
    )
    # systemd sets WATCHDOG_PID to the service's main PID: the shell's PID is the daemon's after exec.
    wrapped = ["sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", *argv]
    return subprocess.Popen(wrapped, env=env, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT)


@contextmanager
def like_systemd(workdir: Path, config: Path) -> Iterator[tuple[subprocess.Popen, NotifySocket, Path]]:
    """(daemon, its notify socket, its log): the daemon started as systemd starts the unit, its state directory
    and log in `workdir`; killed if it still runs, and the socket closed, when the block ends."""
    state_dir = workdir / "state"
    state_dir.mkdir()
    notify = NotifySocket(workdir / "notify.sock")
    log = workdir / "daemon.log"
    daemon = start_like_systemd(config, state_dir, notify.path, log)
    try:
        yield daemon, notify, log
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        notify.close()


def log_tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-25:])


def assert_every_face_left(events, state) -> None:
    """Every face announced has left, and the retained state shows none: a reader (or Home Assistant after a
    restart) must not take the faces of a camera that is gone for faces in view now."""
    entered = lambda got: {m.json()["track_id"] for m in got if m.json()["type"] == "face_enter"}  # noqa: E731
    left = lambda got: {m.json()["track_id"] for m in got if m.json()["type"] == "face_leave"}  # noqa: E731
    events.wait_until(lambda got: entered(got) <= left(got), 15)
    state.wait_until(lambda got: bool(got) and got[-1].json()["face_count"] == 0, 15)


@pytest.mark.slow
def test_ready_watchdog_stall_recovery_and_clean_stop(broker, subscriber, stream, workdir):
    events = subscriber(broker, f"edge-mood/{DEVICE}/events")
    with like_systemd(workdir, write_config(workdir, broker, stream.url)) as (daemon, notify, log):
        # READY=1 once frames flow (model loading and stream probing come first).
        notify.wait_until("READY=1", lambda: notify.times("READY=1") or daemon.poll() is not None, 90)
        assert daemon.poll() is None, f"daemon exited {daemon.returncode}:\n{log_tail(log)}"

        # WATCHDOG=1 keeps coming while frames flow.
        ready_at = notify.times("READY=1")[0]
        notify.wait_until(
            "3 watchdog pings",
            lambda: len([t for t in notify.times("WATCHDOG=1") if t > ready_at]) >= 3,
            10 * WATCHDOG_S,
        )

        # The camera stalls with faces in view: the pings stop (systemd would restart the service) while the
        # process lives, and the faces leave: nobody watches the room.
        events.wait_until(lambda got: any(m.json()["type"] == "face_enter" for m in got), 30)
        stream.flowing.clear()
        stalled_at = time.monotonic()
        quiet_s = WATCHDOG_S * 1.5  # longer than the ping interval: silence means no ping is due
        notify.wait_until(
            f"the pings to stop for {quiet_s} s",
            lambda: time.monotonic() - max(notify.times("WATCHDOG=1")[-1], stalled_at) >= quiet_s,
            STALL_TIMEOUT_S + quiet_s + 15,
        )
        last_ping = notify.times("WATCHDOG=1")[-1]
        assert last_ping - stalled_at <= STALL_TIMEOUT_S + WATCHDOG_S, "pinged on well after the stall"
        assert daemon.poll() is None, log_tail(log)
        assert "no frame for" in log.read_text()
        assert_every_face_left(events, subscriber(broker, f"edge-mood/{DEVICE}/state"))

        # Frames flow again (the daemon reconnects): the pings come back.
        stream.flowing.set()
        notify.wait_until("the pings to resume", lambda: notify.times("WATCHDOG=1")[-1] > last_ping, 40)

        # SIGTERM, as `systemctl stop` sends: STOPPING=1, retained "offline", exit status 0.
        status = subscriber(broker, f"edge-mood/{DEVICE}/status")
        status.wait_until(lambda got: any(m.text == "online" for m in got))
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(unit_stop_timeout_s())
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"still running {unit_stop_timeout_s()} s after SIGTERM (systemd would SIGKILL):\n{log_tail(log)}"
            )
        assert code == 0, log_tail(log)
        notify.wait_until("STOPPING=1", lambda: bool(notify.times("STOPPING=1")), 5)
        assert any(m.text == "offline" for m in status.received()), "no offline status on shutdown"
        late = subscriber(broker, f"edge-mood/{DEVICE}/status")
        retained = late.wait_for(1)[0]
        assert retained.retain and retained.text == "offline"
        assert (workdir / "state" / DEVICE / "spool.sqlite3").exists(), "spool not kept in $STATE_DIRECTORY"


def test_the_watchdog_stops_a_stalled_daemon_cleanly_without_stack_dumps(broker, subscriber, stream, workdir):
    """A wedged camera is an expected fault: when the pings stop, systemd sends the unit's WatchdogSignal, and the
    daemon stops as for `systemctl stop` (retained "offline", exit 0, one line saying why) before the restart,
    with no stack dump in the journal every time a camera that stays wedged brings the restart round again."""
    (signal_name,) = unit_entries("WatchdogSignal")
    with like_systemd(workdir, write_config(workdir, broker, stream.url)) as (daemon, notify, log):
        notify.wait_until("READY=1", lambda: notify.times("READY=1") or daemon.poll() is not None, 90)
        status = subscriber(broker, f"edge-mood/{DEVICE}/status")
        status.wait_until(lambda got: any(m.text == "online" for m in got))
        stream.flowing.clear()
        notify.wait_until("the stall line", lambda: "no frame for" in log.read_text(), STALL_TIMEOUT_S + 15)
        daemon.send_signal(signal.Signals[signal_name])  # what systemd does once WatchdogSec passes unpinged
        try:
            code = daemon.wait(unit_stop_timeout_s())
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {unit_stop_timeout_s()} s after {signal_name}:\n{log_tail(log)}")
        text = log.read_text()
        assert code == 0, log_tail(log)
        assert f"received {signal_name} after frames stopped; shutting down" in text
        for dump in ("Traceback", "Fatal Python error", "most recent call first"):
            assert dump not in text, log_tail(log)
        status.wait_until(lambda got: got[-1].text == "offline")


def test_a_stop_that_hangs_ends_in_a_stack_dump_not_a_silent_kill():
    """The stacks are still dumped where they help: when a stop does not finish within TimeoutStopSec (a loop
    stuck by a bug, perhaps inside a C library), systemd sends the unit's FinalKillSignal, which the unit's
    environment turns into every thread's stack on stderr (the journal) before the process dies."""
    (signal_name,) = unit_entries("FinalKillSignal")
    env = {**os.environ, **unit_environment()}
    stuck = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; print('stuck', flush=True); time.sleep(60)"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert stuck.stdout is not None and stuck.stdout.readline() == "stuck\n"
    stuck.send_signal(signal.Signals[signal_name])
    _, stderr = stuck.communicate(timeout=30)
    assert "most recent call first" in stderr and 'File "<string>", line 1' in stderr, stderr


@pytest.mark.slow
def test_a_camera_that_sends_only_unusable_frames_is_a_stall_that_says_so(broker, workdir):
    ok, tiny = cv2.imencode(".jpg", cv2.imread(str(PHOTO))[:4, :4]) if PHOTO.exists() else (False, None)
    if not ok:
        pytest.skip(f"needs the shared photos ({PHOTO} is absent)")
    camera = MjpegStream(tiny.tobytes())  # 4x4 pixels: too small to look for a face in
    try:
        with like_systemd(workdir, write_config(workdir, broker, camera.url)) as (daemon, notify, log):
            notify.wait_until("the stall line", lambda: "no usable frame for" in log.read_text(), 60)
            line = next(line for line in log.read_text().splitlines() if "no usable frame for" in line)
            assert "frames come, but unusable: 4x4 pixels only" in line and "watchdog is no longer fed" in line
            assert daemon.poll() is None, log_tail(log)
    finally:
        camera.close()


@pytest.mark.slow
def test_a_camera_glitch_shorter_than_leave_after_s_keeps_the_faces(broker, subscriber, jpeg, workdir):
    port = free_port()
    camera = MjpegStream(jpeg, port=port)
    events = subscriber(broker, f"edge-mood/{DEVICE}/events")
    config = write_config(workdir, broker, camera.url, tracking="leave_after_s = 15.0")
    try:
        with like_systemd(workdir, config) as (daemon, notify, log):
            events.wait_until(lambda got: any(m.json()["type"] == "face_enter" for m in got), 60)
            camera.close()  # the stream drops and comes back on the same address
            notify.wait_until("the loss", lambda: "lost " in log.read_text(), 20)
            camera = MjpegStream(jpeg, port=port)
            notify.wait_until("the reconnect", lambda: "reconnected to" in log.read_text(), 20)
            time.sleep(2.0)  # frames with the faces again
            kinds = [m.json()["type"] for m in events.received()]
            assert "face_leave" not in kinds, f"faces left over a glitch, to come back as new tracks: {kinds}"
    finally:
        camera.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_a_camera_missing_at_start_or_unplugged_is_waited_for_with_the_watchdog_fed(broker, subscriber, jpeg, workdir):
    port = free_port()
    config = write_config(workdir, broker, f"http://127.0.0.1:{port}/stream.mjpg")
    # The retained state of a run that ended without a word (a power cut) still shows a face.
    stale = json.dumps({"schema": 1, "device": DEVICE, "face_count": 1, "faces": [{"track_id": 7}]})
    publish.single(f"edge-mood/{DEVICE}/state", stale, retain=True, hostname=broker.host, port=broker.port)
    events = subscriber(broker, f"edge-mood/{DEVICE}/events")
    camera = None
    try:
        with like_systemd(workdir, config) as (daemon, notify, log):
            fed_for = lambda since, pings: len([t for t in notify.times("WATCHDOG=1") if t > since]) >= pings  # noqa: E731
            # Nothing serves the stream: the service is up and says what it waits for, instead of timing out.
            notify.wait_until("READY=1", lambda: notify.times("READY=1") or daemon.poll() is not None, 90)
            assert daemon.poll() is None, f"daemon exited {daemon.returncode}:\n{log_tail(log)}"
            assert any(line.startswith("STATUS=waiting for") for _, line in notify.messages), notify.messages
            state = subscriber(broker, f"edge-mood/{DEVICE}/state")
            state.wait_until(lambda got: bool(got) and got[-1].json()["face_count"] == 0, 15)
            past_stall = time.monotonic() + STALL_TIMEOUT_S
            notify.wait_until(
                "pings past the stall timeout", lambda: fed_for(past_stall, 2), STALL_TIMEOUT_S + 10 * WATCHDOG_S
            )

            # The camera comes: frames flow.
            camera = MjpegStream(jpeg, port=port)
            notify.wait_until(
                "STATUS=processing", lambda: any(m.startswith("STATUS=processing") for _, m in notify.messages), 40
            )
            # Unplugged with faces in view: the stream closes and refuses connections; the daemon retries, still
            # fed, and the faces leave.
            events.wait_until(lambda got: any(m.json()["type"] == "face_enter" for m in got), 30)
            camera.close()
            camera = None
            notify.wait_until("the loss", lambda: "lost " in log.read_text(), 20)
            lost_at = time.monotonic()
            notify.wait_until("pings after the loss", lambda: fed_for(lost_at + STALL_TIMEOUT_S, 2), 10 * WATCHDOG_S)
            assert daemon.poll() is None, log_tail(log)
            assert "no frame for" not in log.read_text(), "a missing camera is not a stall"
            assert_every_face_left(events, subscriber(broker, f"edge-mood/{DEVICE}/state"))
            lines = log.read_text().splitlines()
            assert not [line for line in lines if "[tcp @" in line or "VIDEOIO" in line], "FFmpeg/OpenCV's own lines"

            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(unit_stop_timeout_s()) == 0, log_tail(log)
    finally:
        if camera is not None:
            camera.close()
