"""Geometric re-identification on top of the real streaming SAM 2 (tiny random weights, CPU).

Random weights segment nothing meaningful, so SAM 2 "losing" the object is scripted: a subclass blanks object 1's
result on chosen frames (what the official model does when an object left the view). Everything else is the real
predictor: the re-identification prompt goes through its add_prompt on the current frame, and must end up in its
memory as a conditioning frame.
"""

import numpy as np
import pytest
import torch

from threeam_model.data.synthetic import intrinsics, look_at, render_frame
from threeam_model.interface import CameraGeometry, ObjectResult
from threeam_model.reid import GeometricReID, ReIDConfig, RGBDGeometry
from threeam_model.sam2_build import build_sam2
from threeam_model.streaming import StreamingSAM2

W, H = 96, 72
K = intrinsics(W, H)
_TEX = {"pattern": "checker", "colors": [[200, 60, 60], [60, 200, 60], [60, 60, 200]], "scale": 0.1}
ROOM = {"half_extent": 5.0, "height": 3.0, "textures": [dict(_TEX, scale=0.5)] * 6}
BOX = {"id": 1, "shape": "box", "center": [0.0, 0.0, 0.3], "size": [0.5, 0.5, 0.6], "yaw": 0.3, "texture": _TEX}


class _LosesObject(StreamingSAM2):
    """Real StreamingSAM2 that reports object 1 absent on the frames in `blind`."""

    def __init__(self, model, blind):
        super().__init__(model)
        self.blind = set(blind)

    def track(self, frame, geometry=None):
        result = super().track(frame, geometry=geometry)
        if result.frame_index in self.blind and 1 in result.objects:
            result.objects[1] = ObjectResult.from_logits(1, np.full((H, W), -10.0, np.float32), 0.0)
        return result


@pytest.fixture(scope="module")
def tiny_sam2():
    torch.manual_seed(0)
    return build_sam2(tiny=True)


def test_reacquisition_prompt_runs_through_real_streaming_sam2(tiny_sam2):
    yaws = [0.0, 80.0, 90.0, 3.0, 0.0]  # the box is out of view on frames 1-2
    poses = []
    for a in np.deg2rad(yaws):
        pos = np.array([0.0, -3.0, 1.2])
        poses.append(look_at(pos, pos + [3 * np.sin(a), 3 * np.cos(a), -0.9]))
    frames = [render_frame(p, K, W, H, [BOX], ROOM) for p in poses]
    base = _LosesObject(tiny_sam2, blind={1, 2, 3, 4})
    assert not base.correction_as_cond  # official SAM 2 default: corrections are not conditioning frames
    tracker = GeometricReID(base, RGBDGeometry(), ReIDConfig(min_prior_pixels=32))
    results = []
    for t, (rgb, depth, inst) in enumerate(frames):
        res = tracker.track(rgb, geometry=CameraGeometry(depth, K, poses[t]))
        if t == 0:
            res.objects[1] = tracker.add_prompt(1, mask=inst == 1)
        results.append(res)
    events = {e.frame_index: e for e in tracker.events}
    # back in view on frame 3 while SAM 2 says absent: re-prompted there (and not on the out-of-view frames)
    assert sorted(events) == [3], sorted(events)
    x, y = events[3].points[0]
    assert frames[3][2][int(y), int(x)] == 1
    assert results[3].objects[1].reacquired and results[3].objects[1].mask.shape == (H, W)
    assert not results[4].objects[1].reacquired  # cooldown: the next frame is SAM 2's own
    # the prompt is a conditioning input of SAM 2's memory, and the predictor's setting is left as it was
    assert base.memory_frames(1)["cond"] == [0, 3]
    assert not base.correction_as_cond
    assert tracker.object_ids == [1] and tracker.frame_index == 4
    tracker.remove_object(1)
    assert tracker.anchor(1) is None and base.object_ids == []
    tracker.reset()
    assert tracker.frame_index == -1 and not tracker.events
