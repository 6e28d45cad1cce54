"""Per-object 3D from masks and exact depth on a generated RGB-D scene: every object's box holds >= 90% of its
true points and its centroid is within 5 cm of theirs, also with a mask one pixel too wide all round; the points
are downsampled and capped; anchors give boxes too."""

import cv2
import numpy as np
import pytest

from threeam_model.data.synthetic import render_scene
from threeam_model.interface import CameraGeometry, ObjectResult
from threeam_model.objects3d import Object3DSettings, lift_mask, objects_from_anchors, objects_from_frame, summarize


@pytest.fixture(scope="module")
def scene():
    return render_scene(seed=3, num_frames=6, width=160, height=120, num_objects=4)


def _results(masks: dict[int, np.ndarray]) -> dict[int, ObjectResult]:
    return {i: ObjectResult.from_logits(i, np.where(m, 5.0, -5.0), 0.9) for i, m in masks.items()}


def _check(got, truth):
    inside = ((truth >= got.box_min - 1e-9) & (truth <= got.box_max + 1e-9)).all(axis=1)
    assert inside.mean() >= 0.9, f"object {got.obj_id}: box holds {inside.mean():.1%} of its points"
    assert np.linalg.norm(got.centroid - truth.mean(axis=0)) <= 0.05, f"object {got.obj_id}: centroid off"


@pytest.mark.parametrize("in_world", [False, True])
@pytest.mark.parametrize("bleed", [0, 1])
def test_boxes_hold_the_objects_points_and_centroids_are_within_5cm(scene, in_world, bleed):
    settings = Object3DSettings()
    checked = 0
    for t in range(len(scene["rgb"])):
        camera = CameraGeometry(scene["depth"][t], scene["K"], scene["poses"][t])
        truth_masks = {int(i): scene["instance"][t] == i for i in np.unique(scene["instance"][t]) if i}
        truth_masks = {i: m for i, m in truth_masks.items() if m.sum() >= 50}
        kernel = np.ones((2 * bleed + 1, 2 * bleed + 1), np.uint8)
        masks = {i: cv2.dilate(m.astype(np.uint8), kernel).astype(bool) for i, m in truth_masks.items()}
        got = objects_from_frame(_results(masks), camera, settings, in_world=in_world)
        assert set(got) == set(truth_masks)
        for i, obj in got.items():
            _check(obj, lift_mask(truth_masks[i], camera, in_world)[0])
            assert len(obj.points) <= settings.max_points and obj.score == pytest.approx(0.9)
            checked += 1
    assert checked >= 6


def test_the_bleeding_mask_would_stretch_a_box_without_the_depth_test(scene):
    """Why depth outliers are dropped: the wall pixels of a dilated mask lie metres behind the object."""
    t = 0
    camera = CameraGeometry(scene["depth"][t], scene["K"], scene["poses"][t])
    i = int(np.bincount(scene["instance"][t].ravel())[1:].argmax()) + 1
    mask = cv2.dilate((scene["instance"][t] == i).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    points, depth = lift_mask(mask, camera, in_world=False)
    untrimmed = summarize(i, points, 1.0, Object3DSettings(trim=0.0))
    trimmed = summarize(i, points, 1.0, Object3DSettings(), depth)
    assert untrimmed.box_size[2] > 1.5 * trimmed.box_size[2]


def test_points_are_voxel_downsampled_and_capped():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, (50_000, 3))
    obj = summarize(1, points, 1.0, Object3DSettings(voxel=0.1, max_points=300))
    assert len(obj.points) == 300
    dense = summarize(1, points, 1.0, Object3DSettings(voxel=0.25, max_points=10_000))
    assert len(dense.points) == 64  # 4 x 4 x 4 voxels over the unit cube
    assert summarize(1, points[:5], 1.0, Object3DSettings()) is None


def test_anchor_points_give_boxes_and_nan_points_are_ignored():
    pts = np.random.default_rng(1).normal([1.0, 2.0, 3.0], 0.05, (500, 3))
    pts[:10] = np.nan
    got = objects_from_anchors({4: pts}, {4: 0.5}, Object3DSettings())
    assert set(got) == {4} and np.allclose(got[4].centroid, [1.0, 2.0, 3.0], atol=0.02)
