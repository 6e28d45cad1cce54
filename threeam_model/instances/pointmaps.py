"""Lifting without a depth sensor: MUSt3R's pointmaps stand in for depth, pose and the scene's points.

For RGB-only video the 3AM tracker already runs MUSt3R on every frame and returns its output in
`FrameResult.scene` (a `Must3rFrame`: world pointmap `pts3d` at MUSt3R's resolution H' x W', confidence `conf`,
camera-to-world `c2w`, `focal`, and the `crop_box` of the frame that was resized to H' x W'). From it:
- the scene's points are a voxel cloud grown from the confident pointmap points of every frame (one point per
  voxel, the first one seen), in MUSt3R's world frame;
- each frame is a pinhole camera at MUSt3R's resolution (focal, principal point at the image centre, `c2w`) whose
  "observed depth" is its own pointmap's camera-z, so the reprojection test of lifting.py applies unchanged: a cloud
  point counts as seen where its projected depth agrees with the frame's pointmap;
- masks are cropped to `crop_box` and resized (nearest) to H' x W'.
`align_and_transfer` moves the result onto a dataset's own points for evaluation: a similarity transform fitted
between MUSt3R's camera centres and the dataset's (Umeyama), then nearest-point label transfer.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from scipy.spatial import cKDTree

from threeam_model.instances.lifting import FrameView, LiftParams


@dataclasses.dataclass
class PointmapParams:
    voxel_size: float = 0.04  # scene units of the cloud (metres when MUSt3R's scale is metric)
    min_conf: float = 3.0  # MUSt3R confidence (>= 1) below which a pointmap point is neither added nor trusted


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


class VoxelCloud:
    """A point cloud that grows by voxels: a new point is kept only where no earlier point has its voxel."""

    def __init__(self, voxel_size: float):
        if voxel_size <= 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
        self.voxel_size = float(voxel_size)
        self._keys = np.zeros(0, np.int64)  # sorted voxel keys
        self._index = np.zeros(0, np.int64)  # point index of each key
        self._points: list[np.ndarray] = []
        self._colors: list[np.ndarray] = []
        self.num_points = 0

    def _key(self, points: np.ndarray) -> np.ndarray:
        v = np.floor(points / self.voxel_size).astype(np.int64) + (1 << 20)  # +-1e6 voxels per axis
        return (v[:, 0] << 42) | (v[:, 1] << 21) | v[:, 2]

    def add(self, points: np.ndarray, colors: np.ndarray) -> int:
        """Add the points whose voxel is new; returns how many were added."""
        points = np.asarray(points, np.float64).reshape(-1, 3)
        if not len(points):
            return 0
        keys = self._key(points)
        keys, first = np.unique(keys, return_index=True)
        known = np.zeros(len(keys), bool)
        if len(self._keys):
            pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
            known = self._keys[pos] == keys
        new_keys, new_first = keys[~known], first[~known]
        if not len(new_keys):
            return 0
        index = self.num_points + np.arange(len(new_keys))
        merged = np.concatenate([self._keys, new_keys])
        order = np.argsort(merged, kind="stable")
        self._keys, self._index = merged[order], np.concatenate([self._index, index])[order]
        self._points.append(points[new_first])
        self._colors.append(np.asarray(colors, np.uint8).reshape(-1, 3)[new_first])
        self.num_points += len(new_keys)
        return len(new_keys)

    @property
    def points(self) -> np.ndarray:
        return np.concatenate(self._points) if self._points else np.zeros((0, 3))

    @property
    def colors(self) -> np.ndarray:
        return np.concatenate(self._colors) if self._colors else np.zeros((0, 3), np.uint8)


class PointmapFrame:
    """One frame's MUSt3R camera: depth, K, pose at MUSt3R's resolution, and the mapping of frame masks onto it."""

    def __init__(self, scene, image_size: tuple[int, int], params: PointmapParams):
        self.pts3d = _numpy(scene.pts3d).astype(np.float64)  # (H', W', 3) world
        self.conf = _numpy(scene.conf)
        self.c2w = _numpy(scene.c2w).astype(np.float64)
        h, w = self.pts3d.shape[:2]
        self.shape = (h, w)
        # MUSt3R's camera: integer pixel coordinates, principal point (W'/2, H'/2) (must3r/postprocess.py)
        self.K = np.array([[scene.focal, 0.0, w / 2], [0.0, scene.focal, h / 2], [0.0, 0.0, 1.0]])
        cam = (self.pts3d.reshape(-1, 3) - self.c2w[:3, 3]) @ self.c2w[:3, :3]
        trusted = self.conf.reshape(-1) >= params.min_conf
        self.depth = np.where(trusted, cam[:, 2], 0.0).reshape(h, w).astype(np.float32)
        self.trusted = trusted.reshape(h, w)
        self.crop_box = tuple(int(v) for v in scene.crop_box)
        self.image_size = image_size

    def confident_points(self, rgb: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """World points with confidence >= min_conf, and their colours (from the frame, grey without it)."""
        pts = self.pts3d[self.trusted]
        if rgb is None or rgb.size == 0:
            return pts, np.full((len(pts), 3), 128, np.uint8)
        return pts, self.to_view(rgb)[self.trusted]

    def to_view(self, image: np.ndarray) -> np.ndarray:
        """A frame-sized array (mask or image) cropped to crop_box and resized (nearest) to H' x W'."""
        x0, y0, x1, y1 = self.crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        is_mask = crop.dtype == np.bool_
        out = cv2.resize(crop.astype(np.uint8) if is_mask else crop, self.shape[::-1], interpolation=cv2.INTER_NEAREST)
        return out.astype(bool) if is_mask else out

    def view(self, points: np.ndarray, lift: LiftParams, check_depth: bool = True) -> FrameView:
        return FrameView(points, self.depth, self.K, self.c2w, lift, check_depth)


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising |dst - (s R src + t)|^2 over corresponding (N, 3) points."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    R = u @ np.diag(d) @ vt
    var = (a**2).sum() / len(src)
    s = float((sig * d).sum() / var) if var > 0 else 1.0
    return s, R, mu_d - s * R @ mu_s


def align_and_transfer(
    cloud: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    cloud_cams: np.ndarray,
    dataset_cams: np.ndarray,
    dataset_points: np.ndarray,
    max_distance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-point labels and scores of a MUSt3R-frame cloud moved onto a dataset's points: a similarity fitted on
    the camera centres, then each dataset point takes its nearest cloud point's label within `max_distance`
    (dataset units)."""
    s, R, t = umeyama(cloud_cams, dataset_cams)
    moved = s * np.asarray(cloud, np.float64) @ R.T + t
    dist, nn = cKDTree(moved).query(np.asarray(dataset_points, np.float64), k=1)
    near = dist <= max_distance
    return np.where(near, labels[nn], 0), np.where(near, scores[nn], 0.0).astype(np.float32)


__all__ = ["PointmapFrame", "PointmapParams", "VoxelCloud", "align_and_transfer", "umeyama"]
