"""Publishes spooled events, the retained state, stats and the online/offline status to the broker.

Threads: paho's network thread runs the connection (connect_async + loop_start, reconnects with
back-off, never raises into the caller) and only hands acknowledgements over through a queue; one
worker thread of ours reads the spool, publishes and commits acks to the spool, so SQLite fsyncs never
stall the network thread.

Ordering and no loss:
- events are published in seq order, at most `settings.inflight` unacknowledged at a time, and are
  removed from the spool only on the broker's PUBACK (QoS 1);
- after a reconnect paho re-sends, in order, the ones that were in flight; new ones follow only once the
  "online" birth message sent first on that connection is acknowledged, which proves paho's re-sends
  have already been written ahead of them;
- a restarted process re-sends everything still in the spool, so a consumer sees every event at least
  once and in seq order after dropping seqs it already has.

Home Assistant discovery configs go out retained after the birth message on every connect, and again
whenever Home Assistant announces itself "online" on its status topic (it restarted, or its broker lost
the retained configs). A retained config under the device's node id that it does not offer now, left by an
earlier run, is cleared as the broker hands it over.

Faults of the broker's setup that would otherwise show only as a reconnect loop get one line each: another
client taking over our client id (session take-over) and a broker port that speaks TLS while we do not.
"""

from __future__ import annotations

import errno
import json
import logging
import queue
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt

from edge.discovery import HomeAssistantOptions, discovery_messages, node_configs_filter, node_id, retired_topics
from edge.errors import UserError
from edge.mqtt_client import (
    SESSION_TAKEN_OVER,
    MqttSettings,
    TakeOverWatch,
    failed_tls_handshake,
    make_client,
    tls_mismatch_hint,
    untrusted_certificate,
)
from edge.spool import Spool
from edge.topics import OFFLINE, ONLINE, Topics

__all__ = ["MqttSettings", "Publisher"]

logger = logging.getLogger(__name__)

IDLE_WAKE_S = 1.0  # the worker also looks at the spool this often without being woken

# Short connections in a row read as a session take-over where the broker gives no reason (TakeOverWatch).
TAKEOVER_DROPS = 3


