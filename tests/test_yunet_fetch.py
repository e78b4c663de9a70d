"""YuNet for every install: fetched on first use, by `edge models fetch` and by the installer's code, from a
real local HTTP server; a wrong checksum is refused; offline, one warning line and the Haar cascade."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import load_config
from edge.errors import EXIT_MAY_CLEAR, ModelError
from edge.faces import make_detector
from edge.locations import YUNET_SHA256
from edge.sources import open_source
from edge.wiring import build_detector, load_model
from edge.yunet_fetch import fetch_yunet

REPO = Path(__file__).resolve().parents[1]
SHARED_YUNET = REPO.parent / "shared" / "models" / "face_detection_yunet_2026may.onnx"
SHARED_YUNET_SHA256 = "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"  # ../shared/README.md
SAMPLE_CLIP = REPO / "edge" / "sample" / "astronaut.mp4"

needs_shared_yunet = pytest.mark.skipif(
    not SHARED_YUNET.is_file(), reason=f"needs the shared YuNet model ({SHARED_YUNET})"
)


def dead_url() -> str:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/face_detection_yunet_2023mar.onnx"


def edge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=120, env=env or dict(os.environ)
    )


def first_frame_with_a_face():
    source = open_source(str(SAMPLE_CLIP))
    try:
        for _ in range(40):  # the photo is in view from frame 10
            frame = source.read()
        return frame
    finally:
        source.close()


@needs_shared_yunet
def test_models_fetch_downloads_checks_and_then_keeps_the_file(tmp_path, serve):
    url, requests = serve(SHARED_YUNET.parent)
    target = tmp_path / "models"
    args = ("models", "fetch", "--url", f"{url}/{SHARED_YUNET.name}", "--sha256", SHARED_YUNET_SHA256)
    first = edge(*args, "--dir", str(target))
    assert first.returncode == 0, first.stderr
    fetched = target / SHARED_YUNET.name
    assert fetched.read_bytes() == SHARED_YUNET.read_bytes()
    assert str(fetched) in first.stdout
    assert [p.name for p in target.iterdir()] == [SHARED_YUNET.name]  # no partial file left beside it
    again = edge(*args, "--dir", str(target))
    assert again.returncode == 0, again.stderr
    assert requests == [f"/{SHARED_YUNET.name}"], "a file already in place with the right sha256 is not fetched again"


def test_a_download_with_another_checksum_is_refused(tmp_path, serve):
    served = tmp_path / "served"
    served.mkdir()
    impostor = served / "face_detection_yunet_2023mar.onnx"
    impostor.write_bytes(os.urandom(5000))
    url, _ = serve(served)
    target = tmp_path / "models"
    # The pinned sha256 is the default: the served file is not the 2023mar release.
    result = edge("models", "fetch", "--url", f"{url}/{impostor.name}", "--dir", str(target))
    assert result.returncode == 2
    assert "checksum mismatch" in result.stderr and hashlib.sha256(impostor.read_bytes()).hexdigest() in result.stderr
    assert YUNET_SHA256 in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(target.iterdir()) == []  # neither the file nor a partial one


@needs_shared_yunet
def test_the_detector_factory_fetches_yunet_into_the_data_folder_on_first_use(tmp_path, serve, monkeypatch):
    url, requests = serve(SHARED_YUNET.parent)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    config = load_config(
        None, {"detector.yunet_url": f"{url}/{SHARED_YUNET.name}", "detector.yunet_sha256": SHARED_YUNET_SHA256}
    )
    model = load_model(config)
    detector = build_detector(config, model)
    assert detector.name == "yunet"
    assert (tmp_path / "data" / "edge-mood" / "models" / SHARED_YUNET.name).is_file()
    assert len(detector.detect(first_frame_with_a_face())) == 1
    assert build_detector(config, model).name == "yunet" and len(requests) == 1  # found there the next time


def test_offline_first_use_warns_once_naming_the_file_and_the_folder_then_uses_haar(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    config = load_config(None, {"detector.yunet_url": dead_url()})
    model = load_model(config)
    with caplog.at_level(logging.WARNING):
        detector = build_detector(config, model)
    assert detector.name == "haar"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    folder = tmp_path / "data" / "edge-mood" / "models"
    assert f"place face_detection_yunet_2023mar.onnx (sha256 {YUNET_SHA256}" in warnings[0]
    assert f"in {folder}" in warnings[0] and "Haar" in warnings[0] and "\n" not in warnings[0]
    assert len(detector.detect(first_frame_with_a_face())) == 1  # Haar on the same clip still finds the face


def test_offline_with_yunet_required_is_one_clear_error_that_the_service_retries(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    config = load_config(None, {"detector.yunet_url": dead_url(), "detector.kind": "yunet"})
    with pytest.raises(ModelError, match="cannot download the YuNet face detector") as raised:
        build_detector(config, load_model(config))
    assert "\n" not in str(raised.value)
    # At a boot where the network comes late: not the status the unit never restarts (a user error's).
    assert raised.value.exit_status == EXIT_MAY_CLEAR != 2


@pytest.mark.parametrize("url", ["{served}/no-such-file.onnx", "htps://example.org/face_detection_yunet.onnx"])
def test_a_yunet_url_that_can_never_work_is_a_user_error_the_service_does_not_retry(tmp_path, monkeypatch, serve, url):
    served, _ = serve(tmp_path)  # answers 404 for a file it does not have
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    config = load_config(None, {"detector.yunet_url": url.format(served=served), "detector.kind": "yunet"})
    with pytest.raises(ModelError, match="cannot download the YuNet face detector") as raised:
        build_detector(config, load_model(config))
    assert raised.value.exit_status == 2


def test_with_downloads_off_the_factory_uses_haar_without_trying(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    config = load_config(None, {"detector.yunet_url": ""})
    with caplog.at_level(logging.WARNING):
        assert build_detector(config, load_model(config)).name == "haar"
    assert caplog.records == [] and not (tmp_path / "data").exists()


def test_the_installer_can_run_the_fetcher_with_no_site_packages_at_all(tmp_path):
    """install.sh runs `python3 -m edge.yunet_fetch` from the checkout with the system Python, before the venv
    exists: -S leaves out every installed package, so only the standard library is there."""
    local = tmp_path / "face_detection_yunet_test.onnx"
    local.write_bytes(os.urandom(3000))
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    result = subprocess.run(
        [
            sys.executable,
            "-S",
            "-m",
            "edge.yunet_fetch",
            "--file",
            str(local),
            "--sha256",
            digest,
            "--dir",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "m" / local.name)
    assert (tmp_path / "m" / local.name).read_bytes() == local.read_bytes()


@needs_shared_yunet
def test_a_local_copy_saved_under_another_name_is_stored_where_the_daemon_finds_it(tmp_path):
    downloaded = tmp_path / "Downloads" / "yunet (1).onnx"  # as a browser names a second download
    downloaded.parent.mkdir()
    downloaded.write_bytes(SHARED_YUNET.read_bytes())
    stored = fetch_yunet(tmp_path / "models", sha256=SHARED_YUNET_SHA256, local_file=downloaded)
    assert stored.name == "face_detection_yunet_2023mar.onnx"
    assert make_detector("yunet", search_dirs=[tmp_path / "models"]).name == "yunet"
