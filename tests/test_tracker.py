"""Tracker: stable ids, smoothing and hysteresis turn flickering scores into settled events."""

from __future__ import annotations

import numpy as np

from edge.tracker import Detection, Tracker, TrackerSettings, iou, jump

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def scores(label: str, p: float = 0.8) -> np.ndarray:
    s = np.full(len(LABELS), (1 - p) / (len(LABELS) - 1))
    s[LABELS.index(label)] = p
    return s


def run(tracker: Tracker, frames: list[list[Detection]], fps: float = 10.0):
    events = []
    for i, dets in enumerate(frames):
        events += tracker.update(dets, i / fps)
    return events


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert abs(iou((0, 0, 10, 10), (5, 0, 10, 10)) - 50 / 150) < 1e-9


def test_jump_is_in_face_sizes_whatever_the_units_of_each_axis():
    assert jump((0, 0, 10, 10), (15, 0, 10, 10)) == 1.5
    assert jump((0, 0, 10, 20), (0, 30, 10, 20)) == 1.5
    # The same move in fractions of a 640x480 frame, as the daemon hands boxes to the tracker.
    assert abs(jump((0, 0, 10 / 640, 10 / 480), (15 / 640, 0, 10 / 640, 10 / 480)) - 1.5) < 1e-9


def walking(step: float, frames: int, size: float = 50.0, y: float = 100.0) -> list[list[Detection]]:
    """One face crossing the frame `step` face sizes per analysed frame, then gone."""
    return [[Detection((20.0 + i * step * size, y, size, size), scores("happy"))] for i in range(frames)] + [[]] * 25


def test_a_face_walking_past_faster_than_its_box_overlaps_keeps_one_track():
    """Someone walking past a camera analysed a few times a second moves more than a face size between
    frames: their boxes never overlap, yet it is one person, who enters, shows an expression and leaves once."""
    events = run(Tracker(LABELS, TrackerSettings()), walking(step=1.2, frames=10))
    assert [(e.type, e.expression) for e in events] == [
        ("face_enter", None),
        ("expression", "happy"),
        ("face_leave", "happy"),
    ]
    # Overlap alone (max_jump 0) makes a new face of each frame, none seen twice, so nobody is announced.
    assert run(Tracker(LABELS, TrackerSettings(max_jump=0)), walking(step=1.2, frames=10)) == []


def test_a_face_farther_than_max_jump_or_of_another_size_is_another_face():
    tracker = Tracker(LABELS, TrackerSettings(max_jump=1.5))
    here = [[Detection((100.0, 100.0, 50.0, 50.0), scores("happy"))]] * 3
    far = [[Detection((100.0 + 2.0 * 50, 100.0, 50.0, 50.0), scores("happy"))]] * 3  # 2 sizes away
    nearer = [[Detection((100.0 + 60, 100.0, 100.0, 100.0), scores("happy"))]] * 3  # twice the size: another face
    events = run(tracker, here + far + nearer)
    assert [e.type for e in events if e.type == "face_enter"] == ["face_enter"] * 3
    assert len({e.track_id for e in events if e.type == "face_enter"}) == 3


def test_two_people_walking_side_by_side_never_take_each_other_s_track():
    """Each new box is within reach of both old ones: which is whose is ambiguous, so neither takes a track by
    distance (by overlap alone they were new faces each frame as well); nobody gets the other one's mood."""
    frames = [
        [
            Detection((20.0 + i * 60, 100.0, 50.0, 50.0), scores("happy")),
            Detection((20.0 + 110 + i * 60, 100.0, 50.0, 50.0), scores("sad")),
        ]
        for i in range(6)
    ]
    events = run(Tracker(LABELS, TrackerSettings(max_jump=1.5)), frames)
    enters = [e for e in events if e.type == "face_enter"]
    assert len(enters) <= 2, [(e.type, e.track_id) for e in events]
    moods = {}
    for e in events:
        if e.type == "expression":
            assert moods.setdefault(e.track_id, e.expression) == e.expression, "a track took the other person's mood"


def test_a_newcomer_near_where_a_face_was_frames_ago_is_a_new_face():
    """A track unseen for frames keeps its last box; someone else appearing within reach of it is another
    person: a face_enter of their own, and none of the old face's scores."""
    tracker = Tracker(LABELS, TrackerSettings(max_jump=1.5, leave_after_s=2.0, leave_after_frames=5))
    first = [[Detection((100.0, 100.0, 50.0, 50.0), scores("sad"))]] * 4
    gone = [[]] * 8  # 0.8 s at 10 fps: the track is still kept
    newcomer = [[Detection((100.0 + 70, 100.0, 50.0, 50.0), scores("happy"))]] * 4
    events = run(tracker, first + gone + newcomer)
    enters = [e.track_id for e in events if e.type == "face_enter"]
    assert len(enters) == 2
    assert [e.expression for e in events if e.type == "expression" and e.track_id == enters[1]] == ["happy"]


def test_a_box_of_no_size_is_matched_by_nothing_and_breaks_nothing():
    tracker = Tracker(LABELS, TrackerSettings(max_jump=1.5))
    tracker.update([Detection((0.0, 100.0, 0.0, 50.0), scores("happy"))], 0.0)  # clipped to nothing at the edge
    tracker.update([Detection((10.0, 100.0, 50.0, 50.0), scores("happy"))], 0.1)
    tracker.update([Detection((0.0, 100.0, 50.0, 0.0), scores("happy"))], 0.2)
    assert jump((0.0, 0.0, 0.0, 10.0), (5.0, 0.0, 10.0, 10.0)) == float("inf")


