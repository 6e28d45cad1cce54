"""Per-object 3D: each tracked object's points, centroid and box, for grasping and navigation.

Two sources: the frame's own geometry (depth + intrinsics + camera pose: the object's masked pixels lifted into 3D),
or a re-identification anchor (the voxels where the object has been seen over the whole stream, so the box covers
the sides the camera saw earlier too). A mask edge that bleeds onto the wall behind an object would stretch its box
to the wall and pull its centroid back: the wall lies across a depth jump, so pixels whose depth is farther from the
object's median depth than `outlier_scale` median absolute deviations are dropped first (anchors are kept whole: the
re-identification already keeps only points that agreed with the object). Then the box, axis-aligned in the frame the
points are in, spans the 1st to 99th percentile of the rest along each axis. The points published are
voxel-downsampled and capped, so their size does not grow with the image.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from threeam_model.interface import CameraGeometry, ObjectResult


@dataclasses.dataclass(frozen=True)
class Object3DSettings:
    voxel: float = 0.02  # edge of the downsampling voxels, in the geometry's units (metres for RGB-D)
    max_points: int = 2000  # per object, after downsampling
    trim: float = 0.01  # fraction cut from each end of each axis for the box
    outlier_scale: float = 4.0  # depths beyond this many median absolute deviations from the median: not the object
    min_points: int = 10  # fewer lifted points: no 3D for that object on this frame
    max_lift_pixels: int = 20_000  # a bigger mask is lifted on a regular pixel grid, so the cost stays bounded

    def __post_init__(self):
        if not self.voxel > 0:
            raise ValueError(f"voxel must be > 0, got {self.voxel}")
        if self.max_points < 1 or self.min_points < 1 or self.max_lift_pixels < 1:
            raise ValueError("max_points, min_points and max_lift_pixels must be >= 1")
        if not self.outlier_scale > 0:
            raise ValueError(f"outlier_scale must be > 0, got {self.outlier_scale}")
        if not 0.0 <= self.trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {self.trim}")


@dataclasses.dataclass(frozen=True)
class Object3D:
    obj_id: int
    centroid: np.ndarray  # (3,)
    box_min: np.ndarray  # (3,)
    box_max: np.ndarray  # (3,)
    points: np.ndarray  # (N, 3) float32, voxel-downsampled, at most max_points
    score: float

    @property
    def box_center(self) -> np.ndarray:
        return (self.box_min + self.box_max) / 2

    @property
    def box_size(self) -> np.ndarray:
        return self.box_max - self.box_min


def summarize(
    obj_id: int, points: np.ndarray, score: float, settings: Object3DSettings, depth: np.ndarray | None = None
) -> Object3D | None:
    """Centroid, trimmed box and downsampled points of one object's (N, 3) points (None if too few); depth: (N,)
    the points' camera depths, for dropping what lies across a depth jump."""
    points = np.asarray(points, np.float64)
    keep = np.isfinite(points).all(axis=1)
    if depth is not None and keep.any():
        z = np.asarray(depth, np.float64)
        deviation = np.abs(z - np.median(z[keep]))
        keep &= deviation <= settings.outlier_scale * max(float(np.median(deviation[keep])), settings.voxel)
    points = points[keep]
    if len(points) < settings.min_points:
        return None
    low, high = np.quantile(points, [settings.trim, 1.0 - settings.trim], axis=0)
    inside = ((points >= low) & (points <= high)).all(axis=1)
    return Object3D(
        obj_id=obj_id,
        centroid=points[inside].mean(axis=0),
        box_min=low,
        box_max=high,
        points=voxel_downsample(points, settings.voxel, settings.max_points),
        score=float(score),
    )


def voxel_downsample(points: np.ndarray, voxel: float, max_points: int) -> np.ndarray:
    """One point (the mean) per occupied voxel; then every k-th voxel if there are still more than max_points."""
    cells = np.floor(points / voxel).astype(np.int64)
    cells -= cells.min(axis=0)
    span = cells.max(axis=0) + 1
    keys = (cells[:, 0] * span[1] + cells[:, 1]) * span[2] + cells[:, 2]  # one int per voxel: a 1-D unique
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse, points)
    means = sums / counts[:, None]
    if len(means) > max_points:
        means = means[np.linspace(0, len(means) - 1, max_points).astype(np.int64)]
    return means.astype(np.float32)


def lift_mask(
    mask: np.ndarray,
    camera: CameraGeometry,
    in_world: bool,
    max_pixels: int | None = None,
    origin: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """((N, 3) points, (N,) depths) of the mask's pixels with valid depth: points in the camera optical frame, or in
    the world (camera.c2w). max_pixels: lift every s-th row and column of a bigger mask. origin: the frame pixel
    (x, y) of mask[0, 0] when the mask is a window of the frame (an object's box)."""
    depth = np.asarray(camera.depth)
    depth = depth.reshape(depth.shape[:2])
    ys, xs = np.nonzero(mask)
    xs, ys = xs + origin[0], ys + origin[1]
    if max_pixels is not None and len(ys) > max_pixels:
        step = int(np.ceil(np.sqrt(len(ys) / max_pixels)))
        on_grid = (ys % step == 0) & (xs % step == 0)
        ys, xs = ys[on_grid], xs[on_grid]
    z = depth[ys, xs].astype(np.float64)
    valid = np.isfinite(z) & (z > 0)
    ys, xs, z = ys[valid], xs[valid], z[valid]
    k = np.asarray(camera.K, np.float64)
    x = (xs - k[0, 2]) * z / k[0, 0]
    y = (ys - k[1, 2]) * z / k[1, 1]
    points = np.stack([x, y, z], axis=1)
    if in_world and camera.c2w is not None:
        c2w = np.asarray(camera.c2w, np.float64)
        points = points @ c2w[:3, :3].T + c2w[:3, 3]
    return points, z


def objects_from_frame(
    objects: dict[int, ObjectResult], camera: CameraGeometry, settings: Object3DSettings, in_world: bool = False
) -> dict[int, Object3D]:
    """3D of every visible object from this frame's masks and depth (camera frame, or world with in_world)."""
    out = {}
    for obj_id, obj in objects.items():
        if obj.visible:
            x0, y0 = obj.box[:2]
            points, depth = lift_mask(obj.window, camera, in_world, settings.max_lift_pixels, origin=(x0, y0))
            got = summarize(obj_id, points, obj.score, settings, depth)
            if got is not None:
                out[obj_id] = got
    return out


def objects_from_anchors(anchors: dict[int, np.ndarray], scores: dict[int, float], settings: Object3DSettings):
    """3D of every object from its re-identification anchor's (N, 3) world voxels."""
    out = {}
    for obj_id, points in anchors.items():
        got = summarize(obj_id, points, scores.get(obj_id, 0.0), settings)
        if got is not None:
            out[obj_id] = got
    return out
