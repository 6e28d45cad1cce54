"""Reader for scenes written by `threeam_model.data.synthetic.generate_scene` (layout in that module's docstring)."""

from __future__ import annotations

import json
import pathlib

import cv2
import numpy as np

from threeam_model.data.frames import Frame, VideoSource, read_image

FORMAT = "threeam-synthetic-v1"  # scene.json's "format", written by data.synthetic.render_scene


class SyntheticScene(VideoSource):
    dataset = "synthetic"

    def __init__(self, path):
        self.root = pathlib.Path(path)
        meta_path = self.root / "scene.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.root} is not a synthetic scene: {meta_path} is missing")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        self.K = np.loadtxt(self.root / "intrinsics.txt").reshape(3, 3)
        self.poses = np.loadtxt(self.root / "poses.txt", ndmin=2).reshape(-1, 4, 4)
        if len(self.poses) != self.meta["num_frames"]:
            raise ValueError(f"{self.root}: poses.txt has {len(self.poses)} rows, scene.json says {len(self)} frames")
        self.depth_scale = float(self.meta["depth_scale"])

    @property
    def name(self) -> str:
        return self.root.name

    def __len__(self) -> int:
        return int(self.meta["num_frames"])

    @property
    def has_geometry(self) -> bool:
        return True

    @property
    def object_ids(self) -> list[int]:
        return [int(o["id"]) for o in self.meta["objects"]]

    @property
    def objects(self) -> list[dict]:
        return self.meta["objects"]

    def _read(self, sub: str, index: int, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
        return read_image(self.root / sub / f"{index:05d}.png", flags)

    def frame(self, index: int, with_rgb: bool = True) -> Frame:
        i = self.check_index(index)
        rgb = self._read("rgb", i, cv2.IMREAD_COLOR)[:, :, ::-1].copy() if with_rgb else np.zeros((0, 0, 3), np.uint8)
        depth = self._read("depth", i).astype(np.float32) / self.depth_scale
        instance = self._read("instance", i).astype(np.int64)
        return Frame(i, rgb, instance, depth, self.K.copy(), self.poses[i].copy())


class RenderedScene(VideoSource):
    """The same scene held in memory: wraps the dict returned by `render_scene` (tests, demos, tiny training)."""

    dataset = "synthetic"

    def __init__(self, scene: dict, name: str | None = None):
        self.scene = scene
        self._name = name or f"synthetic-{scene['meta']['seed']}"

    @property
    def name(self) -> str:
        return self._name

    def __len__(self) -> int:
        return len(self.scene["poses"])

    @property
    def has_geometry(self) -> bool:
        return True

    @property
    def object_ids(self) -> list[int]:
        return [int(o["id"]) for o in self.scene["objects"]]

    def frame(self, index: int, with_rgb: bool = True) -> Frame:
        i = self.check_index(index)
        s = self.scene
        rgb = s["rgb"][i] if with_rgb else np.zeros((0, 0, 3), np.uint8)
        return Frame(i, rgb, s["instance"][i].astype(np.int64), s["depth"][i], s["K"].copy(), s["poses"][i].copy())
