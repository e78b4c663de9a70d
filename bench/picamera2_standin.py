"""A stand-in for picamera2 where there is no Pi camera: the one part of the benches that run the daemon with
`source.uri = "picamera"` (soak.py, systemd_nspawn.sh) that is not the daemon as shipped.

A bench copies this file as `picamera2/__init__.py` into a folder the daemon imports from, beside `frames.npy`
([empty room, face 0, face 1, ...]: grey luma frames of the configured size) and `schedule.json` ({"hold": frames
each face stays, "gap": empty frames after it}). It hands out YUV420 frames, faces in turn, paced at the
configured frame rate. While a file `pause` lies beside it, capture_array does not return, as a wedged camera's
does.
"""

import json
import os
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


class Picamera2:
    @staticmethod
    def global_camera_info():
        return [{"Model": "bench stand-in"}]

    def __init__(self, camera_num=0):
        self._frames = np.load(os.path.join(HERE, "frames.npy"))
        with open(os.path.join(HERE, "schedule.json"), encoding="utf-8") as handle:
            schedule = json.load(handle)
        self._hold, self._gap = schedule["hold"], schedule["gap"]
        self._count = 0

    def create_video_configuration(self, main, controls, queue):
        self._period = 1.0 / controls["FrameRate"]
        return {"main": dict(main)}

    def align_configuration(self, config):
        pass

    def configure(self, config):
        pass

    def start(self):
        self._next = time.monotonic()

    def capture_array(self, stream):
        if os.path.exists(os.path.join(HERE, "pause")):
            while os.path.exists(os.path.join(HERE, "pause")):  # wedged: the call does not return
                time.sleep(0.1)
            self._next = time.monotonic()
        self._next += self._period
        time.sleep(max(0.0, self._next - time.monotonic()))
        faces = len(self._frames) - 1
        cycle, step = divmod(self._count, self._hold + self._gap)
        self._count += 1
        luma = self._frames[1 + cycle % faces] if step < self._hold else self._frames[0]
        return np.concatenate([luma, np.full((luma.shape[0] // 2, luma.shape[1]), 128, np.uint8)])

    def stop(self):
        pass

    def close(self):
        pass
