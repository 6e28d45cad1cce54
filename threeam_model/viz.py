"""The one overlay renderer: a frame with each tracked object's pixels tinted in its colour.

Used by the ROS node (`~/overlay`, with each object's id written near its centre, colours from `object_color`),
`threeam-track` (its overlay MP4: DAVIS palette colours, matching its mask PNGs, and each object's outline) and
`threeam-bench --video` (DAVIS colours, with the ground truth outlined in white by `draw_outlines`).
"""

from __future__ import annotations

import cv2
import numpy as np

from threeam_model.data.labels_io import davis_palette

DAVIS_COLORS = np.array(davis_palette(), np.uint8).reshape(256, 3)  # id -> RGB of the DAVIS annotation PNGs
WHITE = (255, 255, 255)


def object_color(obj_id: int) -> tuple[int, int, int]:
    """A stable, well-spread RGB colour per object id (golden-ratio hue steps)."""
    hue = int((obj_id * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 220, 255]]], dtype=np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def draw_overlay(
    rgb: np.ndarray,
    labels: np.ndarray,
    alpha: float = 0.5,
    *,
    colors: np.ndarray | None = None,
    captions: bool = True,
    outlines: bool = False,
) -> np.ndarray:
    """Input frame with each object's pixels tinted in its colour (background untouched).

    rgb: (H, W, 3) uint8; labels: (H, W) object ids (0 = background). alpha: the colour's weight in the tint.
    colors: an (N, 3) uint8 table id -> RGB (e.g. `DAVIS_COLORS`; ids must be < N), or None for `object_color`.
    captions: write each object's id near its mask's centre; outlines: draw each object's outline in its colour.
    """
    counts = np.bincount(labels.ravel())
    ids = [int(i) for i in np.flatnonzero(counts) if i != 0]
    out = rgb.copy()
    if not ids:
        return out
    lut = color_table(ids, len(counts), colors)
    blended = cv2.addWeighted(rgb, 1.0 - alpha, np.take(lut, labels, axis=0), alpha, 0.0)
    cv2.copyTo(blended, (labels > 0).view(np.uint8), out)
    if outlines:
        for obj_id in ids:
            draw_outlines(out, labels == obj_id, tuple(int(c) for c in lut[obj_id]))
    if captions:
        _caption_ids(out, labels, ids, len(counts), lut)
    return out


def color_table(ids, size: int, colors: np.ndarray | None = None) -> np.ndarray:
    """(size, 3) uint8 id -> RGB: each of `ids` in its colour (`colors[id]`, or `object_color`), the rest black."""
    lut = np.zeros((size, 3), np.uint8)
    for obj_id in ids:
        lut[obj_id] = object_color(int(obj_id)) if colors is None else colors[obj_id]
    return lut


def color_labels(labels: np.ndarray) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) rgb8: background black, each object in its overlay colour (mono16 looks black)."""
    ids = np.unique(labels)
    size = int(ids[-1]) + 1 if ids.size else 1
    return np.take(color_table(ids[ids > 0], size), labels, axis=0)


def draw_outlines(img: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """Draw the outer outline of `mask`'s regions on `img` (in place, 1 pixel wide); returns `img`."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(img, contours, -1, color, 1)
    return img


def _caption_ids(out: np.ndarray, labels: np.ndarray, ids: list[int], n_ids: int, lut: np.ndarray) -> None:
    # label positions: centroids on a coarse grid (exactness does not matter for a caption, speed does)
    h, w = labels.shape
    step = max(1, min(h, w) // 120)
    grid = labels[::step, ::step]
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    n = np.bincount(grid.ravel(), minlength=n_ids)
    cx = np.bincount(grid.ravel(), weights=xs.ravel(), minlength=n_ids)
    cy = np.bincount(grid.ravel(), weights=ys.ravel(), minlength=n_ids)
    scale = max(0.3, min(h, w) / 400)
    for obj_id in ids:
        if n[obj_id] == 0:  # a sliver the coarse grid missed
            continue
        org = (int(cx[obj_id] / n[obj_id]), int(cy[obj_id] / n[obj_id]))
        color = tuple(int(c) for c in lut[obj_id])
        cv2.putText(out, str(obj_id), org, cv2.FONT_HERSHEY_SIMPLEX, scale, WHITE, 2, cv2.LINE_8)
        cv2.putText(out, str(obj_id), org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_8)


__all__ = ["DAVIS_COLORS", "draw_outlines", "draw_overlay", "object_color"]
