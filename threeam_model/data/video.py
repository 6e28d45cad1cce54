"""MP4 output (OpenCV, mp4v): the overlay videos of threeam-track and threeam-bench."""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

import cv2
import numpy as np


def write_mp4(path: pathlib.Path | str, frames_rgb: Iterable[np.ndarray], fps: float) -> int:
    """Write (H, W, 3) uint8 RGB frames to an mp4v video; returns the number of frames written."""
    writer = None
    count = 0
    try:
        for rgb in frames_rgb:
            # MPEG-4 needs even sizes (the encoder would crop an odd row): pad a black row / column instead.
            bgr = np.pad(rgb[:, :, ::-1], ((0, rgb.shape[0] % 2), (0, rgb.shape[1] % 2), (0, 0)))
            if writer is None:
                h, w = bgr.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write an mp4v video to {path} (no mp4v encoder?)")
            writer.write(np.ascontiguousarray(bgr))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    return count
