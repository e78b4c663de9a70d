"""MQTT topic names: <prefix>/<device>/status | events | state | stats."""

from __future__ import annotations

from dataclasses import dataclass

ONLINE = "online"
OFFLINE = "offline"
KINDS = ("events", "state", "stats", "status")


@dataclass(frozen=True)
class Topics:
    prefix: str
    device: str

    @property
    def events(self) -> str:
        """One JSON message per event, QoS 1, not retained."""
        return f"{self.prefix}/{self.device}/events"

    @property
    def state(self) -> str:
        """Retained: the faces in view now and the room's mood."""
        return f"{self.prefix}/{self.device}/state"

    @property
    def stats(self) -> str:
        """Periodic health numbers, QoS 0, not retained."""
        return f"{self.prefix}/{self.device}/stats"

    @property
    def status(self) -> str:
        """Retained "online" / "offline" (birth message and last will)."""
        return f"{self.prefix}/{self.device}/status"


def subscription(prefix: str, kind: str, device: str | None = None) -> str:
    """The filter for one kind of message of one device, or of every device (`device=None`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}; one of {', '.join(KINDS)}")
    return f"{prefix}/{device or '+'}/{kind}"


def parse(prefix: str, topic: str) -> tuple[str, str] | None:
    """'edge-mood/kitchen/events' -> ('kitchen', 'events'); None for a topic outside the layout."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1 :].split("/")
    if len(parts) != 2 or parts[1] not in KINDS:
        return None
    return parts[0], parts[1]