class Publisher:
    """Owns the broker connection of the daemon. Start once, stop once.

    `labels`, `model` and `home_assistant` only shape the Home Assistant discovery configs.
    """

    def __init__(
        self,
        settings: MqttSettings,
        spool: Spool,
        *,
        labels: Sequence[str] = (),
        model: str | None = None,
        home_assistant: HomeAssistantOptions | None = None,
    ):
        home_assistant = home_assistant or HomeAssistantOptions()
        self.settings = settings
        self.spool = spool
        self.topics: Topics = settings.topics
        self._discovery = _discovery_payloads(settings, labels, model, home_assistant) if settings.discovery else []
        self._ha_status_topic = home_assistant.status_topic if settings.discovery else ""
        # Retained configs under this device's node id that it does not offer now are cleared when the broker
        # hands them over (see _clear_config). Not with discovery off: `edge demo` runs so, with the device's id.
        self._own_configs = node_configs_filter(self.topics, settings.discovery_prefix) if settings.discovery else ""
        self._offered = {topic for topic, payload in self._discovery if payload}
        self._cleared: set[str] = set()
        self._client = make_client(settings, settings.daemon_client_id)
        self._client.will_set(self.topics.status, OFFLINE, qos=1, retain=True)
        # paho's hint says int, but it only adds the delay to a clock: fractions of a second work.
        self._client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)  # type: ignore[arg-type]
        # Room for the birth, state and discovery messages beside the events' own window.
        self._client.max_inflight_messages_set(settings.inflight + len(self._discovery) + 4)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

        self._cond = threading.Condition()
        self._kick = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._acks: queue.SimpleQueue[tuple[int, mqtt.ReasonCode | None]] = queue.SimpleQueue()

        # Connection generations: +1 on every connect and disconnect. Events flow only while the
        # birth message of the current generation has been acknowledged.
        self._conn_lock = threading.Lock()
        self._generation = 0
        self._birth: tuple[int, int] | None = None  # (mid, generation)
        self._ready_generation = -1
        self._up = False
        self._outage_since: float | None = None
        self._outage_causes: set[str] = set()  # what this outage's log lines named: one line per cause
        self._refused = False  # the broker answered this attempt's CONNECT with a refusal
        self._announce_backlog = False
        self._takeover = TakeOverWatch(TAKEOVER_DROPS)
        self._takeover_reported = False
        self._quiet_reconnect = False  # after a reported take-over, its reconnects are not news
        self._rediscover = False  # Home Assistant came online: send the discovery configs again

        # Worker-thread state.
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._sent_upto = 0
        self._state: bytes | None = None
        self._state_dirty = False
        self._dropped_seen = spool.dropped
        self._drop_warned = False
        self._refusal_logged = False
        self._last_error: str | None = None

    # -- public ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; never raises because the broker is down (it logs one line and
        keeps retrying with back-off while events go on being spooled)."""
        if self._thread is not None:
            raise RuntimeError("Publisher.start() called twice")
        logger.info(
            "MQTT: broker %s, topics %s/%s/..., client id %s%s",
            self.settings.description,
            self.settings.prefix,
            self.settings.device_id,
            self.settings.daemon_client_id,
            f", Home Assistant discovery under {self.settings.discovery_prefix}/+/{node_id(self.topics)}/"
            if self.settings.discovery
            else ", Home Assistant discovery off",
        )
        self._outage_since = time.monotonic()
        self._announce_backlog = self.spool.depth > 0
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        self._client.loop_start()

    def wake(self) -> None:
        """Tell the publisher that events were appended to the spool."""
        with self._cond:
            self._kick = True
            self._cond.notify_all()

    def publish_state(self, state: dict[str, Any]) -> None:
        """Set the retained state. Only the newest is kept; it is (re)published as soon as connected."""
        payload = json.dumps(state, separators=(",", ":")).encode()
        with self._cond:
            self._state = payload
            self._state_dirty = True
            self._kick = True
            self._cond.notify_all()

    def publish_stats(self, stats: dict[str, Any]) -> bool:
        """Publish one stats message (QoS 0) if connected; stats of an outage are not kept."""
        if not self.connected:
            return False
        info = self._client.publish(self.topics.stats, json.dumps(stats, separators=(",", ":")), qos=0)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    @property
    def connected(self) -> bool:
        """Connected and past the birth message: events are flowing."""
        with self._conn_lock:
            return self._ready_generation == self._generation

    @property
    def in_flight(self) -> int:
        """Events sent and not yet acknowledged."""
        return len(self._inflight)

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the spool is empty (every event acknowledged) and no event waits in memory; False on
        timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.spool.depth == 0 and self.spool.held == 0, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Let in-flight events be acknowledged, publish the retained "offline", disconnect.

        Events beyond the last in-flight window, or not acknowledged in time, stay in the spool for the next
        start. Returns within about `timeout` seconds (plus at most one connect attempt) also when the broker
        is away.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        # Acks for what is in flight spare the next start from sending those events twice.
        self._handle_acks()
        while self._inflight and self.connected and time.monotonic() < deadline:
            with self._cond:
                self._cond.wait_for(lambda: self._kick, 0.1)
                self._kick = False
            self._handle_acks()
        if self._client.is_connected():
            info = self._client.publish(self.topics.status, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                logger.debug("the offline status could not be sent")
        with self._conn_lock:
            self._generation += 1
        self._client.disconnect()
        self._client.loop_stop()
        left = self.spool.depth
        logger.info("MQTT: disconnected%s", f"; {left} events stay in the spool" if left else "")

    # -- worker thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._kick or self._stopping, IDLE_WAKE_S)
                self._kick = False
                stopping = self._stopping
            try:
                self.spool.retry()  # events and acks a full disk left in memory
                self._handle_acks()
                if not stopping:
                    self._warn_about_drops()
                if self.connected:
                    if not stopping:
                        self._send_discovery_again()
                    # Also on the way out: the last state and the events spooled just before stop() (the faces
                    # that left) go out, one in-flight window of them; stop() waits for their acknowledgements.
                    self._send_state()
                    self._send_events()
                if stopping:
                    return
                self._last_error = None
            except UserError as exc:  # the spool failed (disk full, file gone): say so once, keep trying
                if str(exc) != self._last_error:
                    logger.error("%s", exc)
                    self._last_error = str(exc)
            except Exception:  # a bug must not silently end publishing
                logger.exception("MQTT publisher: unexpected error; continuing")

    def _handle_acks(self) -> None:
        acked = []
        while True:
            try:
                mid, reason = self._acks.get_nowait()
            except queue.Empty:
                break
            if self._birth is not None and mid == self._birth[0]:
                # Forgotten once acknowledged: after the ids wrap (65535) an event may be handed this id.
                birth_generation, self._birth = self._birth[1], None
                self._on_ready(birth_generation)
                continue
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue  # state, stats or discovery
            if reason is not None and reason.is_failure:
                # Kept in the spool; sent again after a restart. Logged once: the cause is the broker's setup.
                if not self._refusal_logged:
                    logger.error(
                        "broker %s refused event seq %d on %s (%s); it stays in the spool; allow this "
                        "client to publish there (broker ACL)",
                        self.settings.broker,
                        seq,
                        self.topics.events,
                        reason,
                    )
                    self._refusal_logged = True
                continue
            acked.append(seq)
        if acked:
            self.spool.ack_many(acked)
            with self._cond:
                self._cond.notify_all()  # wait_drained()

    def _on_ready(self, generation: int) -> None:
        with self._conn_lock:
            if generation != self._generation:
                return  # that connection is gone already
            self._ready_generation = generation
        if self.settings.qos == 0:
            # paho does not re-send QoS 0 messages: anything unacknowledged goes again from the spool.
            self._inflight.clear()
            self._sent_upto = 0
        self._drop_warned = False
        self._refusal_logged = False
        with self._cond:
            self._state_dirty = self._state is not None
        backlog = self.spool.depth
        if backlog and self._announce_backlog:
            logger.info("MQTT: sending %d spooled events", backlog)
        self._announce_backlog = False

    def _send_state(self) -> None:
        with self._cond:
            payload, dirty = self._state, self._state_dirty
            self._state_dirty = False
        if dirty and payload is not None:
            self._client.publish(self.topics.state, payload, qos=self.settings.qos, retain=True)

    def _send_discovery_again(self) -> None:
        with self._cond:
            due, self._rediscover = self._rediscover, False
        if due:
            logger.info("Home Assistant is online (%s): discovery configs sent again", self._ha_status_topic)
            self._publish_discovery()

    def _publish_discovery(self) -> None:
        for topic, payload in self._discovery:
            self._client.publish(topic, payload, qos=1, retain=True)

    def _send_events(self) -> None:
        free = self.settings.inflight - len(self._inflight)
        if free <= 0:
            return
        for seq, payload in self.spool.pending(free, after=self._sent_upto):
            info = self._client.publish(self.topics.events, payload, qos=self.settings.qos)
            # QoS >= 1 messages stay queued inside paho when the connection has just dropped.
            queued = info.rc == mqtt.MQTT_ERR_SUCCESS or (info.rc == mqtt.MQTT_ERR_NO_CONN and self.settings.qos > 0)
            if not queued:
                break
            self._inflight[info.mid] = seq
            self._sent_upto = seq

    def _warn_about_drops(self) -> None:
        dropped = self.spool.dropped
        if dropped > self._dropped_seen and not self._drop_warned:
            logger.warning(
                "spool bound reached (at most %d events, none older than %.1f days): dropping the oldest "
                "events; %d dropped so far (stats: spool_dropped)",
                self.spool.max_events,
                self.spool.max_age_s / 86400,
                dropped,
            )
            self._drop_warned = True
        self._dropped_seen = dropped

    # -- paho callbacks (network thread) ---------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata, _flags, reason: mqtt.ReasonCode, _props) -> None:
        if reason.is_failure:
            self._refused = True
            self._log_outage(
                f"broker {self.settings.broker} refused the connection ({reason}); check "
                f"mqtt.username, the password and the broker's ACL; retrying",
                cause=f"refused {reason}",
                level=logging.ERROR,
            )
            return
        with self._conn_lock:
            self._generation += 1
            generation = self._generation
            self._up = True
        self._takeover.connected()
        if self._quiet_reconnect:
            logger.debug("MQTT: connected to broker %s again after a session take-over", self.settings.broker)
        elif self._outage_causes and self._outage_since is not None:
            logger.info(
                "MQTT: connected to broker %s again after %.0f s; %d events spooled meanwhile",
                self.settings.broker,
                time.monotonic() - self._outage_since,
                self.spool.depth,
            )
        else:
            logger.info("MQTT: connected to broker %s", self.settings.description)
        self._outage_since, self._outage_causes = None, set()
        # Birth first: its acknowledgement tells the worker that paho's re-sends are out (see module doc).
        info = client.publish(self.topics.status, ONLINE, qos=1, retain=True)
        self._birth = (info.mid, generation)
        self._publish_discovery()
        if self._own_configs:
            client.subscribe(self._own_configs, qos=1)
        if self._ha_status_topic:
            client.subscribe(self._ha_status_topic, qos=1)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata) -> None:
        self._takeover.unreachable()
        exc = sys.exc_info()[1]  # paho calls this from inside its `except OSError`
        if "lost" in self._outage_causes and _broker_gone(exc):
            return  # a broker restarting or a network gone: the "lost connection" line said so already
        # Per kind of failure: a broker back with a certificate we refuse is news after "refused" at boot.
        self._log_outage(lambda: self._unreachable_line(exc), cause=f"unreachable {type(exc).__name__}")

    def _unreachable_line(self, exc: BaseException | None) -> str:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"{untrusted_certificate(self.settings, exc)}; spooling events and retrying"
        if self.settings.uses_tls and failed_tls_handshake(exc) and (hint := tls_mismatch_hint(self.settings)):
            return f"{hint}; spooling events and retrying"
        why = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__) if exc else "no answer"
        return f"broker {self.settings.broker} unreachable ({why}); spooling events and retrying"

    def _on_disconnect(self, _client: mqtt.Client, _userdata, _flags, reason: mqtt.ReasonCode, _props) -> None:
        with self._conn_lock:
            self._generation += 1
            was_up, self._up = self._up, False
        if self._stopping:
            return
        if not was_up:
            if not self._refused:  # closed before the broker answered CONNECT
                self._log_outage(self._handshake_failure, cause="handshake")
            self._refused = False
            return
        self._outage_since = time.monotonic()
        self._quiet_reconnect = self._taken_over(reason)
        if self._quiet_reconnect:
            logger.debug("MQTT: session taken over by another client with id %s", self.settings.daemon_client_id)
            self._outage_causes.add("taken over")
            return
        why = "connection closed" if reason.value == 0x80 else str(reason)  # 0x80: paho's code for a socket error
        self._log_outage(
            f"lost connection to broker {self.settings.broker} ({why}); spooling events and retrying", cause="lost"
        )

    def _taken_over(self, reason: mqtt.ReasonCode) -> bool:
        """Whether another client with our client id pushed us off; logged once, with the fix."""
        if not self._takeover.taken_over(reason):
            return False
        if not self._takeover_reported:
            # Without the MQTT 5 reason, a broker that restarts again and again within seconds looks the same.
            maybe_restarts = "" if reason.value == SESSION_TAKEN_OVER else " (or the broker keeps restarting)"
            logger.error(
                "broker %s keeps dropping this connection for another client with the same client id %s "
                "(session take-over)%s; give every device its own mqtt.device_id, and each device its own "
                "broker login restricted by an ACL so no other client can use its id (docs/reliability.md)",
                self.settings.broker,
                self.settings.daemon_client_id,
                maybe_restarts,
            )
            self._takeover_reported = True
        return True

    def _handshake_failure(self) -> str:
        """The line for a broker that closed the connection before answering CONNECT."""
        settings = self.settings
        tls_hint = tls_mismatch_hint(settings)
        if tls_hint is not None:
            return f"{tls_hint}; retrying"
        return (
            f"broker {settings.broker} closed the connection before answering the MQTT handshake; check "
            f"mqtt.port, mqtt.protocol and mqtt.tls against the broker's listener; retrying"
        )

    def _on_message(self, client: mqtt.Client, _userdata, message: mqtt.MQTTMessage) -> None:
        if self._own_configs and mqtt.topic_matches_sub(self._own_configs, message.topic):
            self._clear_config(client, message)
        else:
            self._on_ha_status(message)

    def _clear_config(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        """A retained config of this device that it does not offer now (an entity of an earlier run: another
        model's labels, a diagnostic or the triggers switched off) is cleared, which removes the entity from
        Home Assistant. Only retained ones: the rest are this run's own configs passing by."""
        if not message.retain or not message.payload or message.topic in self._offered:
            return
        client.publish(message.topic, b"", qos=1, retain=True)
        if message.topic not in self._cleared:
            self._cleared.add(message.topic)
            logger.info("Home Assistant: removed %s, which this configuration no longer offers", message.topic)

    def _on_ha_status(self, message: mqtt.MQTTMessage) -> None:
        # A retained "online" (where Home Assistant's birth is set to retain) comes with every connect, which
        # sends the configs anyway; a live one means Home Assistant has just (re)started.
        if message.topic == self._ha_status_topic and message.payload == ONLINE.encode() and not message.retain:
            with self._cond:
                self._rediscover = True
                self._kick = True
                self._cond.notify_all()

    def _on_publish(self, _client: mqtt.Client, _userdata, mid: int, reason: mqtt.ReasonCode | None, _props) -> None:
        self._acks.put((mid, reason))
        self.wake()

    def _log_outage(self, line: str | Callable[[], str], cause: str, level: int = logging.WARNING) -> None:
        """One line per cause of an outage, not one per reconnect attempt: when the cause changes (the broker
        was unreachable at boot and now refuses this login), the new one gets its line too. A line that costs
        work to make (a probe of the broker's port) comes as a function, called only when it is said."""
        if self._outage_since is None:
            self._outage_since = time.monotonic()
        if cause not in self._outage_causes:
            logger.log(level, "%s", line() if callable(line) else line)
            self._outage_causes.add(cause)


def _broker_gone(exc: BaseException | None) -> bool:
    """Whether a failed connection attempt only says the broker or the network is not there (yet)."""
    if isinstance(exc, (ConnectionRefusedError, TimeoutError, socket.gaierror)):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)


def _discovery_payloads(
    settings: MqttSettings, labels: Sequence[str], model: str | None, options: HomeAssistantOptions
) -> list[tuple[str, bytes]]:
    """The retained discovery messages: every config, then an empty payload (which removes the entity from
    Home Assistant) for each entity the user switched off."""
    prefix = settings.discovery_prefix
    configs = discovery_messages(settings.topics, discovery_prefix=prefix, labels=labels, model=model, options=options)
    retired = retired_topics(settings.topics, discovery_prefix=prefix, labels=labels, options=options)
    return [(topic, json.dumps(config).encode()) for topic, config in configs] + [(topic, b"") for topic in retired]
