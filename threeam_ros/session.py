"""One tracking session: the tracker, the locks around it, the newest frame's snapshot and the stream-size policy.

Imports no ROS, so its prompt, reset and size-change rules are tested without DDS. The node makes a session at
configure and drops it at cleanup; it converts messages, calls the session and publishes what comes back.

Locks: `_tracker_lock` serialises every tracker call (a prompt never interleaves with a frame) and lets the calls
waiting for it (prompts, remove, reset, discovery) go before the next frame, so a call waits at most for the frame
already in the model, never behind a stream of frames; `_state_lock` guards
only the snapshot, is never held during inference and is always taken inside `_tracker_lock`, never around it, so
`snapshot()` answers while a frame is in the model.

Size policy: a frame whose size differs from the stream's resets all objects and memory before it is tracked
(prompts are pixel positions of the old size, so resizing the new frame to the old size would track garbage).

Faults: an exception from the model (not a FrameError about the frame's own content) costs that frame: the snapshot
keeps the previous frame's objects, the fault is counted as consecutive until a frame succeeds, and the caller decides
when too many in a row mean the model is broken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from threeam_model.interface import (
    CameraGeometry,
    FrameError,
    FrameResult,
    ObjectResult,
    PromptError,
    Tracker,
    check_obj_id,
)


class NoFrameError(PromptError):
    """A prompt before any frame was tracked (or since the last reset)."""


class StaleFrameError(PromptError):
    """A prompt for a frame other than the newest: only the newest frame is in the tracker's memory."""

    def __init__(self, requested: Hashable, newest: Hashable):
        super().__init__(f"frame {requested} is not in memory: only the newest frame ({newest}) is kept")
        self.requested, self.newest = requested, newest


class ModelFault(RuntimeError):
    """The model raised on a frame (anything but a FrameError); `cause` is the original exception."""

    def __init__(self, cause: BaseException, consecutive: int):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause, self.consecutive = cause, consecutive

    @property
    def out_of_memory(self) -> bool:
        return _is_out_of_memory(self.cause)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The newest tracked frame as the caller handed it in, its RGB pixels (None before the first frame and after a
    reset) and every object's newest state."""

    frame: Any
    rgb: np.ndarray | None
    objects: dict[int, ObjectResult]


@dataclasses.dataclass(frozen=True)
class PromptOutcome:
    result: ObjectResult
    is_new: bool  # the prompt started a track (False: it refined one)
    frame: Any  # the frame it was applied to


# (frame token, rgb, objects, label image) -> None; called under the tracker lock so its output cannot overtake the
# next frame's
PublishFn = Callable[[Any, np.ndarray, dict[int, ObjectResult], np.ndarray], None]


