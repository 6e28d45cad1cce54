"""Label images on disk: object-id maps as DAVIS palette PNGs (pixel value = object id, 0 = background).

The one format every front end reads and writes: dataset annotations (MOSE / DAVIS readers), `threeam-track`'s
masks, the benchmark's saved labels, the synthetic generator's DAVIS export. Kept apart from the readers so that
writers do not depend on a dataset reader.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def davis_palette() -> list[int]:
    """The standard DAVIS/PASCAL VOC colour palette (768 ints) used for annotation PNGs."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def read_annotation(path) -> np.ndarray:
    """Object-id map from an annotation PNG: palette index for mode P, and for mode L 255 -> 1 (DAVIS-2016 masks)."""
    img = Image.open(path)
    if img.mode == "P":
        return np.asarray(img, dtype=np.int64)
    arr = np.asarray(img.convert("L"), dtype=np.int64)
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 255}:
        return (arr == 255).astype(np.int64)
    return arr


def write_annotation(path, labels: np.ndarray) -> None:
    """Object-id map -> DAVIS palette PNG (mode P), the inverse of `read_annotation`; ids must lie in 0..255."""
    labels = np.asarray(labels)
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 255):
        raise ValueError(f"a palette annotation holds ids 0..255, got {int(labels.min())}..{int(labels.max())}")
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(davis_palette())
    img.save(path)


__all__ = ["davis_palette", "read_annotation", "write_annotation"]
