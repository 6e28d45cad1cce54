"""One scene end to end: tracker and proposals for a method, superpoints, the pipeline, evaluation, outputs.

Methods: a `TrackerConfig` (SAM 2 or 3AM, proposals from SAM 2's automatic mask generator on the tracker's own
SAM2Base), or "oracle" (ground-truth masks as both the proposals and the propagated masks: an upper bound that
checks the lifting, merging and voting).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from threeam_model.data.frames import Frame, VideoSource
from threeam_model.instances.evaluator import InstanceAP, SceneInstances, evaluate, masks_from_labels
from threeam_model.instances.pipeline import InstancePipeline, InstanceResult, PipelineParams
from threeam_model.instances.pointmaps import align_and_transfer, umeyama
from threeam_model.instances.proposals import OracleProposals, SamProposalParams, SamProposals
from threeam_model.instances.scenes import Scene3D
from threeam_model.instances.superpoints import superpoints as graph_superpoints

ORACLE = "oracle"
GEOMETRIES = ("depth", "pointmap")


class FrameSubset(VideoSource):
    """Every `stride`-th frame of a source, at most `max_frames`, geometry kept."""

    def __init__(self, source: VideoSource, stride: int = 1, max_frames: int | None = None):
        if stride < 1 or (max_frames is not None and max_frames < 1):
            raise ValueError(f"need stride >= 1 and max_frames >= 1, got {stride}, {max_frames}")
        self.source, self.dataset = source, source.dataset
        self.positions = list(range(0, len(source), stride))[:max_frames]

    @property
    def name(self) -> str:
        return self.source.name

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def has_geometry(self) -> bool:
        return self.source.has_geometry

    def frame(self, index: int, with_rgb: bool = True) -> Frame:
        i = self.check_index(index)
        f = self.source.frame(self.positions[i], with_rgb=with_rgb)
        return dataclasses.replace(f, index=i)


PROPOSAL_SOURCES = ("sam2", ORACLE)


def build_method(
    method, frames: VideoSource, proposal_params: SamProposalParams | None = None, proposal_source: str = "sam2"
):
    """(tracker, proposals) for "oracle" or a TrackerConfig; proposal_source "oracle" prompts a real tracker with
    the ground-truth masks (to time or test the tracker on every object of a scene)."""
    if proposal_source not in PROPOSAL_SOURCES:
        raise ValueError(f"proposals must be one of {PROPOSAL_SOURCES}, got {proposal_source!r}")
    if method == ORACLE:
        from threeam_model.instances.oracle import GroundTruthTracker

        # lose_below=0: it never loses its object, and re-finds it whenever it is back in view
        tracker = GroundTruthTracker(lambda i: frames.frame(i, with_rgb=False).instance, lose_below=0)
        return tracker, OracleProposals()
    from threeam_model.factory import build_tracker

    tracker = build_tracker(method)
    if proposal_source == ORACLE:
        return tracker, OracleProposals()
    model = getattr(tracker, "model", None)
    if model is None:
        raise ValueError(f"{type(tracker).__name__} exposes no SAM 2 model for the automatic mask generator")
    return tracker, SamProposals(model, proposal_params)


def scene_superpoints(scene: Scene3D) -> np.ndarray:
    """The dataset's superpoints, else a graph segmentation of the mesh or point cloud."""
    if scene.superpoints is not None:
        return scene.superpoints
    return graph_superpoints(scene.points, scene.normals, scene.faces)


@dataclasses.dataclass
class SceneRun:
    result: InstanceResult
    evaluation: InstanceAP | None
    scene_instances: SceneInstances | None  # for pooling over scenes
    seconds: float
    frames: int


def segment_scene(
    scene: Scene3D,
    tracker,
    proposals,
    params: PipelineParams | None = None,
    frame_stride: int = 1,
    max_frames: int | None = None,
    progress=None,
    geometry: str = "depth",
) -> SceneRun:
    """Run the pipeline over a scene's frames (thinned), then evaluate against its ground truth if it has one.

    geometry: "depth" lifts onto the scene's points with each frame's depth and pose; "pointmap" ignores them and
    lifts onto a cloud grown from the tracker's MUSt3R pointmaps (pointmaps.py); its labels are then moved onto
    the scene's points for the evaluation (a similarity fitted between MUSt3R's and the dataset's cameras)."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    t0 = time.perf_counter()
    frames = FrameSubset(scene.frames, frame_stride, max_frames)
    if geometry == "pointmap":
        pipe = InstancePipeline(tracker, proposals, None, None, params)
        result = pipe.run(WithoutDepth(frames), progress)
        result.stats["seconds"]["superpoints"] = 0.0  # inside merge_and_vote: the cloud is complete only then
    else:
        spx = scene_superpoints(scene)
        t_superpoints = time.perf_counter() - t0
        pipe = InstancePipeline(tracker, proposals, scene.points, spx, params)
        result = pipe.run(frames, progress)
        result.stats["seconds"]["superpoints"] = t_superpoints
    evaluation = scene_instances = None
    if scene.gt is not None:
        labels = result.labels
        if geometry == "pointmap":
            labels = _moved_onto_scene(result, scene, pipe.params.pointmap.voxel_size)
        masks, scores = masks_from_labels(labels, result.scores)
        scene_instances = SceneInstances(scene.gt, masks, scores, scene.name)
        evaluation = evaluate([scene_instances])
    return SceneRun(result, evaluation, scene_instances, time.perf_counter() - t0, len(frames))


class WithoutDepth(VideoSource):
    """A source's frames without depth and intrinsics (RGB-only lifting); the pose rides along only for the
    evaluation's alignment."""

    def __init__(self, source: VideoSource):
        self.source, self.dataset = source, source.dataset

    @property
    def name(self) -> str:
        return self.source.name

    def __len__(self) -> int:
        return len(self.source)

    @property
    def has_geometry(self) -> bool:
        return False

    def frame(self, index: int, with_rgb: bool = True) -> Frame:
        return dataclasses.replace(self.source.frame(index, with_rgb=with_rgb), depth=None, K=None)


def _moved_onto_scene(result: InstanceResult, scene: Scene3D, voxel_size: float) -> np.ndarray:
    poses = result.frame_poses or []
    if len(poses) < 3 or any(p is None for p in poses):
        raise ValueError("evaluating pointmap lifting needs the frames' poses to align MUSt3R's frame to the scene")
    dataset_cams = np.array([p[:3, 3] for p in poses])
    scale = umeyama(result.camera_centres, dataset_cams)[0]
    labels, _ = align_and_transfer(
        result.points,
        result.labels,
        result.point_scores,
        result.camera_centres,
        dataset_cams,
        scene.points,
        max_distance=1.5 * voxel_size * scale,  # a voxel of the cloud, in the scene's units
    )
    return labels


__all__ = [
    "GEOMETRIES",
    "ORACLE",
    "WithoutDepth",
    "PROPOSAL_SOURCES",
    "FrameSubset",
    "SceneRun",
    "build_method",
    "scene_superpoints",
    "segment_scene",
]
