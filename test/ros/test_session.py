"""The node's tracking session without ROS: prompts on the newest frame only, reset, the size-change policy, model
faults that cost one frame, and the tracker's own refusals (unknown ids, max_objects) passed through unchanged."""

import sys
import threading
import time

import numpy as np
import pytest
import torch

from threeam_model.factory import TrackerConfig, build_tracker
from threeam_model.interface import FrameError, FrameResult, ObjectResult, PromptError, Tracker
from threeam_ros.session import ModelFault, NoFrameError, StaleFrameError, TrackingSession


def test_session_imports_no_ros():
    import subprocess

    code = "import sys, threeam_ros.session; print(sorted(m for m in sys.modules if m.startswith(('rclpy', 'rcl_'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class ScriptedTracker(Tracker):
    """A tracker whose every object is a fixed square; `fail_next` makes the next track() raise."""

    def __init__(self):
        self.objects: dict[int, tuple[int, int]] = {}
        self.frames = -1
        self.resets = 0
        self.size = None
        self.fail_next: BaseException | None = None

    def _result(self, obj_id):
        h, w = self.size
        x, y = self.objects[obj_id]
        logits = np.full((h, w), -5.0, np.float32)
        logits[y : y + 4, x : x + 4] = 5.0
        return ObjectResult.from_logits(obj_id, logits, 0.9)

    def track(self, frame, geometry=None):
        if frame.ndim != 3:
            raise FrameError("not an RGB frame")
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.size, self.frames = frame.shape[:2], self.frames + 1
        return FrameResult(self.frames, self.size, {i: self._result(i) for i in self.objects})

    def add_prompt(self, obj_id, points=None, labels=None, box=None, mask=None, conditioning=None):
        if obj_id not in self.objects and len(self.objects) >= 2:
            raise PromptError("already tracking max_objects=2 objects")
        self.objects[obj_id] = tuple(int(v) for v in points[0])
        return self._result(obj_id)

    def remove_object(self, obj_id):
        if obj_id not in self.objects:
            raise PromptError(f"cannot remove object {obj_id}: it is not tracked")
        del self.objects[obj_id]

    def reset(self):
        self.objects, self.frames, self.size = {}, -1, None
        self.resets += 1

    @property
    def object_ids(self):
        return sorted(self.objects)

    @property
    def frame_index(self):
        return self.frames


def rgb(h=24, w=32):
    return np.zeros((h, w, 3), np.uint8)


def test_prompt_needs_a_frame_and_applies_to_the_newest_only():
    session = TrackingSession(ScriptedTracker(), frame_key=lambda header: header["stamp"])
    with pytest.raises(NoFrameError):
        session.prompt(1, points=[[3, 3]])
    session.track(rgb(), frame={"stamp": 10})
    session.track(rgb(), frame={"stamp": 11})
    with pytest.raises(StaleFrameError, match=r"frame 10 is not in memory: only the newest frame \(11\)"):
        session.prompt(1, points=[[3, 3]], frame_key=10)
    outcome = session.prompt(1, points=[[3, 3]], frame_key=11)
    assert outcome.is_new and outcome.frame == {"stamp": 11} and outcome.result.box == (3, 3, 6, 6)
    assert not session.prompt(1, points=[[5, 5]]).is_new  # a known id is refined
    assert list(session.snapshot().objects) == [1]


def test_prompt_publishes_the_prompted_frame_with_the_new_mask_before_the_next_frame():
    tracker = ScriptedTracker()
    session = TrackingSession(tracker)
    session.track(rgb(), frame="f0")
    published = []
    session.prompt(2, points=[[8, 4]], publish=lambda *args: published.append(args))
    (frame, image, objects, labels) = published[0]
    assert frame == "f0" and image.shape == (24, 32, 3) and list(objects) == [2]
    assert labels.dtype == np.uint16 and (labels == 2).sum() == 16 and labels[4, 8] == 2


def test_tracker_refusals_pass_through_and_leave_the_snapshot_alone():
    session = TrackingSession(ScriptedTracker())
    session.track(rgb())
    session.prompt(1, points=[[1, 1]])
    session.prompt(2, points=[[9, 9]])
    with pytest.raises(PromptError, match="max_objects=2"):
        session.prompt(3, points=[[5, 5]])
    with pytest.raises(PromptError, match="cannot remove object 7"):
        session.remove(7)
    with pytest.raises(PromptError, match="1..65535"):
        session.remove(70000)
    assert sorted(session.snapshot().objects) == [1, 2]
    assert session.remove(1) == [2]
    assert list(session.snapshot().objects) == [2]


def test_reset_forgets_objects_and_the_frame():
    tracker = ScriptedTracker()
    session = TrackingSession(tracker)
    session.track(rgb(), frame="f0")
    session.prompt(4, points=[[2, 2]])
    assert session.reset() == 1
    snap = session.snapshot()
    assert snap.frame is None and snap.objects == {} and tracker.object_ids == []
    with pytest.raises(NoFrameError):
        session.prompt(4, points=[[2, 2]])


def test_a_new_frame_size_resets_the_stream_and_says_so():
    tracker = ScriptedTracker()
    changes = []
    session = TrackingSession(tracker, on_size_change=lambda old, new: changes.append((old, new)))
    session.track(rgb(24, 32))
    session.prompt(1, points=[[2, 2]])
    session.track(rgb(24, 32))
    assert tracker.resets == 0 and changes == []
    result, labels = session.track(rgb(48, 64))
    assert changes == [((24, 32), (48, 64))] and tracker.resets == 1
    assert result.objects == {} and labels.shape == (48, 64) and not labels.any()
    assert session.snapshot().objects == {}