def test_enter_settle_change_leave_in_order():
    tracker = Tracker(LABELS, TrackerSettings(enter_frames=2, settle_frames=3, leave_after_frames=3, leave_after_s=0.2))
    box = (100.0, 100.0, 50.0, 50.0)
    frames = [[Detection(box, scores("neutral"))]] * 10 + [[Detection(box, scores("happy"))]] * 10 + [[]] * 5
    events = run(tracker, frames)
    kinds = [(e.type, e.expression) for e in events]
    assert kinds == [("face_enter", None), ("expression", "neutral"), ("expression", "happy"), ("face_leave", "happy")]
    assert len({e.track_id for e in events}) == 1
    assert events[2].extra["previous"] == "neutral"
    assert events[3].extra["duration_s"] > 1.5


def test_flicker_does_not_fire_events():
    tracker = Tracker(LABELS, TrackerSettings(ema_alpha=0.35, settle_frames=3))
    box = (0.0, 0.0, 40.0, 40.0)
    # Steady neutral with a one-frame "angry" blip every fourth frame.
    frames = [[Detection(box, scores("angry" if i % 4 == 3 else "neutral"))] for i in range(40)]
    expressions = [e.expression for e in run(tracker, frames) if e.type == "expression"]
    assert expressions == ["neutral"]


def test_two_faces_keep_their_ids_while_moving():
    tracker = Tracker(LABELS, TrackerSettings())
    frames = [
        [
            Detection((10.0 + 2 * i, 10.0, 40.0, 40.0), scores("happy")),
            Detection((200.0 - 2 * i, 50.0, 40.0, 40.0), scores("sad")),
        ]
        for i in range(15)
    ]
    events = run(tracker, frames)
    settled = {e.track_id: e.expression for e in events if e.type == "expression"}
    assert sorted(settled.values()) == ["happy", "sad"]
    assert len(settled) == 2
    assert [t.track_id for t in tracker.visible] == sorted(settled)


def test_a_face_seen_a_frame_ago_keeps_its_track_over_one_unseen_for_a_while():
    """Two people cross: B stood where A now walks and was not seen for a few frames (hidden behind A), so B's
    box is where it was last seen. A must keep A's track, not take over B's and leave as if gone."""
    tracker = Tracker(LABELS, TrackerSettings(leave_after_s=2.0, leave_after_frames=5))
    b_box = (100.0, 50.0, 40.0, 40.0)
    frames = [[Detection((40.0, 50.0, 40.0, 40.0), scores("happy")), Detection(b_box, scores("sad"))]] * 5
    frames += [[Detection((40.0 + 12 * i, 50.0, 40.0, 40.0), scores("happy"))] for i in range(1, 7)]  # B hidden
    events = run(tracker, frames)
    a_track = next(e.track_id for e in events if e.type == "expression" and e.expression == "happy")
    assert not [e for e in events if e.type == "face_leave"], [(e.type, e.track_id) for e in events]
    boxes = {face.track_id: face.bbox for face in tracker.visible}
    assert boxes[a_track][0] == 40.0 + 12 * 6, "A's last detection went to another track"


def test_two_overlapping_faces_missed_in_turn_keep_their_own_tracks():
    """A and B overlap; the detector misses B for a frame, then A while B is back where it was: B's face goes
    back to B's track (the better overlap), not to A's, seen more recently."""
    tracker = Tracker(LABELS, TrackerSettings())
    a, b = (30.0, 30.0, 20.0, 20.0), (38.0, 30.0, 20.0, 20.0)
    both = [Detection(a, scores("happy")), Detection(b, scores("sad"))]
    run(tracker, [both, both])
    tracker.update([Detection(a, scores("happy"))], 0.2)
    tracker.update([Detection(b, scores("sad"))], 0.3)
    boxes = {face.track_id: face.bbox for face in tracker.visible}
    assert boxes == {1: a, 2: b}, boxes


def test_visible_shows_each_face_as_the_state_message_needs_it():
    tracker = Tracker(LABELS, TrackerSettings(enter_frames=2, settle_frames=3))
    box = (0.1, 0.2, 0.3, 0.4)
    run(tracker, [[Detection(box, scores("sad"))]] * 2)
    [settling] = tracker.visible
    assert (settling.expression, settling.confidence, settling.bbox) == (None, None, box)
    [event] = run(tracker, [[Detection(box, scores("sad", 0.9))]])  # the third frame in a row settles it
    [settled] = tracker.visible
    assert event.type == "expression" and (settled.track_id, settled.expression) == (event.track_id, "sad")
    assert settled.confidence == event.confidence and 0.8 < settled.confidence < 0.9


def test_finish_makes_every_visible_face_leave():
    tracker = Tracker(LABELS, TrackerSettings(enter_frames=1))
    run(tracker, [[Detection((0.0, 0.0, 30.0, 30.0), scores("fear"))]] * 3)
    left = tracker.finish(1.0)
    assert [e.type for e in left] == ["face_leave"]
    assert tracker.visible == []


def test_unconfident_scores_never_settle():
    tracker = Tracker(LABELS, TrackerSettings(min_confidence=0.5))
    flat = np.full(len(LABELS), 1 / len(LABELS))
    events = run(tracker, [[Detection((0.0, 0.0, 30.0, 30.0), flat)]] * 20)
    assert [e.type for e in events] == ["face_enter"]
