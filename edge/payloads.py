"""The JSON bodies published over MQTT, as plain dicts. schemas/mqtt-*.schema.json describe them.

Every payload carries "schema": 1 (bumped on an incompatible change), the device id and the time twice:
"ts" (ISO-8601 UTC with milliseconds, for people and databases) and "ts_unix" (seconds, for code).
Events get their "seq" and "epoch" from the spool when they are stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from edge.boxes import clipped

SCHEMA_VERSION = 1
EVENT_TYPES = ("face_enter", "expression", "face_leave")
SCORE_DECIMALS = 4

_EVENT_KEYS = (
    "schema",
    "device",
    "seq",
    "epoch",
    "ts",
    "ts_unix",
    "frame",
    "type",
    "track_id",
    "expression",
    "confidence",
    "scores",
    "bbox",
    "model",
)


def iso_utc(ts: float) -> str:
    """Unix seconds -> '2026-05-09T07:35:25.123Z'."""
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def event_payload(
    *,
    device: str,
    type: str,
    frame: int,
    ts: float,
    track_id: int,
    expression: str | None,
    confidence: float | None,
    scores: Mapping[str, float],
    bbox_norm: Sequence[float] | Mapping[str, float],
    model: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One face event. `expression`/`confidence` are None on a face_enter (nothing settled yet) and on a
    face_leave of a face whose expression never settled. `extra` holds the type's own fields
    (expression: "previous"; face_leave: "duration_s")."""
    if type not in EVENT_TYPES:
        raise ValueError(f"event type {type!r} is not one of {EVENT_TYPES}")
    payload: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "device": device,
        "ts": iso_utc(ts),
        "ts_unix": round(ts, 3),
        "frame": int(frame),
        "type": type,
        "track_id": int(track_id),
        "expression": expression,
        "confidence": _score(confidence) if confidence is not None else None,
        "scores": {str(label): _score(p) for label, p in scores.items()},
        "bbox": _bbox(bbox_norm),
        "model": model,
    }
    for key, value in (extra or {}).items():
        if key in _EVENT_KEYS:
            raise ValueError(f"extra field {key!r} would overwrite a standard event field")
        payload[key] = _rounded(value, 3)
    return payload


def state_payload(*, device: str, ts: float, faces: Sequence[Mapping[str, Any]], model: str) -> dict[str, Any]:
    """The room now: every visible face with its settled expression (None while it settles) and the mood.

    Each face needs "track_id", "expression", "confidence" and "bbox" ({x,y,w,h} or (x,y,w,h), 0..1).
    The mood is the settled expression with the largest summed confidence over the faces (ties: more
    faces, then the name later in alphabetical order). mood_confidence is that sum divided by the number of
    settled faces, so it is high only when most faces agree and are sure (one face: its own confidence).
    Both None with no settled face.
    """
    listed: list[dict[str, Any]] = []
    for face in faces:
        expression = face.get("expression")
        confidence = face.get("confidence")
        listed.append(
            {
                "track_id": int(face["track_id"]),
                "expression": expression,
                "confidence": _score(confidence) if expression is not None and confidence is not None else None,
                "bbox": _bbox(face["bbox"]),
            }
        )
    weight: dict[str, float] = {}
    counts: dict[str, int] = {}
    for face in listed:
        if face["expression"] is None:
            continue
        weight[face["expression"]] = weight.get(face["expression"], 0.0) + (face["confidence"] or 0.0)
        counts[face["expression"]] = counts.get(face["expression"], 0) + 1
    mood = max(counts, key=lambda e: (weight[e], counts[e], e)) if counts else None
    mood_confidence = _score(weight[mood] / sum(counts.values())) if mood is not None else None
    return {
        "schema": SCHEMA_VERSION,
        "device": device,
        "ts": iso_utc(ts),
        "ts_unix": round(ts, 3),
        "face_count": len(listed),
        "mood": mood,
        "mood_confidence": mood_confidence,
        "counts": dict(sorted(counts.items())),
        "faces": listed,
        "model": model,
    }


def stats_payload(*, device: str, ts: float, **fields: Any) -> dict[str, Any]:
    """Health numbers (fps, stage_ms, faces, frames, frames_dropped, frames_corrupt, spool_depth,
    spool_dropped, cpu_percent, rss_mb, uptime_s, ...); floats rounded to 3 places."""
    payload: dict[str, Any] = {"schema": SCHEMA_VERSION, "device": device, "ts": iso_utc(ts), "ts_unix": round(ts, 3)}
    for key, value in fields.items():
        if key in payload:
            raise ValueError(f"stats field {key!r} would overwrite a standard field")
        payload[key] = _rounded(value, 3)
    return payload


def _score(value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"score {value} is not a finite number")
    return round(value, SCORE_DECIMALS)


def _bbox(box: Sequence[float] | Mapping[str, float]) -> dict[str, float]:
    """Normalised (x, y, w, h) clipped to the frame, 4 decimals (0.1 px on a 1000 px frame)."""
    x, y, w, h = (box["x"], box["y"], box["w"], box["h"]) if isinstance(box, Mapping) else box
    x, y, w, h = clipped((float(x), float(y), float(w), float(h)), 1.0, 1.0)
    return {"x": round(x, 4), "y": round(y, 4), "w": round(w, 4), "h": round(h, 4)}


def _rounded(value: Any, places: int) -> Any:
    """Floats (also numpy scalars and inside dicts/lists) rounded for compact JSON; NaN/inf -> None."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _rounded(v, places) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, places) for v in value]
    if isinstance(value, int):
        return value
    if hasattr(value, "item"):  # numpy scalar
        return _rounded(value.item(), places)
    if isinstance(value, float):
        return round(value, places) if math.isfinite(value) else None
    return value
