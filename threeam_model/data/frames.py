"""What every dataset reader hands out: one `Frame` at a time from a `VideoSource`.

A reader is a thin, lazy view over one scene / video on disk: `len(source)` frames, `source.frame(i)` loads
frame i (nothing is cached, so memory stays bounded whatever the scene length). Geometry (depth, K, pose) is
present only where the dataset has it; the sampler uses it for field-of-view aware sampling.
"""

from __future__ import annotations

import abc
import dataclasses
import pathlib

import cv2
import numpy as np


def read_image(path: pathlib.Path | str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """cv2.imread that raises FileNotFoundError instead of returning None (16-bit depth/ids stay 16-bit)."""
    img = cv2.imread(str(path), flags)
    if img is None:
        raise FileNotFoundError(f"cannot read {path}")
    return img


@dataclasses.dataclass
class Frame:
    index: int
    rgb: np.ndarray  # (H, W, 3) uint8
    instance: np.ndarray  # (H, W) integer object id per pixel, 0 = background / unlabelled
    depth: np.ndarray | None = None  # (H, W) float32 metres along the camera z axis, 0 = unknown
    K: np.ndarray | None = None  # (3, 3) pinhole intrinsics at this frame's resolution
    pose: np.ndarray | None = None  # (4, 4) camera-to-world, OpenCV camera axes (x right, y down, z forward)

    @property
    def has_geometry(self) -> bool:
        return self.depth is not None and self.K is not None and self.pose is not None


class VideoSource(abc.ABC):
    """One scene or video of a dataset, read lazily frame by frame."""

    dataset: str = "unknown"  # the key used for per-dataset settings (e.g. FoV sampling probability)

    @property
    @abc.abstractmethod
    def name(self) -> str: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def frame(self, index: int, with_rgb: bool = True) -> Frame:
        """Load frame `index`; with_rgb=False may skip decoding the image (rgb is then an empty array)."""

    @property
    @abc.abstractmethod
    def has_geometry(self) -> bool:
        """True when every frame has depth, intrinsics and a pose."""

    @property
    def object_ids(self) -> list[int]:
        """Ids of annotated objects (default: scan every frame's instance map once)."""
        if not hasattr(self, "_object_ids"):
            ids: set[int] = set()
            for i in range(len(self)):
                ids.update(int(x) for x in np.unique(self.frame(i, with_rgb=False).instance))
            ids.discard(0)
            self._object_ids = sorted(ids)
        return self._object_ids

    def check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: frame {index} out of range (it has {len(self)} frames)")
        return index % len(self)
