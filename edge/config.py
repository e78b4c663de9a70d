"""The daemon's settings: one TOML file, environment overrides and CLI flags on top.

Precedence, lowest first: built-in defaults, the TOML file, `EDGE_MOOD_<SECTION>_<KEY>` environment
variables, `--set section.key=value` and the CLI's shortcut flags. Every value is checked here, so the
rest of the daemon can trust it; a bad one raises ConfigError naming the key, the value and what is
allowed.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from edge.config_sections import (
    DetectorSection,
    HomeAssistantSection,
    LogSection,
    ModelSection,
    MqttSection,
    Section,
    ServiceSection,
    SourceSection,
    SpoolSection,
    StatsSection,
    TrackingSection,
)
from edge.discovery import DIAGNOSTICS, HA_STATUS_TOPIC
from edge.errors import ConfigError
from edge.locations import YUNET_SHA256, YUNET_URL, user_state_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ENV_PREFIX = "EDGE_MOOD_"
PASSWORD_ENV = "EDGE_MOOD_MQTT_PASSWORD"
CONFIG_ENV = "EDGE_MOOD_CONFIG"
SERVICE_GROUP = "edge-mood-config"  # systemd/edge-mood.service: SupplementaryGroups=, made by install.sh
# Variables under the prefix that are not settings: the config file's path, the password (read apart), and
# the options of systemd/install.sh and docs/mosquitto/add-device.sh, which may still be exported in the shell
# that runs `edge` next.
NOT_SETTINGS = frozenset(
    {
        CONFIG_ENV,
        PASSWORD_ENV,
        "EDGE_MOOD_PREFIX",
        "EDGE_MOOD_PYTHON",
        "EDGE_MOOD_PIP_OPTS",
        "EDGE_MOOD_TOPIC_PREFIX",
        "EDGE_MOOD_DISCOVERY_PREFIX",
        "EDGE_MOOD_DEVICE_PASSWORD",
    }
)


@dataclass(frozen=True)
class Key:
    """One setting: its type, default, and the rule its value must follow."""

    kind: type
    default: Any
    allowed: str = ""  # human text used in error messages
    check: Callable[[Any], bool] | None = None
    choices: tuple[str, ...] = ()  # for a list: what its items may be
    is_path: bool = False  # a file or folder: relative in the config file means relative to the file's folder


def _positive(x: float) -> bool:
    return x > 0


def _non_negative(x: float) -> bool:
    return x >= 0


def _fraction(x: float) -> bool:
    return 0 < x <= 1


def _port(x: int) -> bool:
    return 0 < x < 65536


# Upper bounds where a value goes on to C code (OpenCV, onnxruntime, MQTT's 16-bit keepalive) that fails on
# a larger one with a traceback, or with a message that blames a healthy file.
MAX_PIXELS = 16384  # a side in pixels
MAX_THREADS = 256


def _pixels(x: int) -> bool:
    return 0 < x <= MAX_PIXELS


def _threads(x: int) -> bool:
    return 0 <= x <= MAX_THREADS


def _status_topic(s: str) -> bool:
    # One topic, as Home Assistant publishes its birth message to: a filter's wildcard would never equal it.
    return not set("+#\0") & set(s)


def _host(s: str) -> bool:
    # What the socket layer would refuse at connect time (an empty name, an empty or over-long label as in
    # "broker..lan"), and which would otherwise only show as a traceback in the network thread.
    if not s or any(c.isspace() for c in s):
        return False
    # A URL, host:port or [address]: the port has a key of its own (more than one colon: an IPv6 address).
    if "/" in s or "[" in s or s.count(":") == 1:
        return False
    try:
        s.encode("idna")
    except UnicodeError:
        return False
    return True


def _topic_prefix(s: str) -> bool:
    # A wildcard cannot be published to, and brokers keep topics starting with $ for themselves
    # (mosquitto drops a client that publishes there).
    return bool(s) and not set("+#\0") & set(s) and not s.startswith(("$", "/")) and not s.endswith("/")


TOPIC_PREFIX = "a topic prefix without + or #, not starting with $ or / and not ending with /"


def _expiry(x: int) -> bool:
    # The daemon refreshes the retained state at least once a minute while frames flow.
    return x == 0 or x > 60


SCHEMA: dict[str, dict[str, Key]] = {
    "source": {
        "uri": Key(
            str,
            "picamera",
            "picamera, a camera index or /dev/videoN, a video file, rtsp:// or http:// URL, an image folder or glob",
        ),
        "width": Key(int, 640, f"a number of pixels from 1 to {MAX_PIXELS}", _pixels),
        "height": Key(int, 480, f"a number of pixels from 1 to {MAX_PIXELS}", _pixels),
        "fps": Key(float, 15.0, "a number from 0.01 to 1000", lambda x: 0.01 <= x <= 1000),
        "realtime": Key(bool, False, "true or false"),
        "reconnect_max_s": Key(float, 30.0, "a positive number of seconds", _positive),
    },
    "detector": {
        "kind": Key(str, "auto", choices=("auto", "yunet", "haar")),
        "yunet_model": Key(
            str, "", "a path to face_detection_yunet*.onnx, or empty to search the model folder", is_path=True
        ),
        "yunet_url": Key(str, YUNET_URL, "an http(s) URL, or empty never to download YuNet"),
        "yunet_sha256": Key(
            str, YUNET_SHA256, "64 hex digits", lambda s: len(s) == 64 and all(c in "0123456789abcdef" for c in s)
        ),
        "detect_width": Key(int, 320, f"a number of pixels from 32 to {MAX_PIXELS}", lambda x: 32 <= x <= MAX_PIXELS),
        "score_threshold": Key(float, 0.7, "a number in (0, 1]", _fraction),
        "min_face_px": Key(int, 24, f"a number of pixels from 1 to {MAX_PIXELS}", _pixels),
        "detect_every": Key(int, 5, "a positive number of frames", _positive),
        "adaptive_width": Key(bool, False, "true or false"),
        "idle_fps": Key(float, 3.0, "a number of frames per second >= 0 (0: every frame)", _non_negative),
        "threads": Key(int, 1, f"a number from 0 to {MAX_THREADS} (0: OpenCV's default, one per core)", _threads),
    },
    "model": {
        "path": Key(
            str, "", "a path to an expression .onnx with its .json card, or empty for the shipped model", is_path=True
        ),
        "precision": Key(str, "auto", choices=("auto", "int8", "fp32")),
        "threads": Key(int, 1, f"a number from 1 to {MAX_THREADS}", lambda x: 0 < x <= MAX_THREADS),
        "spin_wait": Key(bool, False, "true or false"),
        "classify_every": Key(int, 2, "a positive number of frames", _positive),
    },
    "tracking": {
        "iou_threshold": Key(float, 0.3, "a number in (0, 1]", _fraction),
        "max_jump": Key(float, 1.5, "a number of face sizes >= 0", _non_negative),
        "ema_alpha": Key(float, 0.35, "a number in (0, 1]", _fraction),
        "min_confidence": Key(float, 0.45, "a number in (0, 1]", _fraction),
        "switch_margin": Key(float, 0.1, "a number >= 0", _non_negative),
        "settle_frames": Key(int, 3, "a positive number of frames", _positive),
        "enter_frames": Key(int, 2, "a positive number of frames", _positive),
        "leave_after_s": Key(float, 2.0, "a positive number of seconds", _positive),
        "leave_after_frames": Key(int, 5, "a positive number of frames", _positive),
    },
    "mqtt": {
        "host": Key(str, "localhost", "a host name or address, without scheme or port (the port: mqtt.port)", _host),
        "port": Key(int, 1883, "a port number 1-65535", _port),
        "protocol": Key(str, "5", choices=("5", "3.1.1")),
        "prefix": Key(str, "edge-mood", TOPIC_PREFIX, _topic_prefix),
        "device_id": Key(
            str,
            "",
            "letters, digits, - and _ (empty: the host name)",
            lambda s: all(c.isalnum() or c in "-_" for c in s),
        ),
        "username": Key(str, ""),
        "password_file": Key(str, "", "a path to a file holding only the password", is_path=True),
        "tls": Key(bool, False, "true or false"),
        "tls_ca": Key(str, "", "a path to a CA certificate file", is_path=True),
        "tls_cert": Key(str, "", "a path to a client certificate file", is_path=True),
        "tls_key": Key(str, "", "a path to the client key file", is_path=True),
        "tls_insecure": Key(bool, False, "true or false"),
        "keepalive": Key(int, 30, "5 to 65535 seconds", lambda s: 5 <= s <= 65535),
        "qos": Key(int, 1, "0, 1 or 2", lambda q: q in (0, 1, 2)),
        "discovery": Key(bool, True, "true or false"),
        "discovery_prefix": Key(str, "homeassistant", TOPIC_PREFIX, _topic_prefix),
    },
    "homeassistant": {
        "name": Key(str, "", "the device's name in Home Assistant (empty: the device id)"),
        "suggested_area": Key(str, "", "an area name such as Living Room (empty: none)"),
        "expire_after_s": Key(int, 180, "0 (never) or more than 60 seconds", _expiry),
        "diagnostics": Key(list, tuple(DIAGNOSTICS), choices=tuple(DIAGNOSTICS)),
        "device_triggers": Key(bool, True, "true or false"),
        "status_topic": Key(
            str,
            HA_STATUS_TOPIC,
            "Home Assistant's birth message topic, without + or # (empty: do not listen)",
            _status_topic,
        ),
        "support_url": Key(
            str,
            "",
            "an http:// or https:// URL (empty: none)",
            lambda s: not s or s.startswith(("http://", "https://")),
        ),
    },
    "spool": {
        "dir": Key(str, "", "a writable folder (empty: $STATE_DIRECTORY or ~/.local/state/edge-mood)", is_path=True),
        "max_events": Key(int, 100_000, "a positive number", _positive),
        "max_age_days": Key(float, 7.0, "a positive number of days", _positive),
        "memory_events": Key(int, 10_000, "a positive number", _positive),
    },
    "stats": {
        "interval_s": Key(float, 30.0, "a positive number of seconds", _positive),
    },
    "service": {
        "stall_timeout_s": Key(float, 20.0, "a positive number of seconds", _positive),
    },
    "log": {
        "level": Key(str, "info", choices=("debug", "info", "warning", "error")),
    },
}


class Config:
    """All sections, validated. Build it with `load_config`."""

    source: SourceSection
    detector: DetectorSection
    model: ModelSection
    tracking: TrackingSection
    mqtt: MqttSection
    homeassistant: HomeAssistantSection
    spool: SpoolSection
    stats: StatsSection
    service: ServiceSection
    log: LogSection

    def __init__(self, values: dict[str, dict[str, Any]], path: Path | None, environ: Mapping[str, str] | None = None):
        self.path = path
        self._environ = os.environ if environ is None else environ
        for name, section in values.items():
            setattr(self, name, SECTION_TYPES[name](name, section))

    @property
    def device_id(self) -> str:
        return self.mqtt.device_id or _hostname_id()

    @property
    def state_dir(self) -> Path:
        if self.spool.dir:
            return Path(self.spool.dir).expanduser()
        # systemd sets STATE_DIRECTORY from StateDirectory=; it may list several, colon-separated.
        from_systemd = self._environ.get("STATE_DIRECTORY", "").split(":")[0]
        if from_systemd:
            return Path(from_systemd)
        return user_state_dir()

    def replaced(self, overrides: Mapping[str, Any]) -> Config:
        """A copy with some keys changed ({"section.key": value}), each checked like any other layer."""
        values = {name: getattr(self, name).as_dict() for name in SCHEMA}
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            _set(values, section, key, value)
        return Config(values, self.path, self._environ)

    def mqtt_password(self) -> str | None:
        """The broker password from `mqtt.password_file` or $EDGE_MOOD_MQTT_PASSWORD; never from argv."""
        if self.mqtt.password_file:
            path = Path(self.mqtt.password_file).expanduser()
            try:
                return path.read_text(encoding="utf-8-sig").strip()  # Notepad starts a file with a BOM
            except PermissionError:
                raise ConfigError(f"mqtt.password_file = {str(path)!r} {permission_denied(path)}") from None
            except OSError as exc:
                raise ConfigError(
                    f"mqtt.password_file = {str(path)!r} cannot be read ({exc.strerror}); "
                    f"point it at a readable file holding only the password"
                ) from None
            except UnicodeDecodeError:
                raise ConfigError(
                    f"mqtt.password_file = {str(path)!r} is not UTF-8 text; write the password into it as UTF-8"
                ) from None
        return self._environ.get(PASSWORD_ENV) or None


def read_denied(path: Path | str) -> str | None:
    """`permission_denied(path)` where `path` exists and this process may not read it (a folder: nor list it);
    None otherwise (a missing path is for the caller's own line)."""
    path = Path(path)
    needs = os.R_OK | (os.X_OK if path.is_dir() else 0)
    return permission_denied(path) if path.exists() and not os.access(path, needs) else None


def permission_denied(path: Path | str) -> str:
    """What to say of a file or folder the daemon may not read, with the fix. The service runs as a throwaway
    user whose only way to files under /etc is this group (systemd/edge-mood.service)."""
    if Path(path).is_dir():
        grant = f"sudo chgrp -R {SERVICE_GROUP} {path} && sudo chmod -R g+rX {path}"
    else:
        grant = f"sudo chgrp {SERVICE_GROUP} {path} && sudo chmod 0640 {path}"
    return (
        f"cannot be read (permission denied); the service reads files as group {SERVICE_GROUP}: {grant} (or run "
        "edge as a user who may read it)"
    )


# Section name -> its typed class, read from Config's annotations.
SECTION_TYPES: dict[str, type[Section]] = get_type_hints(Config)


def _hostname_id() -> str:
    return device_id_from_host(socket.gethostname())


def device_id_from_host(hostname: str) -> str:
    """A device id from a host name: its first label, other characters than letters, digits, - and _ as -
    (`pi.lan` -> `pi`). systemd/install.sh writes the same into the config it makes."""
    name = hostname.strip().split(".")[0]
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name) or "edge"


