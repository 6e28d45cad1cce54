"""Reader for ScanNet++ iPhone sequences with the toolkit's 2D object-id maps.

Expected layout (``data_root`` = the release's ``data/`` folder, ``obj_id_root`` = the toolkit's output)::

    <data_root>/<scene_id>/iphone/
      rgb/frame_000000.jpg ...         from ``python -m iphone.prepare_iphone_data`` (extract_rgb)
      depth/frame_000000.png ...       same script (extract_depth): 16-bit PNG, millimetres, 0 = invalid
      colmap/cameras.txt, images.txt   shipped with the release: intrinsics and world-to-camera poses (OpenCV axes)
    <obj_id_root>/<scene_id>/frame_000000.jpg.pth ...
                                       ``python -m semantic.prep.semantics_2d`` with image_type=iphone,
                                       save_objid_gt_2d=true (after ``semantic.prep.rasterize`` for iphone):
                                       a pickled (H, W) integer array, -1 = no object, else the mesh
                                       annotation id (segments_anno.json segGroups id). ``.npy`` files with the
                                       same stem are read too.

Prep steps (ScanNet++ toolkit, https://github.com/scannetpp/scannetpp): download the iPhone data; run
``iphone.prepare_iphone_data`` (extract_rgb, extract_depth); ``semantic.prep.rasterize`` then
``semantic.prep.semantics_2d`` with ``image_type: iphone`` and ``save_objid_gt_2d: true``; point ``obj_id_root``
at the ``obj_ids`` folder it writes. Frames used = frames that have an image, a COLMAP pose and an object-id
map, in frame order. Everything is resampled to the object-id map's resolution (depth and ids nearest, image
area-averaged, K scaled). COLMAP's lens distortion is ignored (the iPhone's is small). Object ids become
``annotation id + 1`` so 0 stays background. FoV sampling probability: 0.8 (paper Table 1).
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np

from threeam_model.data.frames import Frame, VideoSource, read_image
from threeam_model.data.readers.geometry_io import (
    read_colmap_cameras,
    read_colmap_images,
    resize_nearest,
    scale_intrinsics,
)


def load_obj_ids(path: pathlib.Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    import torch

    # The toolkit writes torch.save(numpy array): a pickle, so this must not be an untrusted file.
    data = torch.load(path, map_location="cpu", weights_only=False)
    return data.numpy() if hasattr(data, "numpy") else np.asarray(data)


class ScanNetPPScene(VideoSource):
    dataset = "scannetpp"

    def __init__(self, data_root, scene_id: str, obj_id_root):
        self.scene_id = scene_id
        self.iphone = pathlib.Path(data_root) / scene_id / "iphone"
        self.obj_dir = pathlib.Path(obj_id_root) / scene_id
        colmap = self.iphone / "colmap"
        for needed in (self.iphone / "rgb", self.iphone / "depth", colmap / "images.txt", self.obj_dir):
            if not needed.exists():
                raise FileNotFoundError(f"ScanNet++ scene {scene_id}: {needed} is missing (see the module docstring)")
        self.cameras = read_colmap_cameras(colmap / "cameras.txt")
        images = read_colmap_images(colmap / "images.txt")
        self.entries = []  # (image name, camera id, pose, obj-id path)
        for name in sorted(images):
            obj_path = next(
                (
                    p
                    for p in (self.obj_dir / f"{name}.pth", self.obj_dir / f"{pathlib.Path(name).stem}.npy")
                    if p.is_file()
                ),
                None,
            )
            if obj_path is not None and (self.iphone / "rgb" / name).is_file():
                cam_id, pose = images[name]
                self.entries.append((name, cam_id, pose, obj_path))
        if not self.entries:
            raise FileNotFoundError(
                f"ScanNet++ scene {scene_id}: no frame has an image, a COLMAP pose and an obj-id map"
            )

    @property
    def name(self) -> str:
        return self.scene_id

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def has_geometry(self) -> bool:
        return True

    def frame(self, index: int, with_rgb: bool = True) -> Frame:
        i = self.check_index(index)
        name, cam_id, pose, obj_path = self.entries[i]
        ids = load_obj_ids(obj_path).astype(np.int64)
        instance = np.where(ids >= 0, ids + 1, 0)
        hw = instance.shape
        _, cam_w, cam_h, K = self.cameras[cam_id]
        depth_path = self.iphone / "depth" / (pathlib.Path(name).stem + ".png")
        depth_mm = read_image(depth_path)
        depth = resize_nearest(depth_mm, hw).astype(np.float32) / 1000.0
        if with_rgb:
            bgr = cv2.imread(str(self.iphone / "rgb" / name), cv2.IMREAD_COLOR)
            rgb = cv2.resize(bgr, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)[:, :, ::-1].copy()
        else:
            rgb = np.zeros((0, 0, 3), np.uint8)
        return Frame(i, rgb, instance, depth, scale_intrinsics(K, (cam_h, cam_w), hw), pose.copy())
