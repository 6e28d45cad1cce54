"""Evaluation protocols of the paper (Sec. 4.1): conditioning frame, Selected Subset, bidirectional and two-view runs.

- Conditioning: for each object, the frame where its ground-truth mask is largest conditions the tracker (the GT
  mask is the prompt); the tracker then runs forward to the last frame and, from a fresh start, backward to the
  first frame. Objects that share a conditioning frame are prompted together in one run (the trackers keep one
  memory bank per object, so this only saves image encodings).
- Selected Subset: objects that reappear. A track's visible segments are its maximal runs of consecutive frames
  with a visible mask; only segments longer than l_min frames count. An object is in the subset when it has at
  least `min_segments` such segments. The paper names l_min but gives neither value; ours are defaults, always
  written into the results next to the numbers.
- Two-view: "we don't use any memory other than the source frame". Every target frame is matched against the
  conditioning (source) frame alone: reset, track the source frame, prompt the GT mask, track the target frame.
  This holds for any Tracker without a memory hook; the price is one extra image encoding per target frame.
  The target frame sits one step after the source in the tracker's own frame count, so temporal encodings see
  distance 1 (SAM 2 encodes conditioning memories without a temporal offset anyway).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from threeam_model.interface import ObjectResult, Tracker

PROTOCOLS = ("bidirectional", "two_view")
DIRECTIONS = ("both", "forward", "backward")


@dataclasses.dataclass(frozen=True)
class SubsetRule:
    """Selected Subset thresholds (the paper gives no values; these are our defaults)."""

    l_min: int = 5  # a visible segment counts when its length in frames is > l_min
    min_segments: int = 2  # at least this many counted segments, i.e. at least one reappearance
    min_visible_pixels: int = 1  # a frame shows the object when its GT mask has at least this many pixels

    def __post_init__(self):
        if self.l_min < 0 or self.min_segments < 1 or self.min_visible_pixels < 1:
            raise ValueError(f"bad Selected Subset thresholds: {self}")


def visible_segments(visible: Sequence[bool], l_min: int = 0) -> list[tuple[int, int]]:
    """Maximal runs of consecutive visible frames longer than l_min, as (first, last + 1) frame positions."""
    vis = np.asarray(visible, dtype=bool).reshape(-1)
    padded = np.concatenate([[False], vis, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])  # alternating starts and stops
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2], strict=True) if b - a > l_min]


def count_segments(visible: Sequence[bool], l_min: int) -> int:
    return len(visible_segments(visible, l_min))


def in_selected_subset(areas: Sequence[int], rule: SubsetRule = SubsetRule()) -> bool:
    """Whether an object with these per-frame GT mask areas belongs to the Selected Subset."""
    visible = np.asarray(areas) >= rule.min_visible_pixels
    return count_segments(visible, rule.l_min) >= rule.min_segments


def conditioning_frame(areas: Sequence[int]) -> int:
    """Position of the frame with the largest GT mask (the first one on ties)."""
    areas = np.asarray(areas)
    if areas.size == 0 or areas.max() <= 0:
        raise ValueError("the object is never visible, so it has no conditioning frame")
    return int(np.argmax(areas))


# ---------------------------------------------------------------------------------------------------- runs

FrameLoader = Callable[[int], np.ndarray]  # frame position -> (H, W, 3) uint8 RGB
Prediction = tuple[int, dict[int, ObjectResult]]  # (frame position, {obj_id: result})


def _start(tracker: Tracker, load_frame: FrameLoader, cond: int, prompts: dict[int, np.ndarray]) -> dict:
    """Fresh stream: track the conditioning frame and prompt every object with its GT mask there."""
    tracker.reset()
    tracker.track(load_frame(cond))
    return {obj_id: tracker.add_prompt(obj_id, mask=mask) for obj_id, mask in sorted(prompts.items())}


def _only(objects: dict[int, ObjectResult], prompts: dict[int, np.ndarray]) -> dict[int, ObjectResult]:
    missing = set(prompts) - set(objects)
    if missing:
        raise RuntimeError(f"the tracker returned no result for prompted object(s) {sorted(missing)}")
    return {k: objects[k] for k in prompts}


def bidirectional(
    num_frames: int, cond: int, start: Callable[[int], object], step: Callable[[int], object], direction: str = "both"
) -> Iterator[tuple[int, object]]:
    """The forward/backward driver, for any way of starting and stepping a tracker (the benchmark, threeam-track).

    start(cond): a fresh stream conditioned on frame `cond`, returning its result there; step(t): track frame t,
    returning its result, or None when a stream whose length was a guess has ended (the forward pass stops).
    Yields (t, result) once per frame: `cond` (start's result), then forward cond+1..num_frames-1, then, after a
    fresh start at `cond` (its result dropped, the frame was given already), backward cond-1..0. `direction`
    ("both", "forward", "backward") leaves a pass out; conditioning on frame 0 has no backward pass.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not 0 <= cond < num_frames:
        raise ValueError(f"conditioning frame {cond} is outside 0..{num_frames - 1}")
    forward = direction in ("both", "forward")
    backward = direction in ("both", "backward") and cond > 0
    yield cond, start(cond)
    if forward:
        for t in range(cond + 1, num_frames):
            result = step(t)
            if result is None:
                break
            yield t, result
    if backward:
        if forward:
            start(cond)
        for t in range(cond - 1, -1, -1):
            yield t, step(t)


def run_bidirectional(
    tracker: Tracker, load_frame: FrameLoader, num_frames: int, cond: int, prompts: dict[int, np.ndarray]
) -> Iterator[Prediction]:
    """Condition on `cond` with GT masks, track forward to the end, then from a fresh start backward to frame 0.

    Yields (frame position, results) for every frame exactly once; the conditioning frame's results are the
    tracker's answers to the prompts.
    """
    return bidirectional(
        num_frames,
        cond,
        start=lambda c: _only(_start(tracker, load_frame, c, prompts), prompts),
        step=lambda t: _only(tracker.track(load_frame(t)).objects, prompts),
    )


def run_two_view(
    tracker: Tracker, load_frame: FrameLoader, num_frames: int, cond: int, prompts: dict[int, np.ndarray]
) -> Iterator[Prediction]:
    """Match every frame against the source (conditioning) frame alone; memory never holds another frame."""
    if not 0 <= cond < num_frames:
        raise ValueError(f"conditioning frame {cond} is outside 0..{num_frames - 1}")
    source_frame = load_frame(cond)
    for t in range(num_frames):
        tracker.reset()
        tracker.track(source_frame)
        answers = {obj_id: tracker.add_prompt(obj_id, mask=mask) for obj_id, mask in sorted(prompts.items())}
        if t == cond:
            yield t, _only(answers, prompts)
        else:
            yield t, _only(tracker.track(load_frame(t)).objects, prompts)


RUNS = {"bidirectional": run_bidirectional, "two_view": run_two_view}


def run_protocol(protocol: str, *args, **kwargs) -> Iterator[Prediction]:
    if protocol not in RUNS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return RUNS[protocol](*args, **kwargs)


def group_by_conditioning_frame(cond_of: dict[int, int]) -> dict[int, list[int]]:
    """{conditioning frame: [object ids]} in frame order."""
    groups: dict[int, list[int]] = {}
    for obj_id, cond in sorted(cond_of.items(), key=lambda kv: (kv[1], kv[0])):
        groups.setdefault(cond, []).append(obj_id)
    return groups


__all__ = [
    "DIRECTIONS",
    "PROTOCOLS",
    "SubsetRule",
    "bidirectional",
    "conditioning_frame",
    "count_segments",
    "group_by_conditioning_frame",
    "in_selected_subset",
    "run_bidirectional",
    "run_protocol",
    "run_two_view",
    "visible_segments",
]
