"""Image preprocessing as the official MUSt3R code does it.

``preprocess_image`` follows the demo / get_reconstruction path: normalise to [-1, 1] (mean 0.5, std 0.5), pick
the table entry with the closest aspect ratio, centre-crop to that ratio, resize (bilinear, antialiased).
``slam_preprocess`` follows the official online SLAM path (PIL resize, then centre crop).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import FrameError

# W:H ratio -> [W, H] of the landscape output (portrait inputs get the transposed size).
RESOLUTION_TABLES: dict[int, dict[float, tuple[int, int]]] = {
    224: {1.0: (224, 224)},
    336: {1.0: (336, 336)},
    384: {4 / 3: (384, 288), 3 / 2: (384, 256), 2 / 1: (384, 192), 3 / 1: (384, 128)},
    448: {1.0: (448, 448)},
    512: {4 / 3: (512, 384), 32 / 21: (512, 336), 16 / 9: (512, 288), 2 / 1: (512, 256), 16 / 5: (512, 160)},
    768: {4 / 3: (768, 576), 3 / 2: (768, 512), 16 / 9: (768, 432), 2 / 1: (768, 384), 16 / 5: (768, 240)},
}


@dataclasses.dataclass
class Preprocessed:
    img: torch.Tensor  # (3, H', W') float32 in [-1, 1]
    true_shape: tuple[int, int]  # (H', W')
    crop_box: tuple[int, int, int, int]  # (x0, y0, x1, y1) pixels of the original frame that were resized
    to_orig: np.ndarray  # 3x3 float64, maps (x, y, 1) of the processed image to the original (official matrix)


def normalize(frame: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB -> (3, H, W) float32, (x/255 - 0.5)/0.5."""
    t = torch.tensor(frame).permute(2, 0, 1).float().div(255)
    return (t - 0.5) / 0.5


def check_frame_array(frame) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        desc = f"{type(frame).__name__} {getattr(frame, 'shape', '')} {getattr(frame, 'dtype', '')}"
        raise FrameError(f"MUSt3R expects an HxWx3 uint8 RGB numpy array, got {desc}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise FrameError(f"empty frame of shape {frame.shape}")


def target_size(h: int, w: int, table: dict[float, tuple[int, int]]) -> tuple[int, int]:
    """(H', W') of the table entry whose aspect ratio is closest (W/H for landscape, H/W for portrait)."""
    ratios = np.array(list(table.keys()))
    landscape = w >= h
    diff = np.abs(w / h - ratios) if landscape else np.abs(w / h - 1 / ratios)
    tw, th = table[float(ratios[int(np.argmin(diff))])]
    return (th, tw) if landscape else (tw, th)


def resize_plan(h: int, w: int, table) -> tuple[tuple[int, int], tuple[int, int, int, int], np.ndarray]:
    """Output (H', W'), the crop box in the input, and the official to_orig matrix, for an HxW input."""
    table = RESOLUTION_TABLES[table] if isinstance(table, int) else table
    if [max(h, w), min(h, w)] in [list(v) for v in table.values()]:
        return (h, w), (0, 0, w, h), np.eye(3)
    th, tw = target_size(h, w, table)
    ratio, target_ratio = w / h, tw / th
    to_orig_crop = np.eye(3)
    if abs(ratio - target_ratio) < np.finfo(np.float32).eps:
        crop_w, crop_h = w, h
    elif ratio < target_ratio:
        crop_w, crop_h = w, int(w / target_ratio)
        to_orig_crop[1, 2] = (h - crop_h) / 2.0
    else:
        crop_w, crop_h = int(h * target_ratio), h
        to_orig_crop[0, 2] = (w - crop_w) / 2.0
    # torchvision's centre crop rounds the offset with Python's round (half to even)
    top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
    to_orig_resize = np.diag([crop_w / tw, crop_h / th, 1.0])
    return (th, tw), (left, top, left + crop_w, top + crop_h), to_orig_crop @ to_orig_resize


def preprocess_image(frame: np.ndarray, table=512) -> Preprocessed:
    """HxWx3 uint8 RGB -> normalised, cropped and resized image for MUSt3R (official demo preprocessing).

    ``table``: 224, 512 (or another key of RESOLUTION_TABLES), or a custom {W/H ratio: (W, H)} dict.
    """
    check_frame_array(frame)
    h, w = frame.shape[:2]
    (th, tw), box, to_orig = resize_plan(h, w, table)
    img = normalize(frame)
    if (th, tw) != (h, w):
        x0, y0, x1, y1 = box
        img = img[:, y0:y1, x0:x1]
        img = F.interpolate(img[None], size=(th, tw), mode="bilinear", align_corners=False, antialias=True)[0]
    return Preprocessed(img.contiguous(), (th, tw), box, to_orig)


def slam_preprocess(frame: np.ndarray, res: int = 512) -> tuple[Preprocessed, float]:
    """Official SLAM preprocessing: PIL resize (LANCZOS down / BICUBIC up), centre crop, normalise.

    For res 224/336/448 the short side goes to res and the crop is res x res; otherwise the long side goes to res
    and the crop keeps the largest multiples of 16. Returns the result and the focal factor to the original.
    """
    check_frame_array(frame)
    img = Image.fromarray(frame)
    w1, h1 = img.size
    square = res in (224, 336, 448)
    long_side = max(w1, h1) / min(w1, h1) * res if square else res
    s = max(w1, h1)
    interp = Image.LANCZOS if s > long_side else Image.BICUBIC
    new_size = tuple(int(round(x * long_side / s)) for x in img.size)
    img = img.resize(new_size, interp)
    w, h = img.size
    cx, cy = w // 2, h // 2
    half_w, half_h = (res // 2, res // 2) if square else (((2 * cx) // 16) * 8, ((2 * cy) // 16) * 8)
    img = img.crop((cx - half_w, cy - half_h, cx + half_w, cy + half_h))
    scale = w1 / w
    box = (
        int(round((cx - half_w) * scale)),
        int(round((cy - half_h) * scale)),
        int(round((cx + half_w) * scale)),
        int(round((cy + half_h) * scale)),
    )
    to_orig = np.array([[scale, 0, (cx - half_w) * scale], [0, h1 / h, (cy - half_h) * h1 / h], [0, 0, 1.0]])
    t = normalize(np.asarray(img))
    return Preprocessed(t, (img.size[1], img.size[0]), box, to_orig), scale
