"""The config's sections as typed classes, so the type checker knows `config.mqtt.port` is an int.

config.SCHEMA holds each key's default and rule; here each key is declared once more with its type only.
tests/test_config.py checks that the two list the same keys with the same types: a new key goes in both.
"""

from __future__ import annotations

from typing import Any


class Section:
    """Attribute access to one validated section: `config.mqtt.host`."""

    def __init__(self, name: str, values: dict[str, Any]):
        self._name = name
        self.__dict__.update(values)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class SourceSection(Section):
    uri: str
    width: int
    height: int
    fps: float
    realtime: bool
    reconnect_max_s: float


class DetectorSection(Section):
    kind: str
    yunet_model: str
    yunet_url: str
    yunet_sha256: str
    detect_width: int
    score_threshold: float
    min_face_px: int
    detect_every: int
    adaptive_width: bool
    idle_fps: float
    threads: int


class ModelSection(Section):
    path: str
    precision: str
    threads: int
    spin_wait: bool
    classify_every: int


class TrackingSection(Section):
    iou_threshold: float
    max_jump: float
    ema_alpha: float
    min_confidence: float
    switch_margin: float
    settle_frames: int
    enter_frames: int
    leave_after_s: float
    leave_after_frames: int


class MqttSection(Section):
    host: str
    port: int
    protocol: str
    prefix: str
    device_id: str
    username: str
    password_file: str
    tls: bool
    tls_ca: str
    tls_cert: str
    tls_key: str
    tls_insecure: bool
    keepalive: int
    qos: int
    discovery: bool
    discovery_prefix: str


class HomeAssistantSection(Section):
    name: str
    suggested_area: str
    expire_after_s: int
    diagnostics: list
    device_triggers: bool
    status_topic: str
    support_url: str


class SpoolSection(Section):
    dir: str
    max_events: int
    max_age_days: float
    memory_events: int


class StatsSection(Section):
    interval_s: float


class ServiceSection(Section):
    stall_timeout_s: float


class LogSection(Section):
    level: str
