"""Broker connection settings and the paho client built from them (shared by the daemon and `edge tail`)."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import Config, read_denied
from edge.errors import ConfigError, UserError
from edge.topics import Topics

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
PROTOCOL_ALIASES = {"5.0": "5", "v5": "5", "mqttv5": "5", "311": "3.1.1", "v311": "3.1.1", "mqttv311": "3.1.1"}

paho_logger = logging.getLogger("edge.mqtt.paho")


@dataclass(frozen=True, repr=False)
class MqttSettings:
    """Everything needed to reach the broker. The password is a value (read by the config layer from a
    file or the environment); it never appears in repr() or logs."""

    host: str = "localhost"
    port: int = 1883
    protocol: str = "5"  # "5" or "3.1.1"
    prefix: str = "edge-mood"
    device_id: str = "edge"
    username: str | None = None
    password: str | None = None
    tls: bool = False  # also on when tls_ca or tls_cert is set
    tls_ca: str | Path | None = None  # None: the system's CA certificates
    tls_cert: str | Path | None = None  # client certificate (PEM); the key may be inside it
    tls_key: str | Path | None = None
    tls_insecure: bool = False  # skip the host name check (like mosquitto_pub --insecure); chain still checked
    keepalive: int = 30
    qos: int = 1  # events and state; 1 or 2 for at-least-once, 0 gives that guarantee up
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    client_id: str | None = None  # None: "edge-mood-<device_id>"
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    inflight: int = 20  # events sent and not yet acknowledged, at most

    def __post_init__(self) -> None:
        protocol = PROTOCOL_ALIASES.get(str(self.protocol).lower(), str(self.protocol))
        if protocol not in PROTOCOLS:
            raise ConfigError(f'mqtt.protocol = {self.protocol!r} is not supported; use "5" or "3.1.1"')
        object.__setattr__(self, "protocol", protocol)
        if not self.device_id or set("/+#") & set(self.device_id):
            raise ConfigError(
                f"mqtt.device_id = {self.device_id!r} cannot be used in a topic; use letters, digits, - and _"
            )
        if not self.prefix or set("+#") & set(self.prefix) or self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ConfigError(
                f'mqtt.prefix = {self.prefix!r} is not a topic prefix; use e.g. "edge-mood" '
                f"(no wildcards, no leading or trailing /)"
            )
        if not 0 < self.port < 65536:
            raise ConfigError(f"mqtt.port = {self.port!r} is not a port number; use 1-65535 (1883, 8883 for TLS)")
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"mqtt.qos = {self.qos!r} is not allowed; use 1 (or 0 or 2)")
        if self.keepalive < 5:
            raise ConfigError(f"mqtt.keepalive = {self.keepalive!r} is too short; use 5 seconds or more")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError("mqtt reconnect delays must satisfy 0 < reconnect_min_s <= reconnect_max_s")
        if not 1 <= self.inflight <= 65535:
            raise ConfigError(f"mqtt inflight = {self.inflight!r} must be between 1 and 65535")

    @classmethod
    def from_config(cls, config: Config) -> MqttSettings:
        """The [mqtt] section, the device id and the password (read from its file or the environment)."""
        m = config.mqtt
        return cls(
            host=m.host,
            port=m.port,
            protocol=m.protocol,
            prefix=m.prefix,
            device_id=config.device_id,
            username=m.username or None,
            password=config.mqtt_password(),
            tls=m.tls,
            tls_ca=m.tls_ca or None,
            tls_cert=m.tls_cert or None,
            tls_key=m.tls_key or None,
            tls_insecure=m.tls_insecure,
            keepalive=m.keepalive,
            qos=m.qos,
            discovery=m.discovery,
            discovery_prefix=m.discovery_prefix,
        )

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={'***' if f.name == 'password' and self.password else repr(getattr(self, f.name))}"
            for f in fields(self)
        )
        return f"MqttSettings({shown})"

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix, self.device_id)

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.tls_ca or self.tls_cert)

    @property
    def broker(self) -> str:
        """'host:port' for log lines and errors."""
        return f"{self.host}:{self.port}"

    @property
    def description(self) -> str:
        """'broker.lan:8883 (MQTT 5, TLS, user pi)' for log lines."""
        extras = [f"MQTT {self.protocol}"] + (["TLS"] if self.uses_tls else [])
        if self.username:
            extras.append(f"user {self.username}")
        return f"{self.broker} ({', '.join(extras)})"

    @property
    def daemon_client_id(self) -> str:
        return self.client_id or f"edge-mood-{self.device_id}"


def make_client(settings: MqttSettings, client_id: str) -> mqtt.Client:
    """A paho 2.x client with the protocol, credentials and TLS of `settings`; not yet connected."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=PROTOCOLS[settings.protocol],
    )
    # An exception in one of our callbacks must not kill paho's network thread (and with it reconnects).
    client.suppress_exceptions = True
    client.on_log = _paho_log
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.uses_tls:
        _configure_tls(client, settings)
    return client


def _paho_log(_client: mqtt.Client, _userdata, level: int, text: str) -> None:
    # paho reports every failed reconnect attempt as an error; our callbacks already log one line per
    # outage, so paho's lines go to debug, except an exception caught in one of our callbacks (a bug).
    if text.startswith("Caught exception"):
        paho_logger.error("%s", text)
    else:
        paho_logger.debug("%s", text)


