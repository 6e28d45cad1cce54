"""Where every pixel of a frame lies in one world frame: the input of geometric re-identification.

A `GeometrySource` turns each frame into a `FrameGeometry`, sampled on a coarse grid (every `stride`-th pixel of
the frame, so its cost does not grow with the camera's resolution): a world point and a depth per grid pixel, plus a
3x4 projection that maps world points into the same grid. Two sources:

- `RGBDGeometry`: a robot's depth image, intrinsics and camera-to-world pose (e.g. from TF), given with each frame
  as `track(frame, geometry=CameraGeometry(depth, K, c2w))`. Exact when they are.
- `Must3rGeometry`: RGB only. MUSt3R's streaming pointmap (world points + confidence) mapped back onto the frame
  through its crop box; the projection is fitted to the pointmap (DLT), so no pose or intrinsics are needed.

Grid pixel (row i, column j) is frame pixel (x = j * stride, y = i * stride). Depth is along the camera's z axis.
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np

from threeam_model.errors import GeometryInputError
from threeam_model.interface import CameraGeometry, FrameResult


@dataclasses.dataclass
class FrameGeometry:
    """One frame's geometry on the coarse grid."""

    stride: int  # grid pixel (i, j) is frame pixel (x = j * stride, y = i * stride)
    points: np.ndarray  # (h, w, 3) float32 world points; NaN where unknown
    depth: np.ndarray  # (h, w) float32 camera-z depth; NaN where unknown
    projection: np.ndarray  # (3, 4) float64 world -> grid pixel (x = column, y = row); row 2 gives the depth

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.depth.shape

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.depth)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> grid coordinates (N, 2) as (x, y) and depth (N,). Depth <= 0: behind the camera."""
        p = self.projection
        hom = points @ p[:, :3].T + p[:, 3]
        z = hom[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = hom[:, :2] / z[:, None]
        return uv, z


def grid_stride(image_size: tuple[int, int], work_long_side: int) -> int:
    """Smallest integer stride that brings the frame's long side down to at most `work_long_side` grid pixels."""
    return max(1, -(-max(image_size) // max(1, int(work_long_side))))


def downsample_mask(mask: np.ndarray, stride: int) -> np.ndarray:
    """A frame-size mask sampled on the geometry grid."""
    return mask[::stride, ::stride]


class GeometrySource(abc.ABC):
    """Gives the geometry of each tracked frame. Called once per frame, in order, by the re-identification mode."""

    def check(self, camera: CameraGeometry | None) -> CameraGeometry | None:
        """Validate the frame's camera geometry before the base tracker sees the frame (raise GeometryInputError on
        what this source cannot use); returns what to pass on. Sources that read no camera geometry accept any."""
        return camera

    @abc.abstractmethod
    def geometry(
        self, frame: np.ndarray, stride: int, camera: CameraGeometry | None, base: FrameResult
    ) -> FrameGeometry | None:
        """Geometry of `frame` on a grid of every `stride`-th pixel, or None when this frame has none.

        camera: the depth, intrinsics and pose given with the frame to `track` (None when there were none);
        base: the base tracker's result for the frame (its `scene` holds the 3AM tracker's MUSt3R output)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Start a new stream: forget anything carried over from earlier frames."""


# ------------------------------------------------------------------------------------------------ RGB-D + pose


def check_camera(camera: CameraGeometry) -> CameraGeometry:
    """Validate a frame's depth, intrinsics and camera-to-world pose; raises GeometryInputError on anything unusable.

    depth: (H, W) (or (H, W, 1)) in depth units, 0 / NaN = unknown; K: (3, 3) intrinsics of the depth image;
    c2w: (4, 4) camera-to-world pose (OpenCV camera axes: x right, y down, z forward). The depth image may have
    another resolution than the colour frame (it is assumed registered to it and to cover the same field of view).
    Returns the same geometry with depth as an (H, W) array and K, c2w as float64 (no copy of the depth data).
    """
    if not isinstance(camera, CameraGeometry):
        raise GeometryInputError(f"geometry must be a CameraGeometry(depth, K, c2w), got {type(camera).__name__}")
    depth = np.asarray(camera.depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2 or depth.size == 0:
        raise GeometryInputError(f"depth must be an (H, W) image, got shape {tuple(depth.shape)}")
    if depth.dtype.kind not in "fiu":
        raise GeometryInputError(f"depth must be numeric (float metres or integer units), got {depth.dtype}")
    K = np.asarray(camera.K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise GeometryInputError(f"K must be a finite (3, 3) pinhole matrix with fx, fy > 0, got {K.tolist()}")
    c2w = np.asarray(camera.c2w, dtype=np.float64)
    if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
        raise GeometryInputError(f"c2w must be a finite (4, 4) camera-to-world matrix, got shape {c2w.shape}")
    rot = c2w[:3, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-3) or np.linalg.det(rot) < 0:
        raise GeometryInputError("c2w[:3, :3] must be a rotation (orthonormal, det +1); check the pose's units")
    if depth is camera.depth and K is camera.K and c2w is camera.c2w:
        return camera
    return CameraGeometry(depth, K, c2w)


class RGBDGeometry(GeometrySource):
    """Depth image + intrinsics + camera-to-world pose: the `CameraGeometry` given with each frame,
    `track(frame, geometry=CameraGeometry(depth, K, c2w))` (see `check_camera` for what each must be).

    Stateless: a frame given without geometry has none (the re-identification mode then passes the base tracker's
    result through), so dropped depth messages degrade gracefully instead of pairing stale depth with a new frame.
    """

    def __init__(self, depth_scale: float = 1.0, min_depth: float = 0.05, max_depth: float = float("inf")):
        """depth_scale: metres per depth unit (1.0 for float metres, 0.001 for uint16 millimetres, e.g. 16UC1)."""
        if not depth_scale > 0:
            raise GeometryInputError(f"depth_scale must be > 0 metres per unit, got {depth_scale}")
        if not 0 <= min_depth < max_depth:
            raise GeometryInputError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        self.depth_scale = float(depth_scale)
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)

    def check(self, camera: CameraGeometry | None) -> CameraGeometry | None:
        return None if camera is None else check_camera(camera)

    def reset(self) -> None:
        pass  # nothing is carried over between frames

    def geometry(
        self, frame: np.ndarray, stride: int, camera: CameraGeometry | None = None, base: FrameResult | None = None
    ) -> FrameGeometry | None:
        if camera is None:
            return None
        camera = check_camera(camera)
        depth_raw, K, c2w = camera.depth, camera.K, camera.c2w
        h_img, w_img = frame.shape[:2]
        h_dep, w_dep = depth_raw.shape
        # grid pixel -> frame pixel -> depth pixel (nearest), and K scaled into frame pixels
        sx, sy = w_dep / w_img, h_dep / h_img
        xs = np.arange(0, w_img, stride)
        ys = np.arange(0, h_img, stride)
        cols = np.clip(np.round((xs + 0.5) * sx - 0.5).astype(np.int64), 0, w_dep - 1)
        rows = np.clip(np.round((ys + 0.5) * sy - 0.5).astype(np.int64), 0, h_dep - 1)
        depth = depth_raw[np.ix_(rows, cols)].astype(np.float32) * np.float32(self.depth_scale)
        depth[~((depth >= self.min_depth) & (depth <= self.max_depth))] = np.nan
        K_img = np.array(
            [
                [K[0, 0] / sx, K[0, 1] / sx, (K[0, 2] + 0.5) / sx - 0.5],
                [0.0, K[1, 1] / sy, (K[1, 2] + 0.5) / sy - 0.5],
                [0.0, 0.0, 1.0],
            ]
        )
        K_grid = np.diag([1.0 / stride, 1.0 / stride, 1.0]) @ K_img
        w2c = np.linalg.inv(c2w)
        projection = K_grid @ w2c[:3]
        # back-project grid pixels: camera ray (K_grid^-1 [j, i, 1]) * depth, then to world
        jj, ii = np.meshgrid(np.arange(len(xs), dtype=np.float64), np.arange(len(ys), dtype=np.float64))
        rays = np.stack([jj, ii, np.ones_like(jj)], axis=-1) @ np.linalg.inv(K_grid).T
        cam = rays * depth[..., None]
        points = (cam @ c2w[:3, :3].T + c2w[:3, 3]).astype(np.float32)
        return FrameGeometry(stride, points, depth, projection)


# -------------------------------------------------------------------------------------------------- MUSt3R


class Must3rGeometry(GeometrySource):
    """RGB only: world points from streaming MUSt3R (a `Must3rFrame`: pts3d, conf, crop_box).

    `Must3rGeometry(stream)` runs `stream.step(frame)` itself (over plain SAM 2).
    `Must3rGeometry.from_tracker_scene()` (stream None) reads the MUSt3R frame the 3AM tracker already computed
    for the frame, `FrameResult.scene` of the base tracker's result, so MUSt3R still runs once per frame.
    """

    def __init__(self, stream=None, conf_min: float = 3.0, fit_points: int = 600):
        """stream: e.g. threeam_model.must3r.Must3rStream, or None to read the base tracker's `FrameResult.scene`;
        conf_min: MUSt3R confidence (>= 1) below which a point is ignored; fit_points: confident points used to
        fit the frame's projection."""
        self.stream = stream
        self.conf_min = float(conf_min)
        self.fit_points = int(fit_points)

    @classmethod
    def from_tracker_scene(cls, conf_min: float = 3.0, fit_points: int = 600) -> Must3rGeometry:
        """Geometry from the base tracker's per-frame scene output (`FrameResult.scene`, the 3AM tracker's
        `Must3rFrame`), without a MUSt3R stream of its own."""
        return cls(None, conf_min, fit_points)

    def reset(self) -> None:
        if self.stream is not None and hasattr(self.stream, "reset"):
            self.stream.reset()  # without a stream, the base tracker resets its own MUSt3R

    def geometry(
        self, frame: np.ndarray, stride: int, camera: CameraGeometry | None = None, base: FrameResult | None = None
    ) -> FrameGeometry | None:
        if self.stream is not None:
            out = self.stream.step(frame)
        else:
            out = None if base is None else base.scene
            if out is None:
                raise GeometryInputError(
                    "the base tracker returns no scene output (FrameResult.scene is None); use method 3am or give "
                    "Must3rGeometry a stream"
                )
        if out is None:
            return None
        return pointmap_geometry(
            _numpy(out.pts3d), _numpy(out.conf), out.crop_box, frame.shape[:2], stride, self.conf_min, self.fit_points
        )


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def pointmap_geometry(
    pts3d: np.ndarray,
    conf: np.ndarray,
    crop_box,
    image_size: tuple[int, int],
    stride: int,
    conf_min: float = 3.0,
    fit_points: int = 600,
) -> FrameGeometry | None:
    """A model-resolution pointmap (H', W', 3) + confidence (H', W') -> the frame's geometry on the grid.

    crop_box = (x0, y0, x1, y1): the frame region (pixels, end exclusive) that was resized to (H', W'); grid pixels
    outside it have no geometry. Returns None when too few confident points remain to fit a projection.
    """
    pts3d = np.asarray(pts3d, dtype=np.float32)
    conf = np.asarray(conf, dtype=np.float32)
    if pts3d.ndim == 4 and pts3d.shape[0] == 1:
        pts3d, conf = pts3d[0], conf.reshape(conf.shape[-2:])
    if pts3d.ndim != 3 or pts3d.shape[2] != 3 or conf.shape != pts3d.shape[:2]:
        raise GeometryInputError(f"need pts3d (H, W, 3) and conf (H, W), got {pts3d.shape} and {conf.shape}")
    x0, y0, x1, y1 = (float(v) for v in crop_box)
    if not (x1 > x0 and y1 > y0):
        raise GeometryInputError(f"crop_box {tuple(crop_box)} is empty; expected (x0, y0, x1, y1) frame pixels")
    hm, wm = conf.shape
    h_img, w_img = image_size
    xs = np.arange(0, w_img, stride, dtype=np.float64)
    ys = np.arange(0, h_img, stride, dtype=np.float64)
    # frame pixel centre -> model pixel (nearest); outside the crop -> no geometry
    mc = np.floor((xs + 0.5 - x0) * wm / (x1 - x0)).astype(np.int64)
    mr = np.floor((ys + 0.5 - y0) * hm / (y1 - y0)).astype(np.int64)
    col_ok, row_ok = (mc >= 0) & (mc < wm), (mr >= 0) & (mr < hm)
    points = pts3d[np.ix_(np.clip(mr, 0, hm - 1), np.clip(mc, 0, wm - 1))]
    good = (conf[np.ix_(np.clip(mr, 0, hm - 1), np.clip(mc, 0, wm - 1))] >= conf_min) & np.outer(row_ok, col_ok)
    good &= np.isfinite(points).all(axis=-1)
    idx = np.flatnonzero(good)
    if idx.size < 12:
        return None
    if idx.size > fit_points:
        idx = idx[np.linspace(0, idx.size - 1, fit_points).round().astype(np.int64)]
    gw = len(xs)
    pix = np.stack([idx % gw, idx // gw], axis=1).astype(np.float64)
    projection = fit_projection(points.reshape(-1, 3)[idx].astype(np.float64), pix)
    if projection is None:
        return None
    points = np.where(good[..., None], points, np.nan).astype(np.float32)
    hom = points.reshape(-1, 3).astype(np.float64) @ projection[2, :3] + projection[2, 3]
    depth = hom.reshape(good.shape).astype(np.float32)
    depth[~(depth > 0)] = np.nan
    points[~np.isfinite(depth)] = np.nan
    return FrameGeometry(stride, points, depth, projection)


def fit_projection(world: np.ndarray, pixels: np.ndarray) -> np.ndarray | None:
    """Least-squares 3x4 camera matrix mapping world (N, 3) to pixels (N, 2) (normalised DLT, Hartley & Zisserman).

    Scaled so that row 2 gives the camera-z depth of a point in world units (positive in front of the camera).
    """
    if len(world) < 6:
        return None
    wc, pc = world.mean(0), pixels.mean(0)
    ws = np.sqrt(3) / max(np.sqrt(((world - wc) ** 2).sum(1)).mean(), 1e-12)
    ps = np.sqrt(2) / max(np.sqrt(((pixels - pc) ** 2).sum(1)).mean(), 1e-12)
    tw = np.diag([ws, ws, ws, 1.0])
    tw[:3, 3] = -ws * wc
    tp = np.diag([ps, ps, 1.0])
    tp[:2, 2] = -ps * pc
    xw = np.c_[(world - wc) * ws, np.ones(len(world))]
    xp = (pixels - pc) * ps
    a = np.zeros((2 * len(world), 12))
    a[0::2, 0:4] = xw
    a[0::2, 8:12] = -xp[:, :1] * xw
    a[1::2, 4:8] = xw
    a[1::2, 8:12] = -xp[:, 1:2] * xw
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    if s[-2] < 1e-9 * s[0]:  # degenerate (e.g. all points on one line)
        return None
    p = np.linalg.inv(tp) @ vt[-1].reshape(3, 4) @ tw
    norm = np.linalg.norm(p[2, :3])
    if norm < 1e-12:
        return None
    p = p / norm
    if np.median(world @ p[2, :3] + p[2, 3]) < 0:
        p = -p
    return p
