"""Reader for Aria Synthetic Environments (ASE) scenes, rectified on the fly to a pinhole camera.

Expected layout (one unpacked scene of the ASE download, https://www.projectaria.com/datasets/ase/)::

    <root>/<scene_id>/
      rgb/vignette0000000.jpg ...       RGB frames (Aria RGB camera, fisheye lens)
      depth/depth0000000.png ...        16-bit PNG, millimetres, *distance along the ray* (not z-depth), 0 = none
      instances/instance0000000.png ... 16-bit PNG, instance id per pixel, 0 = none
      trajectory.csv                    one row per frame, in frame order: tx_world_device, ty_world_device,
                                        tz_world_device, qx_world_device, qy_world_device, qz_world_device,
                                        qw_world_device (other columns are ignored)
      camera.json                       written by you once (prep step below)

Prep step: ASE ships the RGB calibration in projectaria_tools (``projectaria_tools.projects.ase.
get_ase_rgb_calibration()``), not in the scene folder. Write it once per scene (it is the same for all scenes)::

    {"model": "fisheye624", "params": [f, cx, cy, k0, k1, k2, k3, k4, k5, p0, p1, s0, s1, s2, s3],
     "width": W, "height": H, "T_device_camera": 4x4 row-major nested list,
     "pinhole": {"width": 512, "height": 512, "focal": 280.0}}

``model`` may also be "pinhole" with ``params: [fx, fy, cx, cy]`` (then no rectification). Each frame is
resampled to the ``pinhole`` target camera (image bilinear, depth and ids nearest), the ray distances are turned
into z-depth, and pose = T_world_device @ T_device_camera (OpenCV camera axes). Fisheye624 projection as
documented for Project Aria: theta = atan(r), theta_d = theta (1 + k0 theta^2 + ... + k5 theta^12), radial point
scaled by theta_d / r, then tangential (p0, p1) and thin-prism (s0..s3) terms, then u = f x + cx.
FoV sampling probability: 0.8 (paper Table 1).
"""

from __future__ import annotations

import csv
import json
import pathlib

import cv2
import numpy as np

from threeam_model.data.frames import Frame, VideoSource, read_image
from threeam_model.data.readers.geometry_io import quat_to_rotation


def fisheye624_project(points: np.ndarray, params) -> np.ndarray:
    """(N, 3) camera-frame points (z > 0) -> (N, 2) pixel coordinates under the Fisheye624 model."""
    f, cx, cy = params[0], params[1], params[2]
    k = params[3:9]
    p0, p1 = params[9], params[10]
    s = params[11:15]
    a, b = points[:, 0] / points[:, 2], points[:, 1] / points[:, 2]
    r = np.hypot(a, b)
    theta = np.arctan(r)
    t2 = theta * theta
    poly = 1.0 + sum(k[i] * t2 ** (i + 1) for i in range(6))
    scale = np.where(r > 1e-12, theta * poly / np.maximum(r, 1e-12), 1.0)
    xr, yr = a * scale, b * scale
    r2 = xr * xr + yr * yr
    dot = 2 * (xr * p0 + yr * p1)
    xd = xr + dot * xr + r2 * p0 + s[0] * r2 + s[1] * r2 * r2
    yd = yr + dot * yr + r2 * p1 + s[2] * r2 + s[3] * r2 * r2
    return np.stack([f * xd + cx, f * yd + cy], axis=1)