def parse_flag(text: str) -> bool:
    """'true', 'yes', 'on', '1' -> True; 'false', 'no', 'off', '0' -> False (any case); ValueError otherwise."""
    word = text.strip().lower()
    if word in ("true", "yes", "on", "1"):
        return True
    if word in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{text!r} is not yes or no")


def _bad(section: str, key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"config {section}.{key} = {value!r} is not allowed; expected {allowed}")


def _coerce(section: str, key: str, spec: Key, value: Any) -> Any:
    """Turn a TOML, environment or CLI value into the key's type, or fail naming the key."""
    allowed = spec.allowed or (f"one of {', '.join(spec.choices)}" if spec.choices else spec.kind.__name__)
    if spec.kind is list:
        return _coerce_list(section, key, spec, value)
    if isinstance(value, str) and spec.kind is not str:
        text = value.strip().lower()
        try:
            if spec.kind is bool:
                value = parse_flag(text)
            else:
                value = spec.kind(text)
        except ValueError:
            raise _bad(section, key, value, allowed) from None
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if spec.kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # `protocol = 5` or `uri = 0` in TOML mean the same as the strings
    if not isinstance(value, spec.kind) or (spec.kind is not bool and isinstance(value, bool)):
        raise _bad(section, key, value, allowed)
    if spec.choices and value not in spec.choices:
        raise _bad(section, key, value, allowed)
    if spec.check and not spec.check(value):
        raise _bad(section, key, value, allowed)
    if spec.is_path and isinstance(value, str) and value and (why := home_unknown(value)):
        raise ConfigError(f"config {section}.{key} = {value!r}: {why}")
    return value


