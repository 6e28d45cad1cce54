"""What the benchmark reads: `VideoSource`s (threeam_model.data) found under a path, optionally thinned and downscaled.

Layouts (`open_sequences(path, layout)`):

- ``davis``: a DAVIS / MOSE style folder. Either one sequence (``<seq>/JPEGImages/*.jpg`` + ``<seq>/Annotations/
  *.png``, like ../shared/data/davis/blackswan) or many (``<root>/JPEGImages/<seq>/`` + ``<root>/Annotations/<seq>/``;
  DAVIS-2017's extra ``480p/`` level is found automatically). Palette PNG values are object ids; 0/255 grayscale
  masks (DAVIS-2016) are object 1.
- ``synthetic``: scenes written by `threeam_model.data.synthetic.generate_scene` (a ``scene.json`` per scene), one
  scene or a folder of scenes.
- ``scannetpp``: ScanNet++ iPhone scenes read by `threeam_model.data.readers.ScanNetPPScene`: `path` is the
  release's ``data/`` folder and ``obj_id_root`` the folder of per-frame object-id maps that the ScanNet++ toolkit
  writes (prep steps in that reader's docstring: ``iphone.prepare_iphone_data``, then ``semantic.prep.rasterize``
  and ``semantic.prep.semantics_2d`` with ``save_objid_gt_2d``). This is the paper's "project the 3D instance
  masks with the GT poses". Scenes: the names given, else every folder under ``obj_id_root``. Subsample long
  scenes with ``stride``.
- ``replica`` (or any pre-rendered scene): one folder per scene, frames and 16-bit instance-id PNGs with the same
  stem or the same frame number (natural sort order, so ``rgb_10`` follows ``rgb_9``)::

      <scene>/rgb/<stem>.(jpg|png)            RGB frames                       (image_dir, default "rgb")
      <scene>/instance/<stem>.png             uint16 object id per pixel, 0 = background   (label_dir)

  Prep: render RGB and per-pixel instance ids of the Replica meshes along a camera trajectory (e.g. habitat-sim's
  RGB and semantic sensors), or take the Semantic-NeRF Replica renders, whose ``rgb/rgb_<i>.png`` and
  ``semantic_instance/semantic_instance_<i>.png`` are such pairs (``label_dir="semantic_instance"``).

Thinning (`Thinned`): every `stride`-th frame, at most `max_frames` frames, and frames whose longer side exceeds
`max_side` downscaled (RGB with area averaging, instance ids with nearest neighbour). Scores are then computed at
the reduced size; the results record it.
"""

from __future__ import annotations

import pathlib
import re

import cv2
import numpy as np
from PIL import Image

from threeam_model.data.frames import Frame, VideoSource
from threeam_model.data.readers import MoseVideo, ScanNetPPScene, SyntheticScene

LAYOUTS = ("davis", "synthetic", "replica", "scannetpp")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def natural_key(name: str):
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


class DavisSequence(MoseVideo):
    """One DAVIS-layout sequence folder: ``<folder>/JPEGImages/*.jpg`` and ``<folder>/Annotations/*.png``."""

    dataset = "davis"

    def __init__(self, folder):
        folder = pathlib.Path(folder)
        super().__init__(folder, "")  # JPEGImages/"" is JPEGImages itself
        self.video = folder.name


