"""The tracker node with a model that fails on marked frames: a frame whose top-left pixel is magenta raises a
RuntimeError inside track(), cyan raises torch's out-of-memory error (as CUDA does); with THREEAM_TEST_TRACK_DELAY_S
in its environment every frame takes that many seconds more (a slow model). Used by test_node_lifecycle.py and
test_node_prompt_wait.py through `python -m fault_injecting_node` (test/ is on the node process's path)."""

import os
import sys
import time

import numpy as np
import torch

import threeam_model.factory as factory
from threeam_ros import tracker_node

FAIL = (255, 0, 255)
OUT_OF_MEMORY = (0, 255, 255)
DELAY_ENV = "THREEAM_TEST_TRACK_DELAY_S"


class FaultInjectingTracker:
    """Delegates to the real tracker; raises before touching it on marked frames, so its state stays intact."""

    def __init__(self, tracker, delay_s: float = 0.0):
        self._tracker = tracker
        self._delay_s = delay_s

    def track(self, frame, geometry=None):
        marker = tuple(int(v) for v in frame[0, 0])
        if marker == FAIL:
            raise RuntimeError("injected model fault")
        if marker == OUT_OF_MEMORY:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        if self._delay_s:
            time.sleep(self._delay_s)  # inference that leaves the GIL free, as torch's kernels do
        return self._tracker.track(frame, geometry=geometry)

    def __getattr__(self, name):
        return getattr(self._tracker, name)


def mark(rgb: np.ndarray, colour) -> np.ndarray:
    rgb = rgb.copy()
    rgb[0, 0] = colour
    return rgb


def _install() -> None:
    """Make the factory wrap every tracker it builds (only in the node process: importing this module for `mark`
    must not change the factory of the test process)."""
    build = factory.build_tracker
    delay_s = float(os.environ.get(DELAY_ENV, "0"))
    factory.build_tracker = lambda cfg: FaultInjectingTracker(build(cfg), delay_s)


if __name__ == "__main__":
    _install()
    sys.exit(tracker_node.main())