def home_unknown(path: str) -> str | None:
    """Why `~user/...` in `path` cannot be expanded on this machine (no such user), with the fix; else None. A
    config copied from another machine (a Pi's `~pi/...`) names a user this one may not have."""
    try:
        Path(path).expanduser()
    except RuntimeError:
        user = path[1:].split("/", 1)[0]
        if not user:  # ~ alone, with no $HOME and no home in the user database
            return "~ stands for no folder here ($HOME is not set); write the full path"
        return f"there is no user {user!r} here for ~{user} to stand for; write the full path"
    return None


def _coerce_list(section: str, key: str, spec: Key, value: Any) -> tuple[str, ...]:
    """A TOML array of strings, or the same as one comma-separated string (environment, --set)."""
    items = [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise _bad(section, key, value, 'a list of names, e.g. ["fps", "cpu_percent"]')
    unknown = [item for item in items if spec.choices and item not in spec.choices]
    if unknown:
        raise ConfigError(
            f"config {section}.{key}: {', '.join(map(repr, unknown))} unknown; choose from {', '.join(spec.choices)}"
        )
    return tuple(items)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
        if text.startswith("\ufeff"):  # Windows editors put one in front; TOML allows none
            raise ConfigError(f"config file {path} starts with a byte order mark; save it as UTF-8 without BOM")
        return tomllib.loads(text)
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; give the path of the TOML file in it") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; copy edge/config.example.toml there or pass --config"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror}); check its permissions") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML ({exc}); fix that line") from None


