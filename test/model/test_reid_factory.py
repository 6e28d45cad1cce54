"""The re-identification mode through the one tracker factory (tiny random models, CPU)."""

import numpy as np
import pytest

from threeam_model.data.synthetic import render_scene
from threeam_model.factory import TrackerConfig, build_tracker
from threeam_model.interface import CameraGeometry
from threeam_model.reid import GeometricReID, Must3rGeometry, RGBDGeometry


@pytest.fixture(scope="module")
def scene():
    return render_scene(seed=2, num_frames=3, width=64, height=48, num_objects=2)


def test_reid_off_by_default_and_bad_values_refused():
    assert TrackerConfig().reid == "off"
    with pytest.raises(ValueError, match="reid must be one of"):
        TrackerConfig(reid="lidar")
    with pytest.raises(ValueError, match="reid_depth_scale"):
        TrackerConfig(reid="rgbd", reid_depth_scale=0)
    assert "geometric re-id (rgbd)" in TrackerConfig(tiny=True, reid="rgbd").describe()


def test_sam2_with_rgbd_reid(scene):
    tracker = build_tracker(TrackerConfig(method="sam2", tiny=True, reid="rgbd", reid_depth_scale=0.001))
    assert isinstance(tracker, GeometricReID) and isinstance(tracker.geometry, RGBDGeometry)
    assert tracker.geometry.depth_scale == 0.001
    inst = scene["instance"]
    for t in range(3):
        depth_mm = np.round(scene["depth"][t] * 1000).astype(np.uint16)
        result = tracker.track(scene["rgb"][t], geometry=CameraGeometry(depth_mm, scene["K"], scene["poses"][t]))
        if t == 0:
            tracker.add_prompt(1, mask=inst[0] == 1)
        assert "reid" in result.timings
    assert len(tracker.anchor(1)) > 0  # seeded from the prompt on frame 0 in metres


@pytest.mark.parametrize("method", ["sam2", "3am"])
def test_must3r_reid(scene, method):
    tracker = build_tracker(TrackerConfig(method=method, tiny=True, reid="must3r"))
    assert isinstance(tracker, GeometricReID) and isinstance(tracker.geometry, Must3rGeometry)
    shared = method == "3am"  # the 3AM tracker's own MUSt3R output (FrameResult.scene) is reused, not run twice
    assert (tracker.geometry.stream is None) == shared
    for t in range(2):
        result = tracker.track(scene["rgb"][t])
        if t == 0:
            tracker.add_prompt(1, mask=scene["instance"][0] == 1)
        assert result.frame_index == t
        assert (result.scene is not None) == shared
    if shared:  # reading the frame's scene output again gives the same geometry, without running MUSt3R
        assert tracker.geometry.geometry(scene["rgb"][1], 4, None, result) is not None
    tracker.reset()
    assert tracker.frame_index == -1
