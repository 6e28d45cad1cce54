"""Lifting without depth: MUSt3R-style pointmaps in FrameResult.scene, a voxel cloud grown from them, and the
transfer of its labels onto a dataset's points for evaluation."""

import dataclasses

import numpy as np
import pytest

from threeam_model.data.readers import RenderedScene
from threeam_model.data.synthetic import render_scene, scene_points
from threeam_model.instances.evaluator import SceneInstances, evaluate, masks_from_labels
from threeam_model.instances.keyframes import KeyframeParams
from threeam_model.instances.oracle import GroundTruthTracker
from threeam_model.instances.pipeline import InstancePipeline, PipelineParams
from threeam_model.instances.pointmaps import VoxelCloud, align_and_transfer, umeyama
from threeam_model.instances.proposals import OracleProposals


@dataclasses.dataclass
class FakeMust3rFrame:
    """The fields of a Must3rFrame that lifting reads."""

    pts3d: np.ndarray
    conf: np.ndarray
    c2w: np.ndarray
    focal: float
    crop_box: tuple[int, int, int, int]


class PointmapTracker:
    """Wraps a tracker and hands out each frame's exact world pointmap (from the rendered depth) as its scene,
    scaled and moved by a similarity, at half resolution, the way 3AM passes MUSt3R's on."""

    def __init__(self, tracker, scene: dict, scale: float, R: np.ndarray, t: np.ndarray):
        self.tracker, self.scene, self.scale, self.R, self.t = tracker, scene, scale, R, t
        self.index = -1

    def __getattr__(self, name):
        return getattr(self.tracker, name)

    def reset(self):
        self.index = -1
        self.tracker.reset()

    def track(self, frame, geometry=None):
        result = self.tracker.track(frame, None)
        self.index += 1
        sc = self.scene
        depth, pose, K = sc["depth"][self.index], sc["poses"][self.index], sc["K"]
        h, w = depth.shape
        # half resolution over the whole frame, MUSt3R's camera model (integer pixels, principal point at W'/2,
        # H'/2, focal / 2): its pixel x' looks along the frame's ray through u = 2x' - 0.5 (depth: nearest pixel)
        vs, us = np.mgrid[0:h:2, 0:w:2].astype(np.float64) - 0.5
        d = depth[::2, ::2]
        cam = np.stack([(us - K[0, 2]) / K[0, 0] * d, (vs - K[1, 2]) / K[1, 1] * d, d], -1)
        world = cam @ pose[:3, :3].T + pose[:3, 3]
        c2w = np.eye(4)
        c2w[:3, :3] = self.R @ pose[:3, :3]
        c2w[:3, 3] = self.scale * self.R @ pose[:3, 3] + self.t
        result.scene = FakeMust3rFrame(
            self.scale * world @ self.R.T + self.t,
            np.full(d.shape, 5.0),
            c2w,
            K[0, 0] / 2,
            (0, 0, w, h),
        )
        return result


def test_voxel_cloud_keeps_one_point_per_voxel():
    cloud = VoxelCloud(0.1)
    pts = np.array([[0.01, 0.01, 0.01], [0.02, 0.05, 0.09], [0.15, 0.0, 0.0], [-0.05, 0.0, 0.0]])
    assert cloud.add(pts, np.zeros((4, 3), np.uint8)) == 3
    assert cloud.add(np.array([[0.05, 0.05, 0.05], [0.25, 0.0, 0.0]]), np.zeros((2, 3), np.uint8)) == 1
    # the first point of each voxel stays: pts[1] shares pts[0]'s voxel
    assert {tuple(p) for p in cloud.points[:3]} == {tuple(p) for p in pts[[0, 2, 3]]}
    assert cloud.num_points == 4 and len(cloud.colors) == 4


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(30, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    R = q * np.sign(np.linalg.det(q))
    s, Rf, tf = umeyama(src, 2.5 * src @ R.T + [1.0, -2.0, 0.5])
    assert s == pytest.approx(2.5) and np.allclose(Rf, R) and np.allclose(tf, [1.0, -2.0, 0.5])


def test_pipeline_from_pointmaps_with_oracle_masks():
    sc = render_scene(seed=1, num_frames=80, num_objects=6)
    pts = scene_points(sc)
    src = RenderedScene(sc)
    oracle = GroundTruthTracker(lambda i: src.frame(i, with_rgb=False).instance, lose_below=0)
    # MUSt3R's frame: another scale and orientation than the dataset's
    angle = 0.7
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tracker = PointmapTracker(oracle, sc, 0.5, R, np.array([3.0, 1.0, -2.0]))
    params = PipelineParams(keyframes=KeyframeParams(stride=10))
    params.pointmap.voxel_size = 0.5 * 0.04
    res = InstancePipeline(tracker, OracleProposals(), None, None, params).run(src)
    assert res.stats["cloud_points"] > 10_000 and len(res.points) == res.stats["cloud_points"]
    assert len(res.camera_centres) == 80 and res.colors.shape == (len(res.points), 3)
    labels, scores = align_and_transfer(
        res.points,
        res.labels,
        res.point_scores,
        res.camera_centres,
        np.array([p[:3, 3] for p in res.frame_poses]),
        pts["points"],
        max_distance=0.06,
    )
    masks, inst_scores = masks_from_labels(labels, res.scores)
    ap = evaluate([SceneInstances(pts["instance"], masks, inst_scores)])
    print(f"pointmap lifting, oracle masks: AP {ap.ap:.3f} AP50 {ap.ap50:.3f} AP25 {ap.ap25:.3f}")
    assert ap.num_gt == 6 and ap.ap50 >= 0.9


def test_pointmap_mode_needs_pointmaps():
    sc = render_scene(seed=1, num_frames=2, width=64, height=48, num_objects=2)
    src = RenderedScene(sc)
    oracle = GroundTruthTracker(lambda i: src.frame(i, with_rgb=False).instance)
    with pytest.raises(ValueError, match="pointmaps"):
        InstancePipeline(oracle, OracleProposals(), None).run(src)
