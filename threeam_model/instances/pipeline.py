"""Class-agnostic 3D instances from tracked 2D masks, online, frame by frame (the paper's supplement D).

Per frame:
1. the tracker tracks every live track (`Tracker.track`: one batched step for all of them);
2. on a keyframe (keyframes.py), 2D proposals (proposals.py) that an existing track already covers on this frame
   (IoU >= `new_track_iou`, or mostly inside it) are dropped; each other one starts a new track, prompted with its
   mask, and is propagated forward from here on (no backward pass);
3. every visible track's mask is eroded and lifted onto the scene points the frame sees, with the reprojection
   score as weight (lifting.py), into the track's 3D evidence; pairs of visible tracks record their 2D mask
   overlap (merging.py). The frame's depth and pose say what it sees (RGB-D scenes), or without depth the
   tracker's MUSt3R pointmap, onto a point cloud grown from those pointmaps (pointmaps.py);
4. tracks run on while invisible, so a tracker that re-finds an object links its later masks to the same track
   (as the paper propagates every keyframe's proposals to all later frames). When the tracker is full (its
   max_objects) the track invisible the longest is retired to make room, and with `patience` set a track
   invisible for longer than that is retired anyway: the tracker's work per frame stays bounded whatever the
   length of the video.
At the end (`finish`), tracks are merged into instances by 2D temporal overlap and 3D overlap (merging.py), and
each superpoint goes to the instance that observed it most (voting.py).

The work per frame is bounded (live tracks, one projection of the scene points); the 3D evidence grows with the
distinct (track, point) pairs, i.e. with the surface each track saw, not with the number of frames it saw it.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from threeam_model.data.frames import Frame, VideoSource
from threeam_model.instances.keyframes import KeyframeParams, KeyframeSelector
from threeam_model.instances.lifting import FrameView, LiftParams, erode
from threeam_model.instances.merging import (
    MergeParams,
    SparseCounts,
    TemporalOverlap,
    fragment_support,
    merge_tracks,
    superpoint_fragments,
)
from threeam_model.instances.pointmaps import PointmapFrame, PointmapParams, VoxelCloud
from threeam_model.instances.superpoints import superpoints as graph_superpoints
from threeam_model.instances.voting import VoteParams, vote
from threeam_model.interface import CameraGeometry, ObjectResult, Tracker, mask_box


@dataclasses.dataclass
class PipelineParams:
    keyframes: KeyframeParams = dataclasses.field(default_factory=KeyframeParams)
    lift: LiftParams = dataclasses.field(default_factory=LiftParams)
    merge: MergeParams = dataclasses.field(default_factory=MergeParams)
    vote: VoteParams = dataclasses.field(default_factory=VoteParams)
    pointmap: PointmapParams = dataclasses.field(default_factory=PointmapParams)  # lifting without depth
    new_track_iou: float = 0.5  # a proposal with this IoU against a track's mask is that track, not a new one
    new_track_containment: float = 0.7  # ... as is one lying this much inside a track's mask
    patience: int | None = None  # frames a track may stay invisible before it is retired (None: until room is needed)
    check_depth: bool = True  # the reprojection test (False: every point in the frustum counts as seen)


@dataclasses.dataclass
class TrackRecord:
    row: int  # row of this track in the evidence matrices
    obj_id: int  # the tracker's object id while live (ids of retired tracks are reused)
    first_frame: int
    proposal_score: float
    last_visible: int
    frames_visible: int = 0
    tracker_score_sum: float = 0.0
    retired: bool = False


@dataclasses.dataclass
class InstanceResult:
    labels: np.ndarray  # (N,) int32 instance id per scene point, 0 = none; ids 1..M by decreasing score
    point_scores: np.ndarray  # (N,) float32 in [0, 1]: how consistently the point was seen inside its instance
    instances: list[dict]  # id, score, num_points, tracks, first_frame, last_frame, frames_visible
    stats: dict
    points: np.ndarray  # (N, 3) the points labelled: the scene's, or the cloud grown from pointmaps
    colors: np.ndarray | None = None  # (N, 3) uint8 of a grown cloud
    camera_centres: np.ndarray | None = None  # (T, 3) per frame, in the points' frame (pointmap mode)
    frame_poses: list | None = None  # the frames' own camera-to-world poses where they had them (pointmap mode)

    @property
    def scores(self) -> dict[int, float]:
        return {inst["id"]: inst["score"] for inst in self.instances}


class InstancePipeline:
    """Online 3D instance segmentation of one scene (module docstring).

    tracker: any `Tracker` (streaming SAM 2, 3AM, an oracle); its max objects caps the live tracks.
    proposals: callable (rgb, instance map or None) -> list of `Proposal` (proposals.py).
    points: (N, 3) world coordinates of the scene's points (mesh vertices or a point cloud), lifted onto with each
        frame's depth and pose; None: no depth, the points grow from the tracker's MUSt3R pointmaps
        (`FrameResult.scene`, the 3AM tracker's; pointmaps.py);
    superpoints: (N,) superpoint id per point (superpoints.py, or the dataset's own); None: a graph segmentation of
        the points at the end.
    """

    def __init__(self, tracker: Tracker, proposals, points, superpoints=None, params: PipelineParams | None = None):
        self.tracker = tracker
        self.proposals = proposals
        self.from_pointmaps = points is None
        self.points = None if points is None else np.asarray(points, np.float64)
        self.superpoints = None if superpoints is None else np.asarray(superpoints).reshape(-1)
        if self.superpoints is not None and (self.points is None or len(self.superpoints) != len(self.points)):
            raise ValueError("superpoints need the scene's points, one id per point")
        self.params = params or PipelineParams()
        self.max_live = int(getattr(tracker, "max_objects", 64))
        self.reset()

    def reset(self) -> None:
        self.tracker.reset()
        n = 0 if self.from_pointmaps else len(self.points)
        self.cloud = VoxelCloud(self.params.pointmap.voxel_size) if self.from_pointmaps else None
        self.camera_centres: list[np.ndarray] = []
        self.frame_poses: list[np.ndarray | None] = []
        self.keyframes = KeyframeSelector(n, self.params.keyframes)
        self.hits, self.seen = SparseCounts(n), SparseCounts(n)
        self.temporal = TemporalOverlap()
        self.tracks: list[TrackRecord] = []
        self.live: dict[int, TrackRecord] = {}  # tracker object id -> record
        self.frames = 0
        self.keyframe_indices: list[int] = []
        self.counts = {"proposals": 0, "new_tracks": 0, "covered_proposals": 0, "dropped_full": 0}
        self.timings = {"track": 0.0, "proposals": 0.0, "lift": 0.0}

    def run(self, source: VideoSource, progress=None) -> InstanceResult:
        for i in range(len(source)):
            self.step(source.frame(i))
            if progress is not None:
                progress(i)
        return self.finish()

    def step(self, frame: Frame) -> None:
        """One frame: RGB with depth, K and a camera-to-world pose (or RGB only, lifting with pointmaps)."""
        if not self.from_pointmaps and not frame.has_geometry:
            raise ValueError(f"frame {frame.index}: lifting needs depth, intrinsics and a pose (or pointmaps)")
        t0 = time.perf_counter()
        geometry = CameraGeometry(frame.depth, frame.K, frame.pose) if frame.has_geometry else None
        result = self.tracker.track(frame.rgb, geometry)
        t1 = time.perf_counter()
        to_view = None
        if self.from_pointmaps:
            view, to_view = self._pointmap_view(result.scene, frame)
        else:
            view = FrameView(self.points, frame.depth, frame.K, frame.pose, self.params.lift, self.params.check_depth)
        index = self.frames
        masks = {oid: obj for oid, obj in result.objects.items() if oid in self.live and obj.visible}
        t2 = time.perf_counter()
        if self.keyframes(index, view.index):
            self.keyframe_indices.append(index)
            masks.update(self._start_tracks(frame, masks, index))
        t3 = time.perf_counter()
        self._lift(view, masks, index, to_view)
        self._retire(index)
        self.frames += 1
        t4 = time.perf_counter()
        self.timings["track"] += t1 - t0
        self.timings["proposals"] += t3 - t2
        self.timings["lift"] += (t2 - t1) + (t4 - t3)

    def _start_tracks(self, frame: Frame, masks: dict[int, ObjectResult], index: int) -> dict[int, ObjectResult]:
        proposals = self.proposals(frame.rgb, frame.instance)
        self.counts["proposals"] += len(proposals)
        taken = [obj.mask for obj in masks.values()]
        new = {}
        for prop in sorted(proposals, key=lambda p: -p.score):
            area = int(prop.mask.sum())
            if area == 0 or self._covered(prop.mask, area, taken):
                self.counts["covered_proposals"] += 1
                continue
            if len(self.live) >= self.max_live and not self._free_one(index):
                self.counts["dropped_full"] += 1
                continue
            obj_id = self._free_id()
            obj = self.tracker.add_prompt(obj_id, mask=prop.mask)
            record = TrackRecord(len(self.tracks), obj_id, index, float(prop.score), index)
            self.tracks.append(record)
            self.live[obj_id] = record
            self.counts["new_tracks"] += 1
            taken.append(prop.mask)
            if obj.visible:
                new[obj_id] = obj
        return new

    def _covered(self, mask: np.ndarray, area: int, taken: list[np.ndarray]) -> bool:
        p = self.params
        for other in taken:
            inter = int(np.count_nonzero(mask & other))
            if inter and (
                inter / (area + other.sum() - inter) >= p.new_track_iou or inter / area >= p.new_track_containment
            ):
                return True
        return False

    def _pointmap_view(self, scene, frame: Frame):
        if scene is None or not hasattr(scene, "pts3d"):
            raise ValueError(
                "lifting without depth needs MUSt3R's pointmaps in FrameResult.scene (the 3am tracker gives them); "
                f"{type(self.tracker).__name__} returned {type(scene).__name__}"
            )
        pm = PointmapFrame(scene, frame.rgb.shape[:2], self.params.pointmap)
        self.cloud.add(*pm.confident_points(frame.rgb))
        n = self.cloud.num_points
        self.hits.num_points = self.seen.num_points = n
        self.keyframes.grow(n)
        self.camera_centres.append(pm.c2w[:3, 3].copy())
        self.frame_poses.append(None if frame.pose is None else frame.pose.copy())
        return pm.view(self.cloud.points, self.params.lift, self.params.check_depth), pm.to_view

    def _lift(self, view: FrameView, masks: dict[int, ObjectResult], index: int, to_view=None) -> None:
        """to_view: maps a frame-sized mask into the view's image (pointmap mode), None when they are the same."""
        erosion, margin = self.params.lift.erosion_px, self.params.merge.seen_margin_px
        windows = {}
        for obj_id, obj in masks.items():
            record = self.live[obj_id]
            x0, y0, x1, y1 = obj.box
            window = obj.mask[y0 : y1 + 1, x0 : x1 + 1]
            if to_view is None:
                idx, weight = view.points_in_window(obj.box, erode(window, erosion))
                near = view.points_in_box(obj.box, margin)
            else:
                mask = to_view(erode(obj.mask, erosion))
                box = mask_box(mask)
                idx, weight = view.points_in(mask)
                near = view.points_in_box(box, margin) if box is not None else idx
            self.hits.add(record.row, idx, weight)
            self.seen.add(record.row, near)
            record.last_visible, record.frames_visible = index, record.frames_visible + 1
            record.tracker_score_sum += obj.score
            windows[record.row] = (obj.box, window, obj.area)
        self.temporal.add_frame(windows)

    def _retire(self, index: int) -> None:
        if self.params.patience is None:
            return
        for obj_id, record in list(self.live.items()):
            if index - record.last_visible > self.params.patience:
                self._remove(obj_id)

    def _free_one(self, index: int) -> bool:
        """Retire the live track invisible the longest (not one visible on this frame); False if none is."""
        stale = [r for r in self.live.values() if r.last_visible < index]
        if not stale:
            return False
        self._remove(min(stale, key=lambda r: r.last_visible).obj_id)
        return True

    def _remove(self, obj_id: int) -> None:
        self.tracker.remove_object(obj_id)
        self.live.pop(obj_id).retired = True

    def _free_id(self) -> int:
        return next(i for i in range(1, len(self.live) + 2) if i not in self.live)

    @property
    def state_nbytes(self) -> int:
        """Bytes of 3D evidence held (the part of the pipeline's state that grows over a scene)."""
        return self.hits.nbytes + self.seen.nbytes + 32 * len(self.temporal.pairs)

    def finish(self) -> InstanceResult:
        """Merge the tracks into instances and vote per superpoint."""
        t0 = time.perf_counter()
        p = self.params
        n_tracks = len(self.tracks)
        points = self.cloud.points if self.from_pointmaps else self.points
        spx = self.superpoints
        if spx is None:
            spx = graph_superpoints(points) if len(points) > 1 else np.zeros(len(points), np.int64)
        hits, seen = self.hits.matrix(n_tracks), self.seen.matrix(n_tracks)
        support = fragment_support(hits, seen, p.merge.support_ratio)
        grown = superpoint_fragments(support, seen, spx, p.vote.min_coverage)
        merged = merge_tracks(n_tracks, grown, self.temporal.scores(), p.merge)
        voted = vote(merged.groups, hits, seen, spx, p.merge.support_ratio, p.vote)
        candidates = []
        for g, rows in enumerate(merged.groups):
            if voted.sizes[g] == 0:
                continue
            recs = [self.tracks[r] for r in rows]
            weights = np.array([max(r.frames_visible, 1) for r in recs], float)
            proposal = float(np.average([r.proposal_score for r in recs], weights=weights))
            candidates.append((float(voted.consistency[g]) * proposal, g, recs))
        candidates.sort(key=lambda c: (-c[0], c[1]))
        labels = np.zeros(len(points), np.int32)
        instances = []
        for new_id, (score, g, recs) in enumerate(candidates, start=1):
            labels[voted.labels == g + 1] = new_id
            instances.append(
                {
                    "id": new_id,
                    "score": score,
                    "num_points": int(voted.sizes[g]),
                    "tracks": [r.row for r in recs],
                    "first_frame": min(r.first_frame for r in recs),
                    "last_frame": max(r.last_visible for r in recs),
                    "frames_visible": int(sum(r.frames_visible for r in recs)),
                }
            )
        point_scores = np.where(labels > 0, voted.point_scores, 0.0).astype(np.float32)
        self.timings["merge_and_vote"] = time.perf_counter() - t0
        stats = {
            "frames": self.frames,
            "keyframes": len(self.keyframe_indices),
            "tracks": n_tracks,
            "links_2d": sum(1 for link in merged.links if link[2] == "2d"),
            "links_3d": sum(1 for link in merged.links if link[2] == "3d"),
            "instances": len(instances),
            **self.counts,
            "seconds": dict(self.timings),
            "evidence_bytes": self.state_nbytes,
        }
        if not self.from_pointmaps:
            return InstanceResult(labels, point_scores, instances, stats, points)
        stats["cloud_points"] = len(points)
        cams = np.array(self.camera_centres).reshape(-1, 3)
        return InstanceResult(labels, point_scores, instances, stats, points, self.cloud.colors, cams, self.frame_poses)


__all__ = ["InstancePipeline", "InstanceResult", "PipelineParams", "TrackRecord"]
