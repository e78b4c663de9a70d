"""Username/password and TLS against a real mosquitto (password file made with mosquitto_passwd,
certificates made with openssl for this test only)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from edge.errors import ConfigError
from edge.payloads import event_payload
from edge.publisher import MqttSettings, Publisher
from edge.spool import Spool

PASSWORD = "correct horse battery"


def make_event(i: int) -> dict:
    return event_payload(
        device="cam1",
        type="face_enter",
        frame=i,
        ts=time.time(),
        track_id=i,
        expression=None,
        confidence=None,
        scores={"happy": 0.5, "sad": 0.5},
        bbox_norm=(0, 0, 0.1, 0.1),
        model="m@1",
    )


@pytest.fixture
def run(tmp_path):
    made: list[Publisher] = []

    def start(broker, **changes) -> Publisher:
        values = dict(
            host=broker.host,
            port=broker.port,
            protocol=broker.protocol,
            device_id="cam1",
            reconnect_min_s=0.05,
            reconnect_max_s=0.3,
            discovery=False,
        )
        values.update(changes)
        publisher = Publisher(MqttSettings(**values), Spool(tmp_path / f"spool{len(made)}.sqlite3"))
        made.append(publisher)
        publisher.start()
        return publisher

    yield start
    for publisher in made:
        publisher.stop(timeout=2)
        publisher.spool.close()


def wait_until(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_username_and_password_reach_the_broker(broker_factory, subscriber, run, caplog):
    broker = broker_factory(users={"edge": PASSWORD, "reader": "r"})
    sub = subscriber(broker, "edge-mood/cam1/events", username="reader", password="r")
    caplog.set_level(logging.DEBUG, logger="edge")
    publisher = run(broker, username="edge", password=PASSWORD)
    publisher.spool.append(make_event(0))
    publisher.wake()
    assert sub.wait_for(1)[0].json()["seq"] == 1
    assert PASSWORD not in caplog.text
    assert "user edge" in caplog.text


def test_a_wrong_password_is_one_error_line_and_events_stay_spooled(broker_factory, run, caplog):
    broker = broker_factory(users={"edge": PASSWORD})
    caplog.set_level(logging.DEBUG, logger="edge")
    publisher = run(broker, username="edge", password="wrong password")
    publisher.spool.append(make_event(0))
    publisher.wake()
    refusals = lambda: [r for r in caplog.records if "refused the connection" in r.getMessage()]  # noqa: E731
    attempts = lambda: sum("Received CONNACK" in r.getMessage() for r in caplog.records)  # noqa: E731
    wait_until(lambda: attempts() >= 3, "three refused attempts")
    assert len(refusals()) == 1 and refusals()[0].levelno == logging.ERROR
    assert "mqtt.username" in refusals()[0].getMessage()
    assert publisher.spool.depth == 1 and not publisher.connected
    assert "wrong password" not in caplog.text


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(cwd: Path, name: str, subject_alt_name: str | None) -> None:
    """<name>.key/.crt signed by the test CA in cwd."""
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=cwd,
    )
    extra = []
    if subject_alt_name:
        (cwd / f"{name}.ext").write_text(f"subjectAltName={subject_alt_name}\n")
        extra = ["-extfile", f"{name}.ext"]
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        *extra,
        cwd=cwd,
    )


@pytest.fixture
def pki(tmp_path) -> Path:
    if not shutil.which("openssl"):
        pytest.skip("openssl not found; it makes the test certificates (apt install openssl)")
    cwd = tmp_path / "pki"
    cwd.mkdir()
    for ca in ("ca", "other-ca"):
        openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            "-days",
            "2",
            "-subj",
            f"/CN={ca}",
            cwd=cwd,
        )
    issue(cwd, "server", "IP:127.0.0.1,DNS:localhost")
    issue(cwd, "wrong-name", "DNS:elsewhere.invalid")
    issue(cwd, "client", None)
    return cwd


def tls_broker(broker_factory, pki: Path, server: str = "server"):
    return broker_factory(
        extra_config=(
            f"cafile {pki / 'ca.crt'}",
            f"certfile {pki / f'{server}.crt'}",
            f"keyfile {pki / f'{server}.key'}",
            "require_certificate true",
        )
    )


def test_tls_with_a_client_certificate(broker_factory, pki, run):
    broker = tls_broker(broker_factory, pki)
    publisher = run(broker, tls=True, tls_ca=pki / "ca.crt", tls_cert=pki / "client.crt", tls_key=pki / "client.key")
    publisher.spool.append(make_event(0))
    publisher.wake()
    assert publisher.wait_drained(20)  # the broker acknowledged it over TLS


def test_tls_with_a_foreign_ca_keeps_retrying_with_one_line(broker_factory, pki, run, caplog):
    broker = tls_broker(broker_factory, pki)
    publisher = run(broker, tls_ca=pki / "other-ca.crt", tls_cert=pki / "client.crt", tls_key=pki / "client.key")
    publisher.spool.append(make_event(0))
    publisher.wake()
    failed = lambda: [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]  # noqa: E731
    wait_until(lambda: failed(), "the unreachable line")
    assert "CERTIFICATE_VERIFY_FAILED" in failed()[0] or "certificate verify failed" in failed()[0]
    assert publisher.spool.depth == 1


def test_tls_insecure_skips_only_the_host_name_check(broker_factory, pki, run, caplog):
    broker = tls_broker(broker_factory, pki, server="wrong-name")
    tls = dict(tls_ca=pki / "ca.crt", tls_cert=pki / "client.crt", tls_key=pki / "client.key")
    strict = run(broker, client_id="strict", **tls)
    failed = lambda: [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]  # noqa: E731
    wait_until(lambda: failed(), "the strict client's unreachable line")
    assert "mismatch" in failed()[0]
    assert not strict.connected
    insecure = run(broker, client_id="insecure", tls_insecure=True, **tls)
    insecure.spool.append(make_event(0))
    insecure.wake()
    assert insecure.wait_drained(20)


def test_missing_tls_file_is_a_config_error(tmp_path):
    spool = Spool(tmp_path / "spool.sqlite3")
    try:
        with pytest.raises(ConfigError, match="mqtt.tls_ca = .*not a readable file"):
            Publisher(MqttSettings(device_id="cam1", tls_ca=tmp_path / "nope.crt"), spool)
        (tmp_path / "junk.crt").write_text("not a certificate")
        with pytest.raises(ConfigError, match="TLS files cannot be loaded"):
            Publisher(MqttSettings(device_id="cam1", tls_ca=tmp_path / "junk.crt"), spool)
    finally:
        spool.close()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"protocol": "4"}, "mqtt.protocol"),
        ({"device_id": "a/b"}, "mqtt.device_id"),
        ({"prefix": "x/#"}, "mqtt.prefix"),
        ({"qos": 3}, "mqtt.qos"),
        ({"port": 0}, "mqtt.port"),
    ],
)
def test_bad_settings_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        MqttSettings(**{"device_id": "cam1", **changes})
