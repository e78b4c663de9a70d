"""The `edge` command line: each command offers only the options that do something there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge.cli import build_parser, config_from_args, split_broker
from edge.errors import ConfigError


@pytest.mark.parametrize(
    ("command", "unused"),
    [("tail", "--source"), ("tail", "--model"), ("bench", "--broker"), ("bench", "--device-id")],
)
def test_a_command_refuses_a_shortcut_that_does_nothing_there(command, unused, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, unused, "x"])
    assert f"unrecognized arguments: {unused}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    assert unused not in capsys.readouterr().out


@pytest.mark.parametrize("command", ["run", "check", "demo"])
def test_commands_that_run_the_pipeline_take_every_shortcut(command):
    args = build_parser().parse_args(
        [command, "--source", "0", "--model", "m.onnx", "--broker", "b:1", "--device-id", "d"]
    )
    assert (args.source, args.model, args.broker, args.device_id) == ("0", "m.onnx", "b:1", "d")


def test_run_help_names_the_exit_status_for_unsent_events(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    assert "exit status 3 when some could not be sent" in " ".join(capsys.readouterr().out.split())


def test_the_config_file_named_by_the_environment_is_read_beside_the_scripts_variables(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('[mqtt]\ndevice_id = "from-file"\nhost = "broker.lan"\n')
    monkeypatch.setenv("EDGE_MOOD_CONFIG", str(config))
    scripts = [Path("systemd/install.sh"), Path("docs/mosquitto/add-device.sh")]
    repo = Path(__file__).resolve().parents[1]
    their_variables = {name for script in scripts for name in re.findall(r"EDGE_MOOD_\w+", (repo / script).read_text())}
    assert "EDGE_MOOD_PIP_OPTS" in their_variables and "EDGE_MOOD_TOPIC_PREFIX" in their_variables
    for left_by_a_script in their_variables:
        monkeypatch.setenv(left_by_a_script, "x")
    monkeypatch.setenv("EDGE_MOOD_MQTT_HOST", "from-env")
    loaded = config_from_args(build_parser().parse_args(["tail"]))
    assert loaded.path == config
    assert (loaded.mqtt.device_id, loaded.mqtt.host) == ("from-file", "from-env")
    monkeypatch.setenv("EDGE_MOOD_MQQT_HOST", "typo")
    with pytest.raises(ConfigError, match="section 'mqqt' is unknown"):
        config_from_args(build_parser().parse_args(["tail"]))


@pytest.mark.parametrize(
    "broker, host, port",
    [("broker.lan", "broker.lan", ""), ("broker.lan:8883", "broker.lan", "8883"), ("::1", "::1", ""),
     ("[::1]:1884", "::1", "1884"), ("[fd00::2]", "fd00::2", "")],
)  # fmt: skip
def test_broker_option_takes_a_host_and_an_optional_port(broker, host, port):
    assert split_broker(broker) == (host, port)


@pytest.mark.parametrize("frames", ["-5", "0", "x"])
def test_bench_frames_must_be_a_positive_number(frames, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["bench", "--frames", frames])
    assert exited.value.code == 2
    assert f"argument --frames: '{frames}' is not a positive whole number" in capsys.readouterr().err