class InstanceFolderScene(VideoSource):
    """RGB frames + uint16 instance-id PNGs with matching stems (the replica / scannetpp layouts above)."""

    def __init__(self, folder, image_dir: str = "rgb", label_dir: str = "instance", dataset: str = "replica"):
        self.root = pathlib.Path(folder)
        self.dataset = dataset
        self.image_dir = self.root / image_dir
        self.label_dir = self.root / label_dir
        for d in (self.image_dir, self.label_dir):
            if not d.is_dir():
                raise FileNotFoundError(
                    f"{dataset} scene {self.root}: {d} is missing (see threeam_model.eval.sequences)"
                )
        images = {p.stem: p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        labels = {p.stem: p for p in self.label_dir.glob("*.png")}
        # Replica renders name the two files differently (rgb_0 / semantic_instance_0): match on the frame number.
        if not set(images) & set(labels):
            images = {_number(s): p for s, p in images.items()}
            labels = {_number(s): p for s, p in labels.items()}
        stems = sorted(set(images) & set(labels), key=lambda s: natural_key(str(s)))
        if not stems:
            raise FileNotFoundError(f"{self.root}: no frame in {image_dir}/ has a label PNG in {label_dir}/")
        self.images = [images[s] for s in stems]
        self.labels = [labels[s] for s in stems]

    @property
    def name(self) -> str:
        return self.root.name

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_geometry(self) -> bool:
        return False

    def frame(self, index: int, with_rgb: bool = True) -> Frame:
        i = self.check_index(index)
        instance = np.asarray(Image.open(self.labels[i])).astype(np.int64)
        if instance.ndim != 2:
            raise ValueError(f"{self.labels[i]}: instance PNG must be single-channel ids, got shape {instance.shape}")
        rgb = np.asarray(Image.open(self.images[i]).convert("RGB")) if with_rgb else np.zeros((0, 0, 3), np.uint8)
        if with_rgb and rgb.shape[:2] != instance.shape:
            raise ValueError(f"{self.images[i].name}: image {rgb.shape[:2]} and labels {instance.shape} differ in size")
        return Frame(i, rgb, instance)


def _number(stem: str) -> str:
    digits = re.findall(r"\d+", stem)
    return str(int(digits[-1])) if digits else stem


class Thinned(VideoSource):
    """A view of a source: every `stride`-th frame, at most `max_frames`, longer side at most `max_side` pixels."""

    def __init__(
        self, source: VideoSource, stride: int = 1, max_frames: int | None = None, max_side: int | None = None
    ):
        if stride < 1 or (max_frames is not None and max_frames < 1) or (max_side is not None and max_side < 16):
            raise ValueError(f"bad thinning: stride={stride} max_frames={max_frames} max_side={max_side}")
        self.source = source
        self.dataset = source.dataset
        self.positions = list(range(0, len(source), stride))[:max_frames]
        self.stride, self.max_side = stride, max_side

    @property
    def name(self) -> str:
        return self.source.name

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def has_geometry(self) -> bool:
        return False  # resizing would need the intrinsics rescaled; the benchmark does not use geometry

    def frame_name(self, index: int) -> str:
        return f"{self.positions[self.check_index(index)]:05d}"

    def frame(self, index: int, with_rgb: bool = True) -> Frame:
        i = self.check_index(index)
        f = self.source.frame(self.positions[i], with_rgb=with_rgb)
        instance, rgb = f.instance, f.rgb
        h, w = instance.shape
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            instance = cv2.resize(instance.astype(np.int32), size, interpolation=cv2.INTER_NEAREST).astype(np.int64)
            if with_rgb:
                rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        return Frame(i, np.ascontiguousarray(rgb), instance)


def _davis_sequences(path: pathlib.Path) -> list[VideoSource]:
    jpeg = path / "JPEGImages"
    if not jpeg.is_dir():
        raise FileNotFoundError(f"{path} is not a DAVIS-layout folder: {jpeg} is missing")
    if any(jpeg.glob("*.jpg")):
        return [DavisSequence(path)]
    subdirs = sorted(p for p in jpeg.iterdir() if p.is_dir())
    if len(subdirs) == 1 and not any(subdirs[0].glob("*.jpg")):  # DAVIS-2017: JPEGImages/480p/<seq>
        res = subdirs[0].name
        return [MoseVideo(path, v, resolution=res) for v in MoseVideo.list_videos(path, res)]
    return [MoseVideo(path, p.name) for p in subdirs]


def open_sequences(
    path,
    layout: str,
    image_dir: str | None = None,
    label_dir: str | None = None,
    names: list[str] | None = None,
    obj_id_root=None,
) -> list[VideoSource]:
    """All sequences of `layout` under `path` (a sequence folder itself, or a folder of them), sorted by name."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if layout == "davis":
        seqs = _davis_sequences(path)
    elif layout == "synthetic":
        dirs = [path] if (path / "scene.json").is_file() else sorted(p.parent for p in path.glob("*/scene.json"))
        if not dirs:
            raise FileNotFoundError(f"{path} holds no synthetic scene (no scene.json)")
        seqs = [SyntheticScene(d) for d in dirs]
    elif layout == "scannetpp":
        if obj_id_root is None:
            raise ValueError("the scannetpp layout needs obj_id_root: the toolkit's per-frame object-id folder")
        obj_id_root = pathlib.Path(obj_id_root)
        scene_ids = names or sorted(p.name for p in obj_id_root.iterdir() if p.is_dir())
        seqs = [ScanNetPPScene(path, scene, obj_id_root) for scene in scene_ids]
    elif layout == "replica":
        img, lab = image_dir or "rgb", label_dir or "instance"
        dirs = [path] if (path / img).is_dir() else sorted(p for p in path.iterdir() if (p / img).is_dir())
        if not dirs:
            raise FileNotFoundError(f"{path} holds no {layout} scene (no {img}/ folder)")
        seqs = [InstanceFolderScene(d, img, lab, dataset=layout) for d in dirs]
    else:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if names:
        missing = sorted(set(names) - {s.name for s in seqs})
        if missing:
            raise FileNotFoundError(f"sequence(s) {missing} not found under {path}")
        seqs = [s for s in seqs if s.name in names]
    return sorted(seqs, key=lambda s: s.name)


__all__ = ["LAYOUTS", "DavisSequence", "InstanceFolderScene", "Thinned", "natural_key", "open_sequences"]
