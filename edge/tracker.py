"""Gives each face a stable track id and turns per-frame scores into settled expression events.

Per frame the classifier's scores flicker; users want an event when a face's expression really
changes. Each track therefore smooths its scores (exponential moving average) and only switches its
announced expression when a new one is confident, beats the current one by a margin, and does so for
several frames in a row (hysteresis).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from edge.boxes import Box

STALE_DISCOUNT = 0.75  # weight of a track's overlap per frame it has gone unseen, when matching
JUMP_SIZE_RATIO = 1.5  # a face that jumped may have come nearer or gone farther, but not by more than this


@dataclass(frozen=True)
class TrackerSettings:
    iou_threshold: float = 0.3
    max_jump: float = 1.5  # face sizes a face may move between analysed frames and keep its track (0: off)
    ema_alpha: float = 0.35
    min_confidence: float = 0.45
    switch_margin: float = 0.1
    settle_frames: int = 3
    enter_frames: int = 2
    leave_after_s: float = 2.0
    leave_after_frames: int = 5


@dataclass
class Detection:
    box: Box  # any unit, the same for every detection (the daemon uses fractions of the frame)
    scores: np.ndarray  # probabilities, one per label


@dataclass
class TrackEvent:
    type: str  # "face_enter" | "expression" | "face_leave"
    track_id: int
    box: Box
    expression: str | None
    confidence: float | None
    scores: dict[str, float]  # smoothed, one per label
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FaceState:
    """One announced face as the retained state message shows it (field names are the message's)."""

    track_id: int
    expression: str | None  # the settled expression; None while it settles
    confidence: float | None  # its smoothed score
    bbox: Box


@dataclass
class Track:
    id: int
    box: Box
    smoothed: np.ndarray
    first_seen: float
    last_seen: float
    hits: int = 1  # consecutive frames matched
    missed: int = 0  # consecutive frames unmatched
    announced: bool = False
    settled: int | None = None  # index of the announced expression
    candidate: int | None = None
    candidate_frames: int = 0

    def state(self, labels: list[str]) -> FaceState:
        """This track as the retained state message shows it."""
        settled = self.settled
        return FaceState(
            track_id=self.id,
            expression=labels[settled] if settled is not None else None,
            confidence=float(self.smoothed[settled]) if settled is not None else None,
            bbox=self.box,
        )


def jump(a: Box, b: Box) -> float:
    """How far b's centre is from a's, in a's width across and a's height down: the same figure whether boxes
    are in pixels or in fractions of the frame's width and height, as the tracker gets them."""
    if a[2] <= 0 or a[3] <= 0:  # a box clipped to nothing at the frame's edge is no size to measure by
        return float("inf")
    dx = (b[0] + b[2] / 2) - (a[0] + a[2] / 2)
    dy = (b[1] + b[3] / 2) - (a[1] + a[3] / 2)
    return float(np.hypot(dx / a[2], dy / a[3]))


def similar_size(a: Box, b: Box) -> bool:
    """Whether b is at most JUMP_SIZE_RATIO times larger or smaller than a (square root of the areas)."""
    if a[2] * a[3] <= 0 or b[2] * b[3] <= 0:
        return False
    ratio = float(np.sqrt((b[2] * b[3]) / (a[2] * a[3])))
    return 1 / JUMP_SIZE_RATIO <= ratio <= JUMP_SIZE_RATIO


def iou(a: Box, b: Box) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter_w = min(ax2, bx2) - max(a[0], b[0])
    inter_h = min(ay2, by2) - max(a[1], b[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


class Tracker:
    """Greedy IoU tracker, with a reach for faces that moved past their box, per-track score smoothing and
    hysteresis."""

    def __init__(self, labels: list[str], settings: TrackerSettings):
        self.labels = list(labels)
        self.settings = settings
        self._tracks: list[Track] = []
        self._next_id = 1

    @property
    def visible(self) -> list[FaceState]:
        """Announced faces, oldest first: what the retained state topic shows."""
        return [t.state(self.labels) for t in self._tracks if t.announced]

    @property
    def tracking(self) -> bool:
        """Whether any face is tracked, announced or not; one that went out of view counts until it leaves."""
        return bool(self._tracks)

    def update(self, detections: list[Detection], now: float) -> list[TrackEvent]:
        """Match this frame's detections to tracks and return the events they cause, in order."""
        events: list[TrackEvent] = []
        matched = self._match(detections)
        unmatched_tracks = {id(t) for t in self._tracks}
        for det_index, track in matched.items():
            unmatched_tracks.discard(id(track))
            self._observe(track, detections[det_index], now, events)
        for det_index, det in enumerate(detections):
            if det_index not in matched:
                track = Track(self._next_id, det.box, det.scores.astype(np.float64), now, now)
                self._next_id += 1
                self._tracks.append(track)
                self._advance(track, events)
        for track in list(self._tracks):
            if id(track) in unmatched_tracks:
                track.missed += 1
                track.hits = 0
                gone_long = now - track.last_seen >= self.settings.leave_after_s
                if gone_long and track.missed >= self.settings.leave_after_frames:
                    self._remove(track, now, events)
        return events

    def finish(self, now: float) -> list[TrackEvent]:
        """The source ended: every face still here leaves."""
        events: list[TrackEvent] = []
        for track in list(self._tracks):
            self._remove(track, now, events)
        return events

    def _match(self, detections: list[Detection]) -> dict[int, Track]:
        """Each detection to the track whose box it overlaps enough, the largest overlap first, an overlap
        counting less the longer its track has gone unseen: such a track keeps the box it was last seen in,
        and where two people cross, that stale box may overlap the other person best, who must keep their own
        track; a face missed for a frame next to another still gets its own track back.

        Then a detection left over continues a track left over that was seen in the last analysed frame, of a
        like size and within `max_jump` face sizes, where that pair is the only one within reach of either:
        someone walking past a camera analysed a few times a second moves farther than their own face between
        frames, and would otherwise become a new face each frame. Where two faces could each be either track
        (two people walking side by side), or the track was last seen frames ago (someone else may have come),
        they stay new faces rather than take another person's track."""
        matched: dict[int, Track] = {}
        used: set[int] = set()
        by_overlap = [
            (-overlap * STALE_DISCOUNT**track.missed, det_index, track)
            for det_index, det in enumerate(detections)
            for track in self._tracks
            if (overlap := iou(track.box, det.box)) >= self.settings.iou_threshold
        ]
        for _, det_index, track in sorted(by_overlap, key=lambda p: (p[0], p[1])):
            if det_index not in matched and id(track) not in used:
                matched[det_index] = track
                used.add(id(track))
        if self.settings.max_jump <= 0:
            return matched
        within_reach = [
            (det_index, track)
            for det_index, det in enumerate(detections)
            if det_index not in matched
            for track in self._tracks
            if id(track) not in used
            and track.missed == 0
            and similar_size(track.box, det.box)
            and jump(track.box, det.box) <= self.settings.max_jump
        ]
        reach_of_detection = Counter(det_index for det_index, _ in within_reach)
        reach_of_track = Counter(id(track) for _, track in within_reach)
        for det_index, track in within_reach:
            if reach_of_detection[det_index] == 1 and reach_of_track[id(track)] == 1:
                matched[det_index] = track
        return matched

    def _observe(self, track: Track, det: Detection, now: float, events: list[TrackEvent]) -> None:
        alpha = self.settings.ema_alpha
        track.smoothed = alpha * det.scores + (1 - alpha) * track.smoothed
        track.box = det.box
        track.last_seen = now
        track.hits += 1
        track.missed = 0
        self._advance(track, events)

    def _advance(self, track: Track, events: list[TrackEvent]) -> None:
        """Announce the face once it is stable, then its expression once it has settled."""
        s = self.settings
        if not track.announced and track.hits >= s.enter_frames:
            track.announced = True
            events.append(self._event("face_enter", track, None))
        top = int(np.argmax(track.smoothed))
        confident = track.smoothed[top] >= s.min_confidence
        if track.settled is None:
            beats_current = True
        else:
            beats_current = track.smoothed[top] - track.smoothed[track.settled] >= s.switch_margin
        if top == track.settled or not (confident and beats_current):
            track.candidate, track.candidate_frames = None, 0
            return
        if top == track.candidate:
            track.candidate_frames += 1
        else:
            track.candidate, track.candidate_frames = top, 1
        if track.candidate_frames >= s.settle_frames and track.announced:
            previous = self.labels[track.settled] if track.settled is not None else None
            track.settled = top
            track.candidate, track.candidate_frames = None, 0
            events.append(self._event("expression", track, top, previous=previous))

    def _remove(self, track: Track, now: float, events: list[TrackEvent]) -> None:
        self._tracks.remove(track)
        if track.announced:
            duration = round(max(0.0, track.last_seen - track.first_seen), 3)
            events.append(self._event("face_leave", track, track.settled, duration_s=duration))

    def _event(self, kind: str, track: Track, label: int | None, **extra) -> TrackEvent:
        scores = {name: float(p) for name, p in zip(self.labels, track.smoothed)}
        return TrackEvent(
            type=kind,
            track_id=track.id,
            box=track.box,
            expression=self.labels[label] if label is not None else None,
            confidence=float(track.smoothed[label]) if label is not None else None,
            scores=scores,
            extra=extra,
        )
