"""Config: defaults, TOML, environment and CLI layers; every bad value is one clear line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_type_hints

import pytest

from edge.cli import main
from edge.config import SCHEMA, SECTION_TYPES, ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "edge" / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_example_config_is_valid_and_matches_defaults():
    from_example = load_config(EXAMPLE, environ={})
    defaults = load_config(None, environ={})
    for section in ("source", "detector", "model", "tracking", "mqtt", "spool", "stats", "service", "log"):
        assert getattr(from_example, section).as_dict() == getattr(defaults, section).as_dict(), section


def test_typed_sections_declare_exactly_the_keys_of_the_schema():
    assert list(SECTION_TYPES) == list(SCHEMA)
    for name, keys in SCHEMA.items():
        declared = get_type_hints(SECTION_TYPES[name])
        assert declared == {key: spec.kind for key, spec in keys.items()}, f"[{name}]"
    config = load_config(None, environ={})
    assert type(config.mqtt) is SECTION_TYPES["mqtt"] and config.mqtt.port == 1883


def test_layers_apply_in_order(tmp_path):
    path = write(tmp_path, '[mqtt]\nhost = "from-file"\nport = 1884\n[tracking]\nema_alpha = 1\n')
    env = {"EDGE_MOOD_MQTT_HOST": "from-env", "EDGE_MOOD_MQTT_DEVICE_ID": "kitchen"}
    config = load_config(path, {"mqtt.port": "1999"}, environ=env)
    assert config.mqtt.host == "from-env"
    assert config.mqtt.port == 1999
    assert config.device_id == "kitchen"
    assert config.tracking.ema_alpha == 1.0 and isinstance(config.tracking.ema_alpha, float)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[mqtt]\nport = 70000\n", "mqtt.port = 70000 is not allowed; expected a port number"),
        ('[model]\nprecision = "int4"\n', "model.precision = 'int4' is not allowed; expected one of auto, int8, fp32"),
        ('[mqtt]\nprefix = "a/#"\n', "mqtt.prefix = 'a/#' is not allowed"),
        ("[tracking]\nema_alpha = 0\n", "tracking.ema_alpha = 0.0 is not allowed"),
        ("[source]\nrealtime = 3\n", "source.realtime = 3 is not allowed; expected true or false"),
        ("[detector]\nidle_fps = -1\n", "detector.idle_fps = -1.0 is not allowed; expected a number of frames"),
        ("[detector]\ndetect_every = 0\n", "detector.detect_every = 0 is not allowed; expected a positive number"),
        ("[model]\nclassify_every = 0\n", "model.classify_every = 0 is not allowed; expected a positive number"),
        ("[model]\nspin_wait = 2\n", "model.spin_wait = 2 is not allowed; expected true or false"),
        ("[camera]\nx = 1\n", "config section [camera]"),
        ("[mqtt]\nhots = 'x'\n", "config key mqtt.hots is unknown"),
        ("[mqtt\n", "is not valid TOML"),
        ('host = "broker.lan"\n[mqtt]\n', "config key 'host' in "),
        ('[spool]\ndir = "~nosuchuser9/state"\n', "spool.dir = '~nosuchuser9/state': there is no user 'nosuchuser9'"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(tmp_path, text, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ={})
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            '[mqtt]\nhost = "caf\xe9"\n'.encode("latin-1"),
            "is not UTF-8 text (byte 0xe9 at offset 18); save it as UTF-8",
        ),
        ("[mqtt]\nhost = 'x'\n".encode("utf-16"), "is not UTF-8 text (byte 0xff at offset 0)"),  # Notepad's "Unicode"
        ("\ufeff[mqtt]\nhost = 'x'\n".encode("utf-8"), "starts with a byte order mark; save it as UTF-8 without BOM"),
    ],
)
def test_a_config_file_in_another_encoding_is_one_line(tmp_path, content, expected):
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="is a folder; give the path of the TOML file"):
        load_config(tmp_path, environ={})


def test_bad_environment_value_is_rejected_naming_the_variable():
    with pytest.raises(ConfigError, match="mqtt.port = 'abc' .*set by the environment variable EDGE_MOOD_MQTT_PORT"):
        load_config(None, environ={"EDGE_MOOD_MQTT_PORT": "abc"})
    with pytest.raises(ConfigError, match="section .debug. is unknown.*set by .* variable EDGE_MOOD_DEBUG"):
        load_config(None, environ={"EDGE_MOOD_DEBUG": "1"})


def test_password_comes_from_file_or_environment_never_both(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    assert load_config(None, {"mqtt.password_file": str(secret)}, environ={}).mqtt_password() == "s3cret"
    secret.write_bytes(b"\xef\xbb\xbfs3cret\r\n")  # as Windows Notepad saves it
    assert load_config(None, {"mqtt.password_file": str(secret)}, environ={}).mqtt_password() == "s3cret"
    assert load_config(None, environ={"EDGE_MOOD_MQTT_PASSWORD": "envpw"}).mqtt_password() == "envpw"
    with pytest.raises(ConfigError, match="keep one of them"):
        load_config(None, {"mqtt.password_file": str(secret)}, environ={"EDGE_MOOD_MQTT_PASSWORD": "x"})
    missing = load_config(None, {"mqtt.password_file": str(tmp_path / "nope")}, environ={})
    with pytest.raises(ConfigError, match="cannot be read"):
        missing.mqtt_password()
    secret.write_bytes("p\xe9ss\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text; write the password into it as UTF-8"):
        load_config(None, {"mqtt.password_file": str(secret)}, environ={}).mqtt_password()


def test_relative_paths_in_a_config_file_are_relative_to_its_folder(tmp_path, monkeypatch):
    """The service runs in /: a password file named beside the config must be found there, as `edge check`
    run in the config's folder finds it."""
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "pw").write_text("s3cret\n")
    path = folder / "config.toml"
    path.write_text('[mqtt]\npassword_file = "pw"\n[spool]\ndir = "state"\n[model]\npath = "/abs/m.onnx"\n')
    monkeypatch.chdir("/")
    config = load_config(path, environ={})
    assert config.mqtt_password() == "s3cret"
    assert config.state_dir == folder / "state" and config.model.path == "/abs/m.onnx"
    # On the command line a relative path is relative to where the command runs, as anywhere else.
    assert load_config(path, {"mqtt.password_file": "pw"}, environ={}).mqtt.password_file == "pw"