def _configure_tls(client: mqtt.Client, settings: MqttSettings) -> None:
    for key in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(settings, key)
        if path and not Path(path).expanduser().is_file():
            raise ConfigError(
                f"mqtt.{key} = {str(path)!r} is not a readable file; point it at the PEM file or leave it empty"
            )
        if path and (why := read_denied(Path(path).expanduser())):
            raise ConfigError(f"mqtt.{key} = {str(path)!r} {why}")
    try:
        client.tls_set(
            ca_certs=_expanded(settings.tls_ca),
            certfile=_expanded(settings.tls_cert),
            keyfile=_expanded(settings.tls_key),
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"mqtt TLS files cannot be loaded ({exc}); check that mqtt.tls_ca, tls_cert and "
            f"tls_key are PEM files and that the key belongs to the certificate"
        ) from None
    if settings.tls_insecure:
        client.tls_insecure_set(True)


def speaks_tls(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether a TLS server answers on host:port (a handshake without checking its certificate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host):
                return True
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return False


def _expanded(path: str | Path | None) -> str | None:
    return str(Path(path).expanduser()) if path else None


SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another client connected with our client id
# A connection closed sooner than this after it was made may have been taken over (brokers that just close it).
SHORT_CONNECTION_S = 10.0
TAKEOVER_WINDOW_S = 120.0  # short connections further apart than this are not one take-over


class TakeOverWatch:
    """Tells a session take-over (another client connected with our client id) from an ordinary outage. MQTT 5
    brokers may name it; others (MQTT 3.1.1, mosquitto 2.0.11 also under 5) just close the connection, so
    `drops` connections in a row that each lasted under SHORT_CONNECTION_S, within `window_s`, are read as one.
    A broker that went away refuses the attempts between (`unreachable`), which starts the count again."""

    def __init__(self, drops: int, window_s: float = TAKEOVER_WINDOW_S) -> None:
        self._ends: deque[float] = deque(maxlen=drops)  # when the short-lived connections ended
        self._window_s = window_s
        self._connected_at: float | None = None

    def connected(self) -> None:
        self._connected_at = time.monotonic()

    def unreachable(self) -> None:
        self._ends.clear()

    def taken_over(self, reason: mqtt.ReasonCode) -> bool:
        """Called when a connection that was up is closed by the broker."""
        now, connected_at, self._connected_at = time.monotonic(), self._connected_at, None
        if connected_at is not None and now - connected_at < SHORT_CONNECTION_S:
            self._ends.append(now)
        else:
            self._ends.clear()
        flapping = len(self._ends) == self._ends.maxlen and now - self._ends[0] < self._window_s
        return reason.value == SESSION_TAKEN_OVER or flapping


class BrokerError(UserError):
    """The broker cannot be reached or refuses us (for the one-shot tools; the daemon retries instead)."""


ANSWER_TIMEOUT_S = 5.0  # how long `edge tail` and `edge check` wait for the broker's answer to CONNECT


def untrusted_certificate(settings: MqttSettings, exc: ssl.SSLCertVerificationError) -> str:
    """The line for a broker certificate the TLS check refuses (the daemon's and the tools')."""
    return (
        f"broker {settings.broker}'s certificate is not trusted ({exc.verify_message}); mqtt.tls_ca must name "
        f"the CA that signed it, made out to the name in mqtt.host"
    )


def tls_mismatch_hint(settings: MqttSettings) -> str | None:
    """The line for TLS on one side only, where that is so: plain MQTT sent to a port that speaks TLS, or TLS
    to a port that takes the connection and does not; None otherwise."""
    tls_port = speaks_tls(settings.host, settings.port)
    if not settings.uses_tls and tls_port:
        return (
            f"broker {settings.broker} speaks TLS on port {settings.port} but mqtt.tls is off; set mqtt.tls = true "
            f"(and mqtt.tls_ca if needed) or use the broker's plain port (1883)"
        )
    if settings.uses_tls and not tls_port and _takes_connections(settings.host, settings.port):
        return (
            f"broker {settings.broker} does not speak TLS on port {settings.port} but mqtt.tls is on; use the "
            f"broker's TLS port (8883) or set mqtt.tls = false"
        )
    return None


def _takes_connections(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def failed_tls_handshake(exc: BaseException | None) -> bool:
    """Whether a failed connection attempt may be TLS meeting a port that does not speak it: the broker
    resets the connection, or the handshake reads something that is not TLS."""
    return isinstance(exc, (ConnectionResetError, ssl.SSLError)) and not isinstance(exc, ssl.SSLCertVerificationError)


def connect_or_raise(client: mqtt.Client, settings: MqttSettings) -> None:
    """Blocking connect for `edge tail` and `edge check`: an unreachable broker is one clear line."""
    try:
        client.connect(settings.host, settings.port, settings.keepalive)
    except ssl.SSLCertVerificationError as exc:
        raise BrokerError(untrusted_certificate(settings, exc)) from None
    except OSError as exc:
        if settings.uses_tls and failed_tls_handshake(exc) and (hint := tls_mismatch_hint(settings)):
            raise BrokerError(hint) from None
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise BrokerError(
            f"broker {settings.broker} unreachable ({why}); check mqtt.host / mqtt.port "
            f"(or --broker) and that the broker is running"
        ) from None


def no_answer_error(settings: MqttSettings) -> BrokerError:
    """A broker port that took the connection but never answered CONNECT: most often TLS on one side only."""
    tls_hint = tls_mismatch_hint(settings)
    if tls_hint is not None:
        return BrokerError(tls_hint)
    return BrokerError(
        f"broker {settings.broker} took the connection but did not answer the MQTT handshake; "
        f"check mqtt.host, mqtt.port and mqtt.tls"
    )


def refused_error(settings: MqttSettings, reason: object) -> BrokerError:
    return BrokerError(
        f"broker {settings.broker} refused the connection ({reason}); check mqtt.username "
        f"and the password (mqtt.password_file or $EDGE_MOOD_MQTT_PASSWORD)"
    )