def load_config(
    path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Defaults <- TOML file <- environment <- overrides ({"section.key": value})."""
    values = {section: {key: spec.default for key, spec in keys.items()} for section, keys in SCHEMA.items()}
    layers: list[tuple[str, str, Any, str]] = []  # section, key, value, where it was set (for the environment)
    if path is not None:
        data = _read_toml(path)
        for section, table in data.items():
            if not isinstance(table, dict):  # `host = "x"` above every [section] header
                owners = [name for name, keys in SCHEMA.items() if section in keys]
                raise ConfigError(
                    f"config key {section!r} in {path} stands above every [section]; move it under "
                    f"{' or '.join(f'[{name}]' for name in owners) or 'its section'}"
                )
            if section not in SCHEMA:
                raise ConfigError(
                    f"config section [{section}] in {path} is unknown; known sections: {', '.join(SCHEMA)}"
                )
            layers += [(section, key, _beside(path, section, key, value), "") for key, value in table.items()]
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name not in NOT_SETTINGS:
            layers.append((*_env_key(name[len(ENV_PREFIX) :], value), f"the environment variable {name}"))
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        layers.append((section, key, value, ""))
    for section, key, value, origin in layers:
        try:
            _set(values, section, key, value)
        except ConfigError as exc:
            # A value nobody finds in the file: say where it comes from (a shell, a systemd drop-in).
            raise ConfigError(f"{exc} (set by {origin})" if origin else str(exc)) from None
    if values["mqtt"]["password_file"] and env.get(PASSWORD_ENV):
        raise ConfigError(f"both mqtt.password_file and ${PASSWORD_ENV} are set; keep one of them")
    return Config(values, path, env)


def _beside(config_file: Path, section: str, key: str, value: Any) -> Any:
    """A relative path in a config file, made relative to the file's folder: the service runs in /, and the
    same file must mean the same files to `edge check` run anywhere."""
    spec = SCHEMA.get(section, {}).get(key)
    if spec is None or not spec.is_path or not isinstance(value, str) or not value:
        return value
    if home_unknown(value) or Path(value).expanduser().is_absolute():  # ~nobody: the key's own check says so
        return value
    return str(config_file.absolute().parent / value)


def _set(values: dict[str, dict[str, Any]], section: str, key: str, value: Any) -> None:
    """values[section][key] = value, checked against the schema."""
    if section not in SCHEMA:
        raise ConfigError(f"config section {section!r} is unknown; known sections: {', '.join(SCHEMA)}")
    if key not in SCHEMA[section]:
        raise ConfigError(f"config key {section}.{key} is unknown; keys of [{section}]: {', '.join(SCHEMA[section])}")
    values[section][key] = _coerce(section, key, SCHEMA[section][key], value)


def _env_key(rest: str, value: str) -> tuple[str, str, Any]:
    """EDGE_MOOD_MQTT_DEVICE_ID -> ("mqtt", "device_id"); sections never contain '_'."""
    section, _, key = rest.lower().partition("_")
    return section, key, value


def parse_set_option(text: str) -> tuple[str, str]:
    """`--set mqtt.host=broker.lan` -> ("mqtt.host", "broker.lan")."""
    dotted, sep, value = text.partition("=")
    if not sep or "." not in dotted:
        raise ConfigError(f"--set {text!r} is not of the form section.key=value, e.g. --set mqtt.host=broker.lan")
    return dotted.strip(), value
