"""Username/password and TLS against a real mosquitto (password file made with mosquitto_passwd,
certificates made with openssl for this test only)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from edge.config import load_config
from edge.errors import ConfigError
from edge.publisher import MqttSettings, Publisher
from edge.spool import Spool
from tests.mqtt_support import sample_event, wait_until

PASSWORD = "correct horse battery"


def test_username_and_password_reach_the_broker(broker_factory, subscriber, make_publisher, caplog):
    broker = broker_factory(users={"edge": PASSWORD, "reader": "r"})
    sub = subscriber(broker, "edge-mood/cam1/events", username="reader", password="r")
    caplog.set_level(logging.DEBUG, logger="edge")
    publisher = make_publisher(broker, username="edge", password=PASSWORD)
    publisher.spool.append(sample_event(0))
    publisher.wake()
    assert sub.wait_for(1)[0].json()["seq"] == 1
    assert PASSWORD not in caplog.text
    assert "user edge" in caplog.text


def test_a_wrong_password_is_one_error_line_and_events_stay_spooled(broker_factory, make_publisher, caplog):
    broker = broker_factory(users={"edge": PASSWORD})
    caplog.set_level(logging.DEBUG, logger="edge")
    publisher = make_publisher(broker, username="edge", password="wrong password")
    publisher.spool.append(sample_event(0))
    publisher.wake()
    refusals = lambda: [r for r in caplog.records if "refused the connection" in r.getMessage()]  # noqa: E731
    attempts = lambda: sum("Received CONNACK" in r.getMessage() for r in caplog.records)  # noqa: E731
    wait_until(lambda: attempts() >= 3, "three refused attempts")
    assert len(refusals()) == 1 and refusals()[0].levelno == logging.ERROR
    assert "mqtt.username" in refusals()[0].getMessage()
    assert publisher.spool.depth == 1 and not publisher.connected
    assert "wrong password" not in caplog.text


def test_a_broker_that_comes_up_refusing_after_an_outage_gets_its_own_line(broker_factory, make_publisher, caplog):
    broker = broker_factory(users={"edge": PASSWORD})
    broker.stop()  # away at boot, as before the network is up
    caplog.set_level(logging.DEBUG, logger="edge")
    publisher = make_publisher(broker, username="edge", password="wrong password")
    lines = lambda text: [r for r in caplog.records if text in r.getMessage()]  # noqa: E731
    wait_until(lambda: lines("unreachable"), "the outage's first line")
    broker.start()
    attempts = lambda: sum("Received CONNACK" in r.getMessage() for r in caplog.records)  # noqa: E731
    wait_until(lambda: attempts() >= 3, "three refused attempts")
    assert len(lines("unreachable")) == 1
    assert len(lines("refused the connection")) == 1, "the new cause is named once, with its fix"
    assert not publisher.connected


def test_a_broker_back_after_a_loss_with_a_certificate_we_refuse_gets_its_own_line(
    broker_factory, pki, make_publisher, caplog
):
    """After "lost connection", a broker merely not back yet says nothing more; one that is back but fails
    the TLS check (a renewed certificate for another name) must say why, or the outage looks endless."""
    broker = tls_broker(broker_factory, pki)
    publisher = make_publisher(broker, tls_ca=pki / "ca.crt", tls_cert=pki / "client.crt", tls_key=pki / "client.key")
    wait_until(lambda: publisher.connected, "connected over TLS")
    caplog.set_level(logging.DEBUG, logger="edge")
    broker.stop()
    broker.extra_config = tuple(line.replace("server.", "wrong-name.") for line in broker.extra_config)
    broker.start()
    lines = lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]  # noqa: E731
    wait_until(lambda: any("mqtt.tls_ca must name the CA" in line for line in lines()), "the certificate's line")
    assert any("mismatch" in line for line in lines())
    assert not publisher.connected and any(line.startswith("lost connection") for line in lines())


def tls_broker(broker_factory, pki: Path, server: str = "server"):
    return broker_factory(
        extra_config=(
            f"cafile {pki / 'ca.crt'}",
            f"certfile {pki / f'{server}.crt'}",
            f"keyfile {pki / f'{server}.key'}",
            "require_certificate true",
        )
    )


def test_tls_with_a_client_certificate(broker_factory, pki, make_publisher):
    broker = tls_broker(broker_factory, pki)
    publisher = make_publisher(
        broker, tls=True, tls_ca=pki / "ca.crt", tls_cert=pki / "client.crt", tls_key=pki / "client.key"
    )
    publisher.spool.append(sample_event(0))
    publisher.wake()
    assert publisher.wait_drained(20)  # the broker acknowledged it over TLS


def test_tls_with_a_foreign_ca_keeps_retrying_with_one_line(broker_factory, pki, make_publisher, caplog):
    broker = tls_broker(broker_factory, pki)
    publisher = make_publisher(
        broker, tls_ca=pki / "other-ca.crt", tls_cert=pki / "client.crt", tls_key=pki / "client.key"
    )
    publisher.spool.append(sample_event(0))
    publisher.wake()
    failed = lambda: [r.getMessage() for r in caplog.records if "not trusted" in r.getMessage()]  # noqa: E731
    wait_until(lambda: failed(), "the certificate's line")
    assert len(failed()) == 1 and "mqtt.tls_ca must name the CA that signed it" in failed()[0]
    assert publisher.spool.depth == 1


def test_tls_sent_to_a_plain_port_says_so_once_and_keeps_the_events(broker, make_publisher, caplog):
    publisher = make_publisher(broker, tls=True)
    publisher.spool.append(sample_event(0))
    publisher.wake()
    said = lambda: [r.getMessage() for r in caplog.records if "does not speak TLS" in r.getMessage()]  # noqa: E731
    wait_until(lambda: said(), "the plain port's line")
    assert "mqtt.tls is on; use the broker's TLS port (8883) or set mqtt.tls = false" in said()[0]
    time.sleep(3)  # retries go on, without a line each
    assert len(said()) == 1 and publisher.spool.depth == 1


def test_tls_insecure_skips_only_the_host_name_check(broker_factory, pki, make_publisher, caplog):
    broker = tls_broker(broker_factory, pki, server="wrong-name")
    tls = dict(tls_ca=pki / "ca.crt", tls_cert=pki / "client.crt", tls_key=pki / "client.key")
    strict = make_publisher(broker, client_id="strict", **tls)
    failed = lambda: [r.getMessage() for r in caplog.records if "not trusted" in r.getMessage()]  # noqa: E731
    wait_until(lambda: failed(), "the strict client's certificate line")
    assert "mismatch" in failed()[0]
    assert not strict.connected
    insecure = make_publisher(broker, client_id="insecure", tls_insecure=True, **tls)
    insecure.spool.append(sample_event(0))
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


def test_a_password_or_key_the_daemon_may_not_read_names_the_services_group(tmp_path):
    # As under systemd: the file is root's 0600 and the service may read it only through its group.
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    secret = tmp_path / "mqtt-password"
    secret.write_text("pw\n")
    secret.chmod(0o000)
    config = load_config(None, {"mqtt.password_file": str(secret)}, environ={})
    with pytest.raises(ConfigError, match=r"cannot be read \(permission denied\); .*chgrp edge-mood-config"):
        config.mqtt_password()
    spool = Spool(tmp_path / "spool.sqlite3")
    try:
        with pytest.raises(ConfigError, match=r"mqtt.tls_key = .*permission denied.*chmod 0640"):
            (tmp_path / "client.crt").write_text("a certificate")
            Publisher(MqttSettings(device_id="cam1", tls_cert=tmp_path / "client.crt", tls_key=secret), spool)
    finally:
        spool.close()