def test_state_dir_follows_systemd(tmp_path):
    config = load_config(None, environ={"STATE_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"})
    assert config.state_dir == tmp_path / "a"
    assert load_config(None, {"spool.dir": str(tmp_path / "c")}, environ={}).state_dir == tmp_path / "c"


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    status = main(["check", "--config", str(write(tmp_path, "[mqtt]\nqos = 3\n"))])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "mqtt.qos = 3 is not allowed" in err and "Traceback" not in err


def test_cli_missing_config_file(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "none.toml")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "host",
    ["", "broker..lan", ".lan", "a" * 64 + ".lan", "broker lan", "mqtt://broker.lan", "broker.lan:1883", "[::1]"],
)
def test_a_broker_host_the_network_layer_would_refuse_is_refused_with_the_key_named(host):
    with pytest.raises(ConfigError, match=r"mqtt.host = .* expected a host name or address"):
        load_config(None, {"mqtt.host": host}, environ={})


@pytest.mark.parametrize("host", ["broker.lan", "broker.lan.", "10.0.0.2", "::1", "büro.lan"])
def test_host_names_and_addresses_are_accepted(host):
    assert load_config(None, {"mqtt.host": host}, environ={}).mqtt.host == host


def test_a_keepalive_the_client_cannot_use_is_refused_by_the_config_check():
    with pytest.raises(ConfigError, match="mqtt.keepalive = 2 is not allowed; expected 5 to 65535 seconds"):
        load_config(None, {"mqtt.keepalive": "2"}, environ={})


@pytest.mark.parametrize(
    "key, value",
    [
        ("mqtt.keepalive", "70000"),  # MQTT's field is 16 bits: paho's network thread died on it, silently
        ("model.threads", "999999999"),  # onnxruntime: bad_alloc, blamed on the model file
        ("detector.threads", "99999999999"),  # OpenCV: a traceback
        ("detector.detect_width", "99999999999"),  # blamed on the YuNet file
        ("detector.min_face_px", "99999999999"),  # every frame skipped
        ("source.fps", "1e-300"),  # the grabber's clock overflowed
        ("homeassistant.status_topic", "ha/#/x"),  # refused by the broker at every connect
        ("homeassistant.status_topic", "+/status"),  # never equal to the topic Home Assistant publishes to
        ("detector.detect_width", "8"),  # the detector refuses under 32
    ],
)
def test_values_the_parts_below_cannot_take_are_refused_at_start(key, value):
    with pytest.raises(ConfigError, match=rf"{key} = .* is not allowed; expected"):
        load_config(None, {key: value}, environ={})
