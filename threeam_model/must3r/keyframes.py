"""The official online keyframe policy of MUSt3R (which frames are written to memory), by view coverage.

A frame is a keyframe when it shows enough content that the memory frames do not cover: its confident 3D points
(subsampled) are compared with the points of the memory frames, binned by viewing direction from the camera centre
(2*q^2 direction bins, one KD-tree each); each distance to the nearest memory point is divided by the point's depth,
and the score is a percentile of those distances. Keyframe <=> first frame, or score > threshold and median
confidence > min_conf. Unlike the official code, the points are kept per memory image, so an image evicted from a
capped memory also leaves the coverage index (the region it covered counts as unseen again).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy.spatial import KDTree


@dataclasses.dataclass
class KeyframeParams:
    """Defaults: the values of the official README, evaluations and demo (slam.py --subsamp 2
    --keyframe_overlap_thr 0.05 --min_conf_keyframe 1.5 --overlap_percentile 85, num_init_frames 2,
    searcher kdtree-scipy-quadrant_x2, overlap_mode nn-norm, fixed focal)."""

    subsample: int = 2  # keep every n-th pixel in both axes for the coverage test
    overlap_thr: float = 0.05  # keyframe if the coverage score is above this
    min_conf: float = 1.5  # points with conf <= this are ignored; median conf must exceed it
    percentile: float = 85.0  # percentile of the depth-normalised nearest-neighbour distances
    quadrant_divider: int = 2  # 2*q^2 viewing-direction bins
    num_init_frames: int = 2  # the first n frames start the memory jointly
    fixed_focal: bool = True  # one focal for the sequence (conf-weighted running mean)
    require_median_conf: bool = True  # the SLAM driver tests the median confidence; the gradio demo does not

    def __post_init__(self):
        if self.subsample < 1 or self.quadrant_divider < 1 or self.num_init_frames < 1:
            raise ValueError("subsample, quadrant_divider and num_init_frames must be >= 1")
        if not 0.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {self.percentile}")


def direction_bin(rays: np.ndarray, q: int, eps: float = 1e-5) -> np.ndarray:
    """Bin index in [0, 2q^2) of each direction (N, 3): theta = acos(z) in q bins, phi = atan2(y, x) in 2q bins."""
    rays = rays / np.linalg.norm(rays, axis=-1, keepdims=True).clip(eps)
    theta = (np.arccos(rays[:, 2]) / np.pi).clip(eps, 1 - eps)
    phi = (np.arctan2(rays[:, 1], rays[:, 0]) / np.pi).clip(-1 + eps, 1 - eps)
    return (np.floor(theta * q).astype(int) + (np.floor(phi * q).astype(int) + q) * q).astype(int)


class CoverageIndex:
    """3D points of the memory images, per direction bin, with nearest-neighbour distance queries."""

    def __init__(self, quadrant_divider: int = 2):
        self.q = quadrant_divider
        self.num_bins = 2 * quadrant_divider**2
        self._points: dict[int, list[np.ndarray]] = {}  # image id -> points per bin
        self._trees: list[KDTree | None] | None = None

    def __len__(self) -> int:
        return len(self._points)

    @property
    def num_points(self) -> int:
        return sum(len(p) for bins in self._points.values() for p in bins)

    def add(self, image_id: int, pts: torch.Tensor, cam_center: torch.Tensor) -> None:
        pts_np = pts.detach().float().cpu().numpy().reshape(-1, 3)
        bins = direction_bin((pts - cam_center[None]).detach().float().cpu().numpy().reshape(-1, 3), self.q)
        self._points[image_id] = [pts_np[bins == b] for b in range(self.num_bins)]
        self._trees = None

    def remove(self, image_id: int) -> None:
        if self._points.pop(image_id, None) is not None:
            self._trees = None

    def clear(self) -> None:
        self._points.clear()
        self._trees = None

    def _build(self) -> list[KDTree | None]:
        if self._trees is None:
            trees = []
            for b in range(self.num_bins):
                chunks = [bins[b] for bins in self._points.values() if len(bins[b])]
                # an unbalanced tree builds ~2x faster and answers the same exact nearest-neighbour queries
                trees.append(
                    KDTree(np.concatenate(chunks), balanced_tree=False, compact_nodes=False) if chunks else None
                )
            self._trees = trees
        return self._trees

    def query(self, pts: torch.Tensor, cam_center: torch.Tensor) -> np.ndarray:
        """Distance of each point (N, 3) to the nearest indexed point in its direction bin (inf if the bin is empty)."""
        trees = self._build()
        pts_np = pts.detach().float().cpu().numpy().reshape(-1, 3)
        bins = direction_bin((pts - cam_center[None]).detach().float().cpu().numpy().reshape(-1, 3), self.q)
        dists = np.full(len(pts_np), np.inf)
        for b in np.unique(bins):
            sel = bins == b
            if trees[b] is not None:
                dists[sel] = trees[b].query(pts_np[sel], k=1)[0]
        return dists


def coverage_points(pts3d: torch.Tensor, conf: torch.Tensor, params: KeyframeParams) -> torch.Tensor:
    """The subsampled confident points (M, 3) of a frame, as used for both the index and the score."""
    s = params.subsample
    mask = conf[::s, ::s] > params.min_conf
    return pts3d[::s, ::s][mask]


def overlap_score(
    index: CoverageIndex,
    pts3d: torch.Tensor,
    depth: torch.Tensor,
    conf: torch.Tensor,
    cam_center: torch.Tensor,
    params: KeyframeParams,
    eps: float = 1e-9,
) -> float:
    """Percentile of depth-normalised distances of the frame's confident points to the memory points ('nn-norm').

    pts3d (H, W, 3) world, depth (H, W) camera z, conf (H, W). Unseen bins give float max; no confident point
    gives 0.
    """
    s = params.subsample
    mask = conf[::s, ::s] > params.min_conf
    if not bool(mask.any()):
        return 0.0
    dists = index.query(pts3d[::s, ::s][mask], cam_center)
    dists = dists / (depth[::s, ::s][mask].detach().cpu().numpy() + eps)
    dists[np.isposinf(dists)] = np.finfo(dists.dtype).max
    return float(np.percentile(dists, params.percentile))


def is_keyframe(score: float, conf: torch.Tensor, first: bool, params: KeyframeParams) -> bool:
    if first:
        return True
    median_ok = (not params.require_median_conf) or float(conf.median()) > params.min_conf
    return bool(score > params.overlap_thr and median_ok)
