"""Which frames get 2D proposals: a fixed stride, or view coverage (a frame that sees enough new surface).

Coverage works on the scene points a frame sees (its `FrameView`), in the spirit of MUSt3R's keyframe rule (a
frame is a keyframe when the memory does not cover enough of its points): here the memory is the set of scene
points any keyframe saw, and a frame is a keyframe when at least `new_fraction` of the points it sees are not in
it, or when `max_gap` frames passed since the last keyframe.
"""

from __future__ import annotations

import dataclasses

import numpy as np

KEYFRAME_MODES = ("stride", "coverage")


@dataclasses.dataclass
class KeyframeParams:
    mode: str = "stride"
    stride: int = 10  # stride: every n-th frame (the first one included)
    new_fraction: float = 0.3  # coverage: share of the frame's points no keyframe saw yet
    max_gap: int = 30  # coverage: a keyframe at least this often

    def __post_init__(self):
        if self.mode not in KEYFRAME_MODES:
            raise ValueError(f"keyframe mode must be one of {KEYFRAME_MODES}, got {self.mode!r}")
        if self.stride < 1 or self.max_gap < 1 or not 0.0 < self.new_fraction <= 1.0:
            raise ValueError("stride and max_gap must be >= 1 and new_fraction in (0, 1]")


class KeyframeSelector:
    def __init__(self, num_points: int, params: KeyframeParams | None = None):
        self.params = params or KeyframeParams()
        self.covered = np.zeros(num_points, bool)  # scene points seen by a keyframe (coverage mode)
        self.last = None

    def grow(self, num_points: int) -> None:
        """More scene points exist now (a cloud grown from pointmaps); the new ones are not covered yet."""
        if num_points > len(self.covered):
            self.covered = np.concatenate([self.covered, np.zeros(num_points - len(self.covered), bool)])

    def __call__(self, frame_index: int, seen_points: np.ndarray) -> bool:
        """Whether frame `frame_index` (seeing scene points `seen_points`) is a keyframe; records it if so."""
        p = self.params
        if p.mode == "stride":
            is_key = frame_index % p.stride == 0 or self.last is None
        else:
            new = float(np.mean(~self.covered[seen_points])) if len(seen_points) else 0.0
            is_key = self.last is None or new >= p.new_fraction or frame_index - self.last >= p.max_gap
        if is_key:
            self.last = frame_index
            self.covered[seen_points] = True
        return is_key


__all__ = ["KEYFRAME_MODES", "KeyframeParams", "KeyframeSelector"]
