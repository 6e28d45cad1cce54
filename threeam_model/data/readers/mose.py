"""Reader for MOSE (and DAVIS-2017 / YouTube-VOS style) videos: JPEG frames + palette PNG annotations.

Expected layout (MOSE train as downloaded and unpacked, https://henghuiding.github.io/MOSE/)::

    <root>/
      JPEGImages/<video>/00000.jpg ...     RGB frames
      Annotations/<video>/00000.png ...    8-bit palette PNGs, pixel value = object id (0 = background)

DAVIS-2017 uses the same layout one level deeper (``JPEGImages/480p/<video>``): pass ``resolution="480p"``.
Frames without an annotation file count as unannotated (all background is *not* assumed: `frame` raises).
MOSE has no camera geometry, so only continuous sampling applies (FoV probability 0.0, paper Table 1).
Prep: none beyond unpacking; optionally list the videos to use with `MoseVideo.list_videos(root)`.
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from threeam_model.data.frames import Frame, VideoSource
from threeam_model.data.labels_io import read_annotation


class MoseVideo(VideoSource):
    dataset = "mose"

    def __init__(self, root, video: str, resolution: str | None = None):
        root = pathlib.Path(root)
        sub = pathlib.Path(resolution) if resolution else pathlib.Path()
        self.image_dir = root / "JPEGImages" / sub / video
        self.ann_dir = root / "Annotations" / sub / video
        self.video = video
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"MOSE video {video!r}: {self.image_dir} is missing (expected JPEGImages/<video>/)")
        self.frames = sorted(p.stem for p in self.image_dir.glob("*.jpg"))
        if not self.frames:
            raise FileNotFoundError(f"{self.image_dir} holds no .jpg frames")

    @staticmethod
    def list_videos(root, resolution: str | None = None) -> list[str]:
        base = pathlib.Path(root) / "JPEGImages" / (resolution or "")
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    @property
    def name(self) -> str:
        return self.video

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def has_geometry(self) -> bool:
        return False

    def frame(self, index: int, with_rgb: bool = True) -> Frame:
        i = self.check_index(index)
        stem = self.frames[i]
        ann_path = self.ann_dir / f"{stem}.png"
        if not ann_path.is_file():
            raise FileNotFoundError(f"MOSE video {self.video!r}: no annotation {ann_path} for frame {stem}")
        instance = read_annotation(ann_path)
        if with_rgb:
            rgb = np.asarray(Image.open(self.image_dir / f"{stem}.jpg").convert("RGB"))
            if rgb.shape[:2] != instance.shape:
                raise ValueError(f"{self.video}/{stem}: image {rgb.shape[:2]} and annotation {instance.shape} differ")
        else:
            rgb = np.zeros((0, 0, 3), np.uint8)
        return Frame(i, rgb, instance)
