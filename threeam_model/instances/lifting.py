"""Lifting 2D masks onto the scene's 3D points: which points a frame sees, and which of them a mask covers.

A frame sees a scene point when the point projects into the image in front of the camera and its projected depth
agrees with the depth observed at that pixel: the
reprojection score is 1 - |projected - observed| / tolerance, and points scoring 0 or less are not seen. This
drops what a mask's pixels would otherwise pick up from behind the visible surface (the floor and walls occluded
by an object all project into its mask) and points whose depth disagrees at object boundaries (depth noise, a
misaligned pose). Masks are eroded by a few pixels first, because tracking errors concentrate on mask boundaries
(supplement D). The score weights a point's vote.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass
class LiftParams:
    erosion_px: int = 1  # masks shrink by this many pixels before lifting ("slightly", supplement D)
    depth_tolerance: float = 0.04  # metres of disagreement at which the reprojection score reaches 0 ...
    depth_tolerance_rel: float = 0.02  # ... plus this fraction of the observed depth
    min_depth: float = 0.05  # observed depths at or below this are "no depth" (0 in depth images)

    def __post_init__(self):
        if self.erosion_px < 0 or self.depth_tolerance <= 0 or self.depth_tolerance_rel < 0:
            raise ValueError("erosion_px must be >= 0 and depth tolerances > 0 (relative >= 0)")


def erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """A bool mask shrunk by `pixels` (a disk of that radius; outside the array counts as background); 0 returns
    it unchanged. A mask's bounding-box window erodes exactly like the whole frame."""
    if pixels <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


class FrameView:
    """The scene points one frame sees: their indices, pixels and reprojection scores (computed once per frame).

    points: (N, 3) world; depth: (H, W) metres along the camera z axis (0 = unknown); K: (3, 3); c2w: (4, 4)
    camera-to-world (OpenCV axes). check_depth=False keeps every point in the view frustum with score 1 (the
    ablation without reprojection filtering: occluded points then count as seen).
    """

    def __init__(self, points, depth, K, c2w, params: LiftParams | None = None, check_depth: bool = True):
        params = params or LiftParams()
        depth = np.asarray(depth, dtype=np.float32)
        self.image_size = depth.shape
        h, w = depth.shape
        cam = (np.asarray(points, np.float64) - c2w[:3, 3]) @ c2w[:3, :3]
        z = cam[:, 2]
        front = np.flatnonzero(z > params.min_depth)
        zf = z[front]
        u = np.round(K[0, 0] * cam[front, 0] / zf + K[0, 2])
        v = np.round(K[1, 1] * cam[front, 1] / zf + K[1, 2])
        inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        idx, zf = front[inside], zf[inside]
        pix = v[inside].astype(np.int64) * w + u[inside].astype(np.int64)
        if check_depth:
            observed = depth.reshape(-1)[pix]
            tolerance = params.depth_tolerance + params.depth_tolerance_rel * observed
            score = 1.0 - np.abs(zf - observed) / tolerance
            keep = (observed > params.min_depth) & (score > 0)
            idx, pix, score = idx[keep], pix[keep], score[keep]
        else:
            score = np.ones(len(idx))
        self.index = idx  # (M,) scene point indices seen by this frame
        self.pixel = pix  # (M,) their flat pixel index (row * W + col)
        self.score = score.astype(np.float32)  # (M,) reprojection score in (0, 1]
        self.row, self.col = pix // w, pix % w

    def __len__(self) -> int:
        return len(self.index)

    def points_in(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point indices, reprojection scores) of the seen points whose pixel lies in the (H, W) bool mask."""
        sel = np.asarray(mask, bool).reshape(-1)[self.pixel]
        return self.index[sel], self.score[sel]

    def points_in_window(self, box: tuple[int, int, int, int], window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`points_in` for a mask given as its inclusive box (x0, y0, x1, y1) and the bool window inside it."""
        x0, y0, x1, y1 = box
        sel = np.flatnonzero((self.col >= x0) & (self.col <= x1) & (self.row >= y0) & (self.row <= y1))
        sel = sel[window[self.row[sel] - y0, self.col[sel] - x0]]
        return self.index[sel], self.score[sel]

    def points_in_box(self, box: tuple[int, int, int, int], margin: int = 0) -> np.ndarray:
        """Indices of the seen points whose pixel lies in the inclusive box (x0, y0, x1, y1), grown by `margin`."""
        x0, y0, x1, y1 = box
        sel = (self.col >= x0 - margin) & (self.col <= x1 + margin) & (self.row >= y0 - margin)
        sel &= self.row <= y1 + margin
        return self.index[sel]


__all__ = ["FrameView", "LiftParams", "erode"]
