"""Small file-format helpers shared by the readers: COLMAP text models, quaternions, resizing a frame's maps."""

from __future__ import annotations

import pathlib

import cv2
import numpy as np


def quat_to_rotation(qw: float, qx: float, qy: float, qz: float) -> np.ndarray:
    q = np.array([qw, qx, qy, qz], dtype=np.float64)
    q = q / np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def read_colmap_cameras(path) -> dict[int, tuple[str, int, int, np.ndarray]]:
    """cameras.txt -> {camera_id: (model, width, height, K)}; distortion parameters are dropped.

    COLMAP puts pixel (0, 0)'s centre at (0.5, 0.5); the returned K uses this package's convention (pixel centres
    at integer coordinates), so its principal point is COLMAP's minus 0.5.
    """
    cameras = {}
    for line in pathlib.Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        cam_id, model, width, height = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
        p = [float(x) for x in parts[4:]]
        if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"):
            fx = fy = p[0]
            cx, cy = p[1], p[2]
        elif model in ("PINHOLE", "OPENCV", "OPENCV_FISHEYE", "FULL_OPENCV", "THIN_PRISM_FISHEYE"):
            fx, fy, cx, cy = p[:4]
        else:
            raise ValueError(f"{path}: unsupported COLMAP camera model {model!r}")
        K = np.array([[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1.0]])
        cameras[cam_id] = (model, width, height, K)
    return cameras


def read_colmap_images(path) -> dict[str, tuple[int, np.ndarray]]:
    """images.txt -> {image file name: (camera_id, 4x4 camera-to-world)} (COLMAP stores world-to-camera)."""
    images = {}
    lines = [ln for ln in pathlib.Path(path).read_text().splitlines() if not ln.startswith("#")]
    # each image takes two lines: the pose line and the 2D points line (possibly empty)
    for pose_line in lines[0::2]:
        parts = pose_line.split()
        if len(parts) < 10:
            continue
        qw, qx, qy, qz, tx, ty, tz = (float(x) for x in parts[1:8])
        w2c = np.eye(4)
        w2c[:3, :3] = quat_to_rotation(qw, qx, qy, qz)
        w2c[:3, 3] = [tx, ty, tz]
        images[pathlib.Path(parts[9]).name] = (int(parts[8]), np.linalg.inv(w2c))
    return images


def resize_nearest(array: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if array.shape[:2] == tuple(size_hw):
        return array
    return cv2.resize(array, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)


def scale_intrinsics(K: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics for the same camera at another resolution (pixel-centre convention of the synthetic data)."""
    sx, sy = to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]
    K = K.astype(np.float64).copy()
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K