def test_a_model_fault_costs_one_frame_and_counts_consecutive_failures():
    tracker = ScriptedTracker()
    session = TrackingSession(tracker)
    session.track(rgb(), frame="f0")
    session.prompt(1, points=[[2, 2]])
    for n in (1, 2):
        tracker.fail_next = RuntimeError("injected")
        with pytest.raises(ModelFault, match="RuntimeError: injected") as info:
            session.track(rgb(), frame=f"bad{n}")
        assert info.value.consecutive == n and not info.value.out_of_memory
        snap = session.snapshot()
        assert snap.frame == "f0" and list(snap.objects) == [1]  # the last good frame's state
    tracker.fail_next = torch.OutOfMemoryError("CUDA out of memory (simulated)")
    with pytest.raises(ModelFault) as info:
        session.track(rgb())
    assert info.value.out_of_memory and info.value.consecutive == 3
    result, _ = session.track(rgb(), frame="f1")
    assert session.consecutive_faults == 0 and list(result.objects) == [1]
    with pytest.raises(FrameError):  # a bad frame is the frame's fault, not the model's
        session.track(np.zeros((4, 4), np.uint8))
    assert session.consecutive_faults == 0


def test_snapshot_answers_while_a_frame_is_in_the_model():
    tracker = ScriptedTracker()
    session = TrackingSession(tracker)
    session.track(rgb(), frame="f0")
    entered, leave = threading.Event(), threading.Event()
    original = tracker.track

    def slow_track(frame, geometry=None):
        entered.set()
        leave.wait(10)
        return original(frame, geometry)

    tracker.track = slow_track
    worker = threading.Thread(target=session.track, args=(rgb(),), kwargs={"frame": "f1"})
    worker.start()
    assert entered.wait(10)
    assert session.snapshot().frame == "f0"  # not blocked behind the frame in the model
    leave.set()
    worker.join(10)
    assert session.snapshot().frame == "f1"


def test_a_prompt_goes_before_the_next_frame_of_a_busy_stream():
    """D6: under a camera faster than the model, a prompt waits for the frame in the model only, not for the next
    ones too (with a plain lock, a stream that takes the tracker back at once after each frame starves it)."""
    frame_s = 0.3
    tracker = ScriptedTracker()
    session = TrackingSession(tracker)
    session.track(rgb(), frame=0)
    order, entered, stop = [], threading.Event(), threading.Event()
    original_track, original_prompt = tracker.track, tracker.add_prompt

    def slow_track(frame, geometry=None):
        order.append("frame")
        entered.set()
        time.sleep(frame_s)  # inference (the GIL is free meanwhile, as under torch)
        return original_track(frame, geometry)

    def prompt(obj_id, **kwargs):
        order.append("prompt")
        return original_prompt(obj_id, **kwargs)

    tracker.track, tracker.add_prompt = slow_track, prompt

    def stream():  # a frame always waiting: the newest-frame slot is never empty under a fast camera
        i = 1
        while not stop.is_set():
            session.track(rgb(), frame=i)
            i += 1

    worker = threading.Thread(target=stream)
    worker.start()
    waits = []
    try:
        for obj_id in (1, 2, 1):
            entered.clear()
            assert entered.wait(10)  # a frame has just gone into the model
            t = time.monotonic()
            session.prompt(obj_id, points=[[3, 3]])
            waits.append(time.monotonic() - t)
    finally:
        stop.set()
        worker.join(10)
    assert max(waits) < 1.5 * frame_s, waits  # the frame in the model, not the one after it as well
    first = order.index("prompt")  # each prompt right after the frame it waited for
    assert order[first : first + 5] == ["prompt", "frame", "prompt", "frame", "prompt"], order


def test_the_tracker_lock_is_reentrant_for_a_publish_callback():
    session = TrackingSession(ScriptedTracker())
    session.track(rgb(), frame="f0")
    inner = []
    call = threading.Thread(  # a plain lock would deadlock here
        target=session.prompt,
        args=(1,),
        kwargs=dict(points=[[3, 3]], publish=lambda *a: inner.append(session.remove(1))),
    )
    call.start()
    call.join(10)
    assert not call.is_alive() and inner == [[]]


def test_release_drops_the_tracker():
    import gc
    import weakref

    tracker = ScriptedTracker()
    ref = weakref.ref(tracker)
    session = TrackingSession(tracker)
    session.track(rgb())
    del tracker
    session.release()
    gc.collect()
    assert ref() is None
    with pytest.raises(RuntimeError, match="released"):
        session.track(rgb())


def test_with_the_real_tiny_tracker():
    tracker = build_tracker(TrackerConfig(method="sam2", tiny=True, image_size=64, max_objects=2))
    session = TrackingSession(tracker)
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    session.track(frame, frame="f0")
    mask = np.zeros((48, 64), bool)
    mask[10:30, 10:30] = True
    assert session.prompt(1, mask=mask).is_new
    assert session.prompt(2, points=[[50, 40]]).is_new
    with pytest.raises(PromptError, match="max_objects"):
        session.prompt(3, points=[[5, 5]])
    with pytest.raises(PromptError, match="not tracked"):
        session.remove(9)
    result, labels = session.track(frame, frame="f1")
    assert sorted(result.objects) == [1, 2] and labels.shape == (48, 64)
    session.track(np.zeros((32, 32, 3), np.uint8))
    assert tracker.object_ids == []
