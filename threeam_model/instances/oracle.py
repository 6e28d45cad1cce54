"""A tracker that answers from ground-truth instance maps, with failures injected the way plain SAM 2 fails.

`GroundTruthTracker` is the `--method oracle` of `threeam-instances` / `threeam-bench --task instances3d` (with
`lose_below=0` it never fails: perfect masks), and the base tracker that re-identification is measured on
(benchmarks/reid_synthetic.py, the re-id tests). It segments perfectly while it follows an object, but:
- once the object it follows drops below `lose_below` visible pixels (it left the view or got hidden) it is lost
  and stays lost: it never re-finds the object by itself;
- while lost, a registered look-alike that comes into view is taken for the object (an identity switch);
- `switch(obj_id, gt_id)` forces an identity switch on the next frame (scripted distractor errors).
A prompt makes it follow the ground-truth instance under the first positive point (else the one filling most of the
box or mask), like a perfect interactive segmenter. So re-identification is measured on its decisions alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from threeam_model.interface import (
    CameraGeometry,
    FrameResult,
    ObjectResult,
    PromptError,
    Tracker,
    check_frame,
    check_obj_id,
    check_prompt,
)


class GroundTruthTracker(Tracker):
    def __init__(
        self,
        instance_of_frame: Callable[[int], np.ndarray],
        lose_below: int = 20,
        lookalikes: dict[int, int] | None = None,
    ):
        """instance_of_frame(i) -> (H, W) integer ground-truth ids of stream frame i (0 = background).
        lookalikes: ground-truth id -> id of its look-alike (taken for it while lost)."""
        self.instance_of_frame = instance_of_frame
        self.lose_below = int(lose_below)
        self.lookalikes = dict(lookalikes or {})
        self.reset()

    def reset(self) -> None:
        self._index = -1
        self._follow: dict[int, int | None] = {}  # obj id -> ground-truth id it follows (None = lost)
        self._forced: dict[int, int] = {}
        self._home: dict[int, int] = {}  # obj id -> ground-truth id of its first prompt (its true identity)
        self._inst: np.ndarray | None = None

    @property
    def object_ids(self) -> list[int]:
        return sorted(self._follow)

    @property
    def frame_index(self) -> int:
        return self._index

    def following(self, obj_id: int) -> int | None:
        return self._follow[obj_id]

    def switch(self, obj_id: int, gt_id: int) -> None:
        self._forced[obj_id] = gt_id

    def track(self, frame: np.ndarray, geometry: CameraGeometry | None = None) -> FrameResult:
        frame = check_frame(frame, None if self._inst is None else self._inst.shape)
        self._index += 1
        self._inst = np.asarray(self.instance_of_frame(self._index))
        objects = {}
        for obj_id, gt in list(self._follow.items()):
            if obj_id in self._forced:
                gt = self._forced.pop(obj_id)
            elif gt is not None and int((self._inst == gt).sum()) < self.lose_below:
                gt = None
            if gt is None:
                gt = self._lookalike_in_view(obj_id)
            self._follow[obj_id] = gt
            objects[obj_id] = self._result(obj_id, gt)
        return FrameResult(self._index, self._inst.shape, objects)

    def add_prompt(self, obj_id, points=None, labels=None, box=None, mask=None, conditioning=None) -> ObjectResult:
        obj_id = check_obj_id(obj_id)
        if self._inst is None:
            raise PromptError("no frame yet: call track(frame) before prompting")
        pts, lab, bx, m = check_prompt(self._inst.shape, points, labels, box, mask)
        gt = 0
        if pts is not None and (lab == 1).any():
            x, y = pts[lab == 1][0]
            gt = int(self._inst[int(round(y)), int(round(x))])
        if gt == 0 and (bx is not None or m is not None):
            if m is None:
                m = np.zeros(self._inst.shape, bool)
                x0, y0, x1, y1 = bx.astype(int)
                m[y0:y1, x0:x1] = True
            ids, counts = np.unique(self._inst[m], return_counts=True)
            counts[ids == 0] = 0
            gt = int(ids[np.argmax(counts)]) if counts.max() > 0 else 0
        self._follow[obj_id] = gt or None
        if gt:
            self._home.setdefault(obj_id, gt)
        return self._result(obj_id, gt or None)

    def remove_object(self, obj_id: int) -> None:
        if obj_id not in self._follow:
            raise PromptError(f"unknown object id {obj_id}; tracked ids: {self.object_ids}")
        del self._follow[obj_id]
        self._home.pop(obj_id, None)

    def _lookalike_in_view(self, obj_id: int) -> int | None:
        home = self._home.get(obj_id)
        twin = self.lookalikes.get(home) if home is not None else None
        if twin is not None and int((self._inst == twin).sum()) >= self.lose_below:
            return twin
        return None

    def _result(self, obj_id: int, gt: int | None) -> ObjectResult:
        mask = np.zeros(self._inst.shape, bool) if gt is None else self._inst == gt
        return ObjectResult.from_logits(obj_id, np.where(mask, 10.0, -10.0), 1.0 if mask.any() else 0.0)


__all__ = ["GroundTruthTracker"]
