"""`edge bench`: per-stage latency and frame rate of this device's pipeline on a source, without MQTT.

The frames go through the configured cadence (detection every `detector.detect_every` frames, following in
between; classification every `model.classify_every`), so the stages are what a frame costs on average
with faces in view. The idle rate does not apply: every frame is analysed."""

from __future__ import annotations

import time

import numpy as np

from edge.analyzer import FrameAnalyzer, unusable_frame
from edge.config import Config
from edge.sources import SourceLost
from edge.stats import StageTimer
from edge.wiring import analyzer_cadence, build_detector, build_follower, load_model, open_frame_source

WARMUP_FRAMES = 5


def run_bench(config: Config, frames: int) -> int:
    model = load_model(config)
    detector = build_detector(config, model)
    timer = StageTimer(window=frames)
    analyzer = FrameAnalyzer(detector, model, timer, analyzer_cadence(config), build_follower(config, detector))
    source = open_frame_source(config)
    totals: list[float] = []
    faces: list[int] = []
    size = (0, 0)  # height, width of the last usable frame
    try:
        while len(totals) < frames + WARMUP_FRAMES:
            try:
                image = source.read()
            except SourceLost as exc:  # a stream that dropped: measure what came before
                print(f"{exc} after {len(totals)} frames; measuring those past the {WARMUP_FRAMES} warm-up frames")
                break
            if image is None:
                break
            if unusable_frame(image) is not None:
                continue
            size = image.shape[:2]
            started = time.perf_counter()
            found = analyzer.analyze(image)
            totals.append(time.perf_counter() - started)
            timer.frame_done()
            faces.append(len(found))
    finally:
        source.close()
    measured = totals[WARMUP_FRAMES:]
    if not measured:
        print(f"no usable frames from {source.description} (need more than {WARMUP_FRAMES})")
        return 1
    print(
        f"source {source.description} ({size[1]}x{size[0]}), detector {detector.name}, "
        f"model {model.model_id} ({model.precision}, {config.model.threads} threads), "
        f"detection every {config.detector.detect_every} frames, classification every "
        f"{config.model.classify_every}, "
        f"{len(measured)} frames, {np.mean(faces[WARMUP_FRAMES:]):.1f} faces/frame"
    )
    print(f"{'stage':<10} {'ms/frame':>8}")
    for stage, ms in timer.stage_ms().items():
        print(f"{stage:<10} {ms:>8.2f}")
    total_ms = 1000 * np.array(measured)
    print(
        f"{'total':<10} {total_ms.mean():>8.2f}  "
        f"(p50 {np.percentile(total_ms, 50):.2f}, p90 {np.percentile(total_ms, 90):.2f})"
    )
    print(f"throughput {1000 / total_ms.mean():.1f} frames/s")
    return 0
