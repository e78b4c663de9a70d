"""Broker settings that used to fail in silence or with a raw exception: a topic prefix the broker cannot
take (rejected at config time, one line), and plain MQTT against a TLS port (one line saying so)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from edge.config import load_config
from edge.errors import ConfigError
from tests.mqtt_support import wait_until


@pytest.mark.parametrize("key", ["discovery_prefix", "prefix"])
@pytest.mark.parametrize("value", ["home/#", "home/+/x", "$SYS/ha", "$share"])
def test_a_prefix_the_broker_cannot_take_is_rejected_at_config_time(key, value):
    with pytest.raises(ConfigError) as caught:
        load_config(None, {f"mqtt.{key}": value}, environ={})
    message = str(caught.value)
    assert f"mqtt.{key}" in message and "$" in message and "#" in message and "\n" not in message


def test_the_cli_names_a_bad_discovery_prefix_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "edge", "check", "--set", "mqtt.discovery_prefix=$homeassistant"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "mqtt.discovery_prefix" in done.stderr
    assert "Traceback" not in done.stderr


def test_ordinary_prefixes_still_pass():
    config = load_config(None, {"mqtt.discovery_prefix": "ha/discovery", "mqtt.prefix": "site1/edge-mood"}, environ={})
    assert config.mqtt.discovery_prefix == "ha/discovery" and config.mqtt.prefix == "site1/edge-mood"


@pytest.fixture
def tls_only_broker(broker_factory, pki):
    """mosquitto whose only listener speaks TLS (the test CA's server certificate)."""
    return broker_factory(extra_config=(f"certfile {pki / 'server.crt'}", f"keyfile {pki / 'server.key'}"))


def test_plain_mqtt_against_a_tls_port_says_so_in_one_line(tls_only_broker, make_publisher, caplog):
    caplog.set_level(logging.DEBUG, logger="edge")
    publisher = make_publisher(tls_only_broker, reconnect_max_s=0.2)
    attempts = lambda: sum("Sending CONNECT" in r.getMessage() for r in caplog.records)  # noqa: E731
    wait_until(lambda: attempts() >= 4, "four connection attempts")
    assert not publisher.connected
    publisher.stop(timeout=1)
    said = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("edge.publisher")]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert "speaks TLS" in said[0].getMessage() and "mqtt.tls = true" in said[0].getMessage()