class ASEScene(VideoSource):
    dataset = "ase"

    def __init__(self, root, scene_id: str):
        self.scene_id = str(scene_id)
        self.dir = pathlib.Path(root) / self.scene_id
        camera_path = self.dir / "camera.json"
        for needed in (self.dir / "rgb", self.dir / "depth", self.dir / "instances", self.dir / "trajectory.csv"):
            if not needed.exists():
                raise FileNotFoundError(f"ASE scene {scene_id}: {needed} is missing (see the module docstring)")
        if not camera_path.is_file():
            raise FileNotFoundError(f"ASE scene {scene_id}: {camera_path} is missing; write it once (prep step)")
        self.camera = json.loads(camera_path.read_text())
        self.frames = sorted(p.stem.removeprefix("vignette") for p in (self.dir / "rgb").glob("vignette*.jpg"))
        self.poses = self._read_trajectory(self.dir / "trajectory.csv")
        if len(self.poses) != len(self.frames):
            raise ValueError(f"ASE scene {scene_id}: {len(self.frames)} images but {len(self.poses)} trajectory rows")
        self._setup_rectification()

    def _read_trajectory(self, path: pathlib.Path) -> np.ndarray:
        T_device_camera = np.asarray(self.camera.get("T_device_camera", np.eye(4)), dtype=np.float64)
        poses = []
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                T = np.eye(4)
                T[:3, :3] = quat_to_rotation(*(float(row[f"q{c}_world_device"]) for c in ("w", "x", "y", "z")))
                T[:3, 3] = [float(row[f"t{c}_world_device"]) for c in "xyz"]
                poses.append(T @ T_device_camera)
        return np.array(poses).reshape(-1, 4, 4)

    def _setup_rectification(self) -> None:
        cam = self.camera
        if cam["model"] == "pinhole":
            fx, fy, cx, cy = cam["params"]
            self.K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
            self.maps = None
            self.out_hw = (int(cam["height"]), int(cam["width"]))
            us, vs = np.meshgrid(np.arange(self.out_hw[1]), np.arange(self.out_hw[0]))
        elif cam["model"] == "fisheye624":
            target = cam["pinhole"]
            w, h, f = int(target["width"]), int(target["height"]), float(target["focal"])
            self.out_hw = (h, w)
            self.K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
            us, vs = np.meshgrid(np.arange(w), np.arange(h))
            rays = np.stack([(us - self.K[0, 2]) / f, (vs - self.K[1, 2]) / f, np.ones_like(us, dtype=float)], -1)
            src = fisheye624_project(rays.reshape(-1, 3), cam["params"]).reshape(h, w, 2).astype(np.float32)
            self.maps = (src[..., 0], src[..., 1])
        else:
            raise ValueError(f"ASE camera.json: unknown model {cam['model']!r} (use 'fisheye624' or 'pinhole')")
        # ray distance -> z-depth factor for each output pixel: z / |ray| with ray = K^-1 [u, v, 1]
        x = (us - self.K[0, 2]) / self.K[0, 0]
        y = (vs - self.K[1, 2]) / self.K[1, 1]
        self.range_to_z = (1.0 / np.sqrt(x * x + y * y + 1.0)).astype(np.float32)

    def _remap(self, img: np.ndarray, interpolation: int) -> np.ndarray:
        if self.maps is None:
            return img
        return cv2.remap(img, self.maps[0], self.maps[1], interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    @property
    def name(self) -> str:
        return self.scene_id

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def has_geometry(self) -> bool:
        return True

    def frame(self, index: int, with_rgb: bool = True) -> Frame:
        i = self.check_index(index)
        stem = self.frames[i]
        ray_mm = self._remap(read_image(self.dir / "depth" / f"depth{stem}.png"), cv2.INTER_NEAREST)
        depth = ray_mm.astype(np.float32) / 1000.0 * self.range_to_z
        instance = self._remap(read_image(self.dir / "instances" / f"instance{stem}.png"), cv2.INTER_NEAREST)
        if with_rgb:
            bgr = self._remap(read_image(self.dir / "rgb" / f"vignette{stem}.jpg", cv2.IMREAD_COLOR), cv2.INTER_LINEAR)
            rgb = bgr[:, :, ::-1].copy()
        else:
            rgb = np.zeros((0, 0, 3), np.uint8)
        return Frame(i, rgb, instance.astype(np.int64), depth, self.K.copy(), self.poses[i].copy())