class CallsFirstLock:
    """A reentrant lock whose waiting calls (`with lock:`) go before a waiting frame (`with lock.for_frame():`).

    With a plain lock nothing stops the inference thread from taking the tracker again for the next frame before a
    waiting prompt gets it: a thread woken from a lock wait must be scheduled first, and a loop that releases and
    takes the lock back at once wins that race every time (test_session.py: a prompt then waits two frames). Here
    a frame waits while any call waits, so a call waits at most for the frame already in the model. Reentrant: a
    prompt's publish callback may call back into the session (the node's 3D outputs read re-identification's
    anchors through it)."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._calls_waiting = 0

    def __enter__(self):
        self._acquire(frame=False)
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    @contextlib.contextmanager
    def for_frame(self):
        self._acquire(frame=True)
        try:
            yield self
        finally:
            self._release()

    def _acquire(self, frame: bool) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            if frame:
                self._cond.wait_for(lambda: self._owner is None and not self._calls_waiting)
            else:
                self._calls_waiting += 1
                try:
                    self._cond.wait_for(lambda: self._owner is None)
                finally:
                    self._calls_waiting -= 1
            self._owner, self._depth = me, 1

    def _release(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()


class TrackingSession:
    def __init__(
        self,
        tracker: Tracker,
        frame_key: Callable[[Any], Hashable] = lambda frame: frame,
        on_size_change: Callable[[tuple[int, int], tuple[int, int]], None] | None = None,
    ):
        """frame_key: what identifies a frame token for `prompt(frame_key=...)` (the node: its stamp);
        on_size_change(old (H, W), new (H, W)): told after a size change reset the stream, under the tracker lock."""
        self._tracker: Tracker | None = tracker
        self._frame_key = frame_key
        self._on_size_change = on_size_change
        self._tracker_lock = CallsFirstLock()
        self._state_lock = threading.Lock()
        self._snapshot = Snapshot(None, None, {})
        self._stream_size: tuple[int, int] | None = None
        self.consecutive_faults = 0

    # ------------------------------------------------------------------------------------------ frames

    def track(self, rgb: np.ndarray, geometry: CameraGeometry | None = None, frame: Any = None):
        """Track one (H, W, 3) uint8 RGB frame -> (FrameResult, (H, W) uint16 label image).

        Raises FrameError for a frame the tracker refuses (nothing changed) and ModelFault when the model fails
        (the snapshot keeps the previous frame's objects)."""
        with self._tracker_lock.for_frame():
            tracker = self._live_tracker()
            size = (int(rgb.shape[0]), int(rgb.shape[1]))
            if self._stream_size is not None and size != self._stream_size:
                old = self._stream_size
                self._reset_locked()
                if self._on_size_change is not None:
                    self._on_size_change(old, size)
            try:
                result = tracker.track(rgb, geometry=geometry)
                labels = result.label_image(np.uint16)
            except FrameError:
                raise
            except Exception as exc:
                self.consecutive_faults += 1
                if _is_out_of_memory(exc):
                    _release_cached_gpu_memory()
                raise ModelFault(exc, self.consecutive_faults) from exc
            self.consecutive_faults = 0
            self._stream_size = size
            with self._state_lock:
                self._snapshot = Snapshot(frame, rgb, dict(result.objects))
        return result, labels

    # ------------------------------------------------------------------------------------------ objects

    def prompt(
        self,
        obj_id: int,
        points=None,
        labels=None,
        box=None,
        mask=None,
        frame_key: Hashable | None = None,
        publish: PublishFn | None = None,
    ) -> PromptOutcome:
        """Prompt `obj_id` on the newest frame (a new id starts a track, a known one is refined).

        frame_key: the frame the caller means (None: the newest); another one raises StaleFrameError. publish:
        called with the prompted frame's outputs (the new mask included) before the next frame can be tracked.
        The tracker refuses bad prompts, unknown ids and ids beyond its cap with PromptError."""
        obj_id = check_obj_id(obj_id)
        with self._tracker_lock:
            tracker = self._live_tracker()
            newest = self._snapshot.frame
            if self._snapshot.rgb is None:
                raise NoFrameError("no frame tracked yet (or since the last reset)")
            if frame_key is not None and frame_key != self._frame_key(newest):
                raise StaleFrameError(frame_key, self._frame_key(newest))
            is_new = obj_id not in tracker.object_ids
            result = tracker.add_prompt(obj_id, points=points, labels=labels, box=box, mask=mask)
            self._add_objects_locked(tracker, {obj_id: result}, publish)
        return PromptOutcome(result, is_new, newest)

    def discover(self, generate, settings, max_objects: int, publish: PublishFn | None = None):
        """Start tracks for the unprompted objects of the newest frame (threeam_model.discovery); returns
        ([Discovered], the frame they were found on). publish: as for `prompt`, when something was found."""
        from threeam_model.discovery import discover

        with self._tracker_lock:
            tracker = self._live_tracker()
            snap = self._snapshot
            if snap.rgb is None:
                raise NoFrameError("no frame tracked yet (or since the last reset)")
            found = discover(tracker, snap.rgb, snap.objects, generate, settings, max_objects)
            if found:
                self._add_objects_locked(tracker, {d.obj_id: d.result for d in found}, publish)
        return found, snap.frame

    def _add_objects_locked(self, tracker: Tracker, results: dict[int, ObjectResult], publish: PublishFn | None):
        """Put prompted objects' results into the newest frame's snapshot, and republish that frame with them."""
        with self._state_lock:
            objects = {**self._snapshot.objects, **results}
            self._snapshot = dataclasses.replace(self._snapshot, objects=objects)
        if publish is not None:
            snap = self._snapshot
            label_image = FrameResult(tracker.frame_index, snap.rgb.shape[:2], objects).label_image(np.uint16)
            publish(snap.frame, snap.rgb, objects, label_image)

    def sam2_model(self):
        """The SAM2Base under the tracker (and its re-identification wrapper): discovery's mask generator runs on
        it, so the image encoder's weights are loaded once."""
        tracker = self._live_tracker()
        while not hasattr(tracker, "model") and hasattr(tracker, "base"):
            tracker = tracker.base
        model = getattr(tracker, "model", None)
        if model is None:
            raise PromptError(f"{type(tracker).__name__} has no SAM 2 model for the automatic mask generator")
        return model

    def anchor_points(self) -> dict[int, np.ndarray] | None:
        """Each object's re-identification anchor as (N, 3) world points (copies); None without re-identification."""
        with self._tracker_lock:
            tracker = self._live_tracker()
            if not hasattr(tracker, "anchor"):
                return None
            out = {}
            for obj_id in tracker.object_ids:
                anchor = tracker.anchor(obj_id)
                if anchor is not None and len(anchor):
                    out[obj_id] = anchor.points.copy()
            return out

    def remove(self, obj_id: int) -> list[int]:
        """Forget one object (PromptError from the tracker for an unknown id); returns the ids still tracked."""
        obj_id = check_obj_id(obj_id)
        with self._tracker_lock:
            tracker = self._live_tracker()
            tracker.remove_object(obj_id)
            with self._state_lock:
                objects = {i: o for i, o in self._snapshot.objects.items() if i != obj_id}
                self._snapshot = dataclasses.replace(self._snapshot, objects=objects)
            return tracker.object_ids

    def reset(self) -> int:
        """Forget every object and all memory; the next frame starts a new stream. Returns how many were forgotten."""
        with self._tracker_lock:
            n = len(self._live_tracker().object_ids)
            self._reset_locked()
        return n

    def snapshot(self) -> Snapshot:
        """The newest frame and objects, without waiting for a frame in the model."""
        with self._state_lock:
            return self._snapshot

    # ------------------------------------------------------------------------------------------ lifetime

    def release(self) -> None:
        """Drop the tracker (and with it the model); later calls raise RuntimeError. Waits for a call in flight."""
        with self._tracker_lock:
            self._tracker = None
            self._stream_size = None
            with self._state_lock:
                self._snapshot = Snapshot(None, None, {})

    def _live_tracker(self) -> Tracker:
        if self._tracker is None:
            raise RuntimeError("the tracking session was released")
        return self._tracker

    def _reset_locked(self) -> None:
        self._live_tracker().reset()
        self._stream_size = None
        with self._state_lock:
            self._snapshot = Snapshot(None, None, {})


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


def _release_cached_gpu_memory() -> None:
    # after an out-of-memory error the allocator still holds the blocks of the failed step; the next frame needs them
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
