"""Payload builders, and the JSON schemas checked against payloads as a real broker delivered them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from edge.payloads import event_payload, iso_utc, state_payload, stats_payload
from edge.publisher import MqttSettings, Publisher
from edge.spool import Spool

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def validator(kind: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"mqtt-{kind}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def scores(top: str, p: float) -> dict[str, float]:
    rest = (1 - p) / (len(LABELS) - 1)
    return {label: (p if label == top else rest) for label in LABELS}


def make_event(kind: str = "expression", **changes) -> dict:
    args = dict(
        device="cam1",
        type=kind,
        frame=120,
        ts=1_790_000_000.1234,
        track_id=3,
        expression="happy",
        confidence=0.912345,
        scores=scores("happy", 0.912345),
        bbox_norm=(0.25, 0.1, 0.2, 0.3),
        model="student_s@0123456789ab",
        extra={"previous": "neutral"},
    )
    args.update(changes)
    return event_payload(**args)


def test_iso_utc_has_milliseconds_and_z():
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1_790_000_000.1234) == "2026-09-21T14:13:20.123Z"


def test_event_payload_fields_and_rounding():
    event = make_event()
    assert event["schema"] == 1 and event["device"] == "cam1" and event["type"] == "expression"
    assert event["ts"] == "2026-09-21T14:13:20.123Z" and event["ts_unix"] == 1_790_000_000.123
    assert event["confidence"] == 0.9123
    assert event["scores"]["happy"] == 0.9123 and set(event["scores"]) == set(LABELS)
    assert event["bbox"] == {"x": 0.25, "y": 0.1, "w": 0.2, "h": 0.3}
    assert event["previous"] == "neutral"
    assert "seq" not in event and "epoch" not in event  # the spool adds them


def test_event_bbox_is_clipped_to_the_frame():
    event = make_event(bbox_norm=(-0.1, 0.9, 0.3, 0.2))
    assert event["bbox"] == {"x": 0.0, "y": 0.9, "w": 0.2, "h": 0.1}
    event = make_event(bbox_norm={"x": 0.5, "y": 0.5, "w": 0.1, "h": 0.1})
    assert event["bbox"] == {"x": 0.5, "y": 0.5, "w": 0.1, "h": 0.1}


@pytest.mark.parametrize(
    "kind, extra, expression",
    [
        ("face_enter", {}, None),
        ("expression", {"previous": None}, "sad"),
        ("face_leave", {"duration_s": 12.3456}, "sad"),
        ("face_leave", {"duration_s": 0.5}, None),
    ],
)
def test_every_event_type_fits_the_schema(kind, extra, expression):
    event = make_event(kind, extra=extra, expression=expression, confidence=0.8 if expression else None)
    validator("event").validate({**event, "seq": 7, "epoch": "0123456789ab"})


def test_the_schema_rejects_what_consumers_must_not_see():
    check = validator("event")
    good = {**make_event(), "seq": 1, "epoch": "0123456789ab"}
    assert check.is_valid(good)
    assert not check.is_valid({k: v for k, v in good.items() if k != "seq"})
    assert not check.is_valid({k: v for k, v in good.items() if k != "epoch"})
    assert not check.is_valid({**good, "epoch": "not hex"})
    assert not check.is_valid({**good, "type": "smile"})
    assert not check.is_valid({**good, "bbox": {"x": 1.5, "y": 0, "w": 0, "h": 0}})
    assert not check.is_valid({k: v for k, v in good.items() if k != "previous"})  # expression needs previous
    leave = {**make_event("face_leave", extra={}), "seq": 2, "epoch": "0123456789ab"}
    assert not check.is_valid(leave)  # face_leave needs duration_s


def test_event_payload_refuses_bad_input():
    with pytest.raises(ValueError, match="event type"):
        make_event("wave")
    with pytest.raises(ValueError, match="overwrite"):
        make_event(extra={"seq": 5})
    with pytest.raises(ValueError, match="overwrite"):
        make_event(extra={"epoch": "0123456789ab"})
    with pytest.raises(ValueError, match="finite"):
        make_event(confidence=float("nan"))


def face(track_id: int, expression: str | None, confidence: float | None) -> dict:
    return {
        "track_id": track_id,
        "expression": expression,
        "confidence": confidence,
        "bbox": {"x": 0.1 * track_id, "y": 0.1, "w": 0.1, "h": 0.2},
    }


def test_state_mood_is_the_expression_with_the_most_confidence():
    state = state_payload(
        device="cam1",
        ts=time.time(),
        model="m@1",
        faces=[face(1, "happy", 0.6), face(2, "happy", 0.5), face(3, "sad", 0.9), face(4, None, None)],
    )
    assert state["face_count"] == 4
    assert state["mood"] == "happy"  # 1.1 summed beats 0.9
    assert state["mood_confidence"] == round(1.1 / 3, 4)  # 3 settled faces
    assert state["counts"] == {"happy": 2, "sad": 1}
    assert [f["expression"] for f in state["faces"]] == ["happy", "happy", "sad", None]
    validator("state").validate(state)


def test_state_of_an_empty_room_or_of_faces_still_settling_has_no_mood():
    for faces in ([], [face(1, None, None)]):
        state = state_payload(device="cam1", ts=time.time(), faces=faces, model="m@1")
        assert state["mood"] is None and state["mood_confidence"] is None
        assert state["face_count"] == len(faces)
        validator("state").validate(state)


def test_one_face_gives_the_room_its_own_mood_and_confidence():
    state = state_payload(device="cam1", ts=0.0, model="m", faces=[face(1, "surprise", 0.83)])
    assert (state["mood"], state["mood_confidence"]) == ("surprise", 0.83)


def test_state_ties_go_to_more_faces_then_to_the_name():
    state = state_payload(
        device="cam1", ts=0.0, model="m", faces=[face(1, "sad", 0.8), face(2, "happy", 0.4), face(3, "happy", 0.4)]
    )
    assert state["mood"] == "happy"
    state = state_payload(device="cam1", ts=0.0, model="m", faces=[face(1, "sad", 0.5), face(2, "happy", 0.5)])
    assert state["mood"] == "sad"


def test_stats_payload_rounds_and_keeps_any_field():
    stats = stats_payload(
        device="cam1",
        ts=time.time(),
        fps=14.87654,
        stage_ms={"detect": 12.34567, "classify": 3.1},
        faces=2,
        frames=1000,
        frames_dropped=3,
        frames_corrupt=0,
        spool_depth=0,
        spool_dropped=0,
        cpu_percent=41.23456,
        rss_mb=88.8,
        uptime_s=3600.0,
        custom_counter=7,
    )
    assert stats["fps"] == 14.877 and stats["stage_ms"] == {"detect": 12.346, "classify": 3.1}
    assert stats["custom_counter"] == 7
    validator("stats").validate(stats)
    with pytest.raises(ValueError, match="overwrite"):
        stats_payload(device="cam1", ts=0.0, ts_unix=5)


def test_payloads_captured_from_a_real_broker_fit_the_schemas(broker, subscriber, tmp_path):
    """Everything the publisher puts on the wire, as a subscriber receives it."""
    sub = subscriber(broker, "edge-mood/#")
    spool = Spool(tmp_path / "spool.sqlite3")
    publisher = Publisher(
        MqttSettings(host=broker.host, port=broker.port, protocol=broker.protocol, device_id="cam1", discovery=False),
        spool,
        labels=LABELS,
    )
    publisher.start()
    try:
        now = time.time()
        publisher.spool.append(make_event("face_enter", ts=now, extra={}, expression=None, confidence=None))
        publisher.wake()
        publisher.spool.append(make_event("expression", ts=now + 1, extra={"previous": None}))
        publisher.wake()
        publisher.spool.append(make_event("face_leave", ts=now + 2, extra={"duration_s": 4.2}))
        publisher.wake()
        publisher.publish_state(state_payload(device="cam1", ts=now, faces=[face(1, "happy", 0.9)], model="m@1"))
        sub.wait_for(3, topic="edge-mood/cam1/events")
        sub.wait_for(1, topic="edge-mood/cam1/state")
        assert publisher.publish_stats(stats_payload(device="cam1", ts=now, fps=15.0, spool_depth=spool.depth))
        sub.wait_for(1, topic="edge-mood/cam1/stats")
    finally:
        publisher.stop()
        spool.close()
    sub.wait_until(lambda got: any(m.text == "offline" for m in got), topic="edge-mood/cam1/status")
    for kind in ("events", "state", "stats"):
        check = validator("event" if kind == "events" else kind)
        for message in sub.received(f"edge-mood/cam1/{kind}"):
            check.validate(message.json())
    statuses = [m.text for m in sub.received("edge-mood/cam1/status")]
    assert statuses[0] == "online" and statuses[-1] == "offline"
    for text in statuses:
        validator("status").validate(text)
