"""3D scenes to segment: RGB-D frames with poses, the scene's points (mesh vertices or a point cloud), and where
the dataset has them its superpoints and ground-truth instances.

Layouts (`open_scene(path, layout)`):

``synthetic`` - a folder written by ``threeam_model.data.synthetic.generate_scene(..., with_points=True)``::

    <scene>/rgb/ depth/ instance/ intrinsics.txt poses.txt scene.json   frames (see that module)
    <scene>/points.ply    the scene points with normals, colours and instance ids (0 = room: void)

``scannet`` - one ScanNet scan, its frames exported with ScanNet's SensReader (``reader.py --export_color_images
--export_depth_images --export_poses --export_intrinsics --output_path <scene>``)::

    <scene>/<scene>_vh_clean_2.ply                   the mesh; its vertices are the scene points
    <scene>/<scene>_vh_clean_2.0.010000.segs.json    ScanNet's superpoints: {"segIndices": [one per vertex]}
    <scene>/<scene>.aggregation.json                 instances (optional): {"segGroups": [{"objectId", "label",
                                                     "segments": [superpoint ids]}]}
    <scene>/color/<i>.jpg  depth/<i>.png             frame i: colour (resized to the depth size), 16-bit depth in mm
    <scene>/pose/<i>.txt                             4x4 camera-to-world (frames with a non-finite pose are skipped)
    <scene>/intrinsic/intrinsic_depth.txt            4x4, the depth camera's intrinsics

  Ground truth: a segGroup's label is mapped to its ScanNet200 id with ``scannetv2-labels.combined.tsv``
  (``label_map``: its ``raw_category`` and ``id`` columns); vertex id = label id * 1000 + objectId + 1; then the
  class-agnostic rule (ScanNet200 classes but wall and floor; evaluator.scannet200_agnostic_gt). A benchmark GT
  file (``gt_file``: one ``label*1000+instance`` per vertex per line, as the ScanNet200 preprocessing writes) is
  used instead when given.

``scannetpp`` - one ScanNet++ scene (``path`` = the release's ``data/<scene_id>``), iPhone frames prepared with
the toolkit's ``iphone.prepare_iphone_data`` (extract_rgb, extract_depth)::

    <scene_id>/scans/mesh_aligned_0.05.ply    the mesh; its vertices are the scene points
    <scene_id>/scans/segments.json            superpoints: {"segIndices": [...]}
    <scene_id>/scans/segments_anno.json       instances (optional): {"segGroups": [{"objectId", "label",
                                              "segments"}]}
    <scene_id>/iphone/rgb/frame_*.jpg, iphone/depth/frame_*.png (16-bit mm), iphone/colmap/cameras.txt, images.txt

  Frames are used at the depth maps' resolution (colour area-averaged to it). Ground truth: every annotated
  object whose label is not one of ``SCANNETPP_VOID_LABELS`` (wall, floor, ceiling and the annotators' "remove" /
  "split" marks) is an instance (id = objectId + 1); the rest is void.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib

import cv2
import numpy as np

from threeam_model.data.frames import Frame, VideoSource, read_image
from threeam_model.data.ply import read_ply
from threeam_model.instances.evaluator import scannet200_agnostic_gt

LAYOUTS = ("synthetic", "scannet", "scannetpp")
SCANNETPP_VOID_LABELS = ("wall", "floor", "ceiling", "remove", "split")


@dataclasses.dataclass
class Scene3D:
    name: str
    frames: VideoSource  # RGB-D frames with K and camera-to-world poses
    points: np.ndarray  # (N, 3) float64 world coordinates
    colors: np.ndarray | None = None  # (N, 3) uint8
    normals: np.ndarray | None = None  # (N, 3), oriented where known
    faces: np.ndarray | None = None  # (M, 3) triangle vertex indices of a mesh
    superpoints: np.ndarray | None = None  # (N,) the dataset's own superpoint ids
    gt: np.ndarray | None = None  # (N,) class-agnostic ground-truth instance id, 0 = void


def open_scene(path, layout: str = "synthetic", label_map=None, gt_file=None) -> Scene3D:
    """Read one scene in one of LAYOUTS (module docstring)."""
    path = pathlib.Path(path)
    if layout == "synthetic":
        return _synthetic(path)
    if layout == "scannet":
        return _scannet(path, label_map, gt_file)
    if layout == "scannetpp":
        return _scannetpp(path)
    raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")


def _xyz(vertex: dict) -> np.ndarray:
    return np.stack([vertex["x"], vertex["y"], vertex["z"]], 1).astype(np.float64)


def _rgb(vertex: dict) -> np.ndarray | None:
    if "red" not in vertex:
        return None
    return np.stack([vertex["red"], vertex["green"], vertex["blue"]], 1).astype(np.uint8)


def _synthetic(path: pathlib.Path) -> Scene3D:
    from threeam_model.data.readers import SyntheticScene
    from threeam_model.data.synthetic import POINTS_FILE

    frames = SyntheticScene(path)
    ply = path / POINTS_FILE
    if not ply.is_file():
        raise FileNotFoundError(f"{ply} is missing: generate the scene with generate_scene(..., with_points=True)")
    vertex, _ = read_ply(ply)
    normals = np.stack([vertex["nx"], vertex["ny"], vertex["nz"]], 1).astype(np.float64)
    gt = vertex["instance"].astype(np.int64)
    return Scene3D(frames.name, frames, _xyz(vertex), _rgb(vertex), normals, gt=gt)


def _seg_indices(path: pathlib.Path, num_points: int) -> np.ndarray:
    seg = np.asarray(json.loads(path.read_text())["segIndices"], dtype=np.int64)
    if len(seg) != num_points:
        raise ValueError(f"{path}: {len(seg)} superpoint ids for a mesh of {num_points} vertices")
    return seg


def _instances_from_groups(groups: list[dict], seg: np.ndarray, label_id) -> np.ndarray:
    """Per-vertex ids from annotation groups; label_id(label) -> the id's class part (0 = void), or None to use
    objectId + 1 alone."""
    gt = np.zeros(len(seg), np.int64)
    for g in groups:
        cls = label_id(g["label"])
        if cls == 0:
            continue
        inst = int(g["objectId"]) + 1
        gt[np.isin(seg, g["segments"])] = inst if cls is None else cls * 1000 + inst
    return gt


# -------------------------------------------------------------------------------------------------- ScanNet


class ScanNetFrames(VideoSource):
    """A SensReader export: color/, depth/, pose/, intrinsic/ (module docstring), at the depth resolution."""

    dataset = "scannet"

    def __init__(self, root: pathlib.Path, name: str):
        self.root, self._name = root, name
        for sub in ("color", "depth", "pose", "intrinsic/intrinsic_depth.txt"):
            if not (root / sub).exists():
                raise FileNotFoundError(f"ScanNet scene {name}: {root / sub} is missing (see the module docstring)")
        self.K = np.loadtxt(root / "intrinsic" / "intrinsic_depth.txt")[:3, :3]
        ids = sorted(int(p.stem) for p in (root / "pose").glob("*.txt") if p.stem.isdigit())
        self.entries = []
        for i in ids:
            pose = np.loadtxt(root / "pose" / f"{i}.txt").reshape(4, 4)
            if np.isfinite(pose).all() and (root / "depth" / f"{i}.png").is_file():
                self.entries.append((i, pose))
        if not self.entries:
            raise FileNotFoundError(f"ScanNet scene {name}: no frame with a finite pose and a depth map")

    @property
    def name(self) -> str:
        return self._name

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def has_geometry(self) -> bool:
        return True

    def frame(self, index: int, with_rgb: bool = True) -> Frame:
        i = self.check_index(index)
        stem, pose = self.entries[i]
        depth = read_image(self.root / "depth" / f"{stem}.png").astype(np.float32) / 1000.0
        h, w = depth.shape
        rgb = np.zeros((0, 0, 3), np.uint8)
        if with_rgb:
            bgr = read_image(self.root / "color" / f"{stem}.jpg", cv2.IMREAD_COLOR)
            rgb = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)[:, :, ::-1].copy()
        return Frame(i, rgb, np.zeros((h, w), np.int64), depth, self.K.copy(), pose.copy())


def read_label_map(path) -> dict[str, int]:
    """scannetv2-labels.combined.tsv: raw_category -> ScanNet200 id (the `id` column)."""
    with open(path, newline="") as f:
        return {row["raw_category"]: int(row["id"]) for row in csv.DictReader(f, delimiter="\t")}


def _scannet(path: pathlib.Path, label_map, gt_file) -> Scene3D:
    name = path.name
    mesh = path / f"{name}_vh_clean_2.ply"
    if not mesh.is_file():
        raise FileNotFoundError(f"ScanNet scene {name}: {mesh} is missing (see the module docstring)")
    vertex, faces = read_ply(mesh)
    points = _xyz(vertex)
    seg = _seg_indices(path / f"{name}_vh_clean_2.0.010000.segs.json", len(points))
    gt = None
    if gt_file is not None:
        gt = scannet200_agnostic_gt(np.loadtxt(gt_file, dtype=np.int64).reshape(-1))
        if len(gt) != len(points):
            raise ValueError(f"{gt_file}: {len(gt)} ids for a mesh of {len(points)} vertices")
    elif (path / f"{name}.aggregation.json").is_file():
        if label_map is None:
            raise ValueError(f"ScanNet scene {name}: ground truth needs label_map (scannetv2-labels.combined.tsv)")
        labels = read_label_map(label_map)
        groups = json.loads((path / f"{name}.aggregation.json").read_text())["segGroups"]
        gt = scannet200_agnostic_gt(_instances_from_groups(groups, seg, lambda lab: labels.get(lab, 0)))
    frames = ScanNetFrames(path, name)
    return Scene3D(name, frames, points, _rgb(vertex), None, faces, seg, gt)


# ------------------------------------------------------------------------------------------------ ScanNet++


class ScanNetPPFrames(VideoSource):
    """iPhone frames of a ScanNet++ scene at the depth maps' resolution, COLMAP poses (module docstring)."""

    dataset = "scannetpp"

    def __init__(self, iphone: pathlib.Path, name: str):
        from threeam_model.data.readers.geometry_io import read_colmap_cameras, read_colmap_images

        self.iphone, self._name = iphone, name
        colmap = iphone / "colmap"
        for needed in (iphone / "rgb", iphone / "depth", colmap / "images.txt", colmap / "cameras.txt"):
            if not needed.exists():
                raise FileNotFoundError(f"ScanNet++ scene {name}: {needed} is missing (see the module docstring)")
        self.cameras = read_colmap_cameras(colmap / "cameras.txt")
        images = read_colmap_images(colmap / "images.txt")
        self.entries = [
            (n, *images[n])
            for n in sorted(images)
            if (iphone / "rgb" / n).is_file() and (iphone / "depth" / f"{pathlib.Path(n).stem}.png").is_file()
        ]
        if not self.entries:
            raise FileNotFoundError(f"ScanNet++ scene {name}: no frame has an image, a depth map and a pose")

    @property
    def name(self) -> str:
        return self._name

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def has_geometry(self) -> bool:
        return True

    def frame(self, index: int, with_rgb: bool = True) -> Frame:
        from threeam_model.data.readers.geometry_io import scale_intrinsics

        i = self.check_index(index)
        name, cam_id, pose = self.entries[i]
        depth = read_image(self.iphone / "depth" / f"{pathlib.Path(name).stem}.png").astype(np.float32) / 1000.0
        hw = depth.shape
        _, cam_w, cam_h, K = self.cameras[cam_id]
        rgb = np.zeros((0, 0, 3), np.uint8)
        if with_rgb:
            bgr = read_image(self.iphone / "rgb" / name, cv2.IMREAD_COLOR)
            rgb = cv2.resize(bgr, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)[:, :, ::-1].copy()
        K = scale_intrinsics(K, (cam_h, cam_w), hw)
        return Frame(i, rgb, np.zeros(hw, np.int64), depth, K, pose.copy())


def _scannetpp(path: pathlib.Path) -> Scene3D:
    name = path.name
    scans = path / "scans"
    mesh = scans / "mesh_aligned_0.05.ply"
    if not mesh.is_file():
        raise FileNotFoundError(f"ScanNet++ scene {name}: {mesh} is missing (see the module docstring)")
    vertex, faces = read_ply(mesh)
    points = _xyz(vertex)
    seg = _seg_indices(scans / "segments.json", len(points))
    gt = None
    if (scans / "segments_anno.json").is_file():
        groups = json.loads((scans / "segments_anno.json").read_text())["segGroups"]
        void = lambda label: str(label).strip().lower() in SCANNETPP_VOID_LABELS  # noqa: E731
        gt = _instances_from_groups(groups, seg, lambda label: 0 if void(label) else None)
    return Scene3D(name, ScanNetPPFrames(path / "iphone", name), points, _rgb(vertex), None, faces, seg, gt)


__all__ = [
    "LAYOUTS",
    "SCANNETPP_VOID_LABELS",
    "ScanNetFrames",
    "ScanNetPPFrames",
    "Scene3D",
    "open_scene",
    "read_label_map",
]
