"""ROS image messages <-> numpy arrays, and the overlay drawn for RViz.

Decoding accepts what cameras send (any row padding, either byte order for 16-bit data) and refuses anything it
cannot read with a `ConversionError` that says what was wrong, so the node can log it and keep running.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from threeam_model.viz import draw_overlay, object_color  # noqa: F401 (the overlay drawn for RViz, re-exported)

# encoding -> (channels, bytes per channel, channel order of the data)
COLOR_ENCODINGS = {
    "rgb8": (3, "rgb"),
    "bgr8": (3, "bgr"),
    "rgba8": (4, "rgba"),
    "bgra8": (4, "bgra"),
    "mono8": (1, "mono"),
}
LABEL_ENCODINGS = ("mono16", "mono8")
MASK_ENCODINGS = ("mono8", "8UC1")
_HOST_BIG_ENDIAN = sys.byteorder == "big"


class ConversionError(ValueError):
    """A message that cannot be turned into an image; the message says what to send instead."""


# ---------------------------------------------------------------------------------------------- decoding


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8; any step) -> (H, W, 3) uint8 RGB, a fresh array."""
    if msg.encoding not in COLOR_ENCODINGS:
        raise ConversionError(f"unsupported image encoding {msg.encoding!r}; send one of {', '.join(COLOR_ENCODINGS)}")
    channels, order = COLOR_ENCODINGS[msg.encoding]
    pixels = _unpack(msg, channels, np.uint8)
    if order == "rgb":
        return pixels.copy()
    if order == "bgr":
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if order == "rgba":
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB)
    if order == "bgra":
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(pixels[..., 0], cv2.COLOR_GRAY2RGB)


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png, colour or grey) -> (H, W, 3) uint8 RGB."""
    fmt = msg.format.lower()
    if fmt and not any(name in fmt for name in ("jpeg", "jpg", "png")):
        raise ConversionError(f"unsupported compressed format {msg.format!r}; send jpeg or png")
    data = np.frombuffer(memoryview(msg.data), dtype=np.uint8)
    if data.size == 0:
        raise ConversionError("compressed image has no data")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ConversionError(
            f"compressed image ({data.size} bytes, format {msg.format!r}) could not be decoded: "
            "truncated, or not jpeg/png"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_to_mask(msg: Image) -> np.ndarray | None:
    """A prompt mask (mono8 / 8UC1, non-zero = object) -> (H, W) bool; None for an empty message (no mask)."""
    if msg.width == 0 and msg.height == 0 and len(msg.data) == 0:
        return None
    if msg.encoding not in MASK_ENCODINGS:
        raise ConversionError(
            f"mask encoding {msg.encoding!r} is not supported; send mono8 or 8UC1 (non-zero = object)"
        )
    return _unpack(msg, 1, np.uint8)[..., 0] > 0


def mask_from_file(path: str, obj_id: int) -> np.ndarray:
    """A prompt mask from a PNG on this machine: a label image (pixels equal to obj_id) or a binary mask (non-zero)."""
    import os

    if not os.path.isfile(path):
        raise ConversionError(f"mask_file {path!r} does not exist on the node's machine (give a path there)")
    pixels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ConversionError(f"mask_file {path!r} is not an image OpenCV can read; send a PNG")
    if pixels.ndim == 3:
        if not (pixels == pixels[..., :1]).all():
            raise ConversionError(f"mask_file {path!r} is a colour image; send a grey (8- or 16-bit) PNG")
        pixels = pixels[..., 0]
    values = np.unique(pixels)
    if obj_id in values:
        return pixels == obj_id
    if len(values) <= 2:  # binary: 0 and one other value
        return pixels > 0
    shown = ", ".join(str(int(v)) for v in values[:10]) + (" ..." if len(values) > 10 else "")
    raise ConversionError(f"mask_file {path!r} is a label image without object id {obj_id} (its values: {shown})")


def image_to_labels(msg: Image) -> np.ndarray:
    """A label image (mono16 or mono8) -> (H, W) uint16 ids. The inverse of `labels_to_image`, for clients."""
    if msg.encoding not in LABEL_ENCODINGS:
        raise ConversionError(f"label encoding {msg.encoding!r} is not supported; expected mono16 or mono8")
    dtype = np.uint16 if msg.encoding == "mono16" else np.uint8
    return _unpack(msg, 1, dtype)[..., 0].astype(np.uint16)


DEPTH_ENCODINGS = {"32FC1": (np.float32, 1.0), "16UC1": (np.uint16, 0.001), "mono16": (np.uint16, 0.001)}


def image_to_depth(msg: Image) -> np.ndarray:
    """A depth image (REP 118: 32FC1 metres, 16UC1 millimetres; any step, either byte order) -> (H, W) float32
    metres, with 0 where the sensor had no reading (NaN for float input stays NaN)."""
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ConversionError(
            f"depth encoding {msg.encoding!r} is not supported; send 32FC1 (metres) or 16UC1 (millimetres)"
        )
    dtype, scale = DEPTH_ENCODINGS[msg.encoding]
    depth = _unpack(msg, 1, dtype)[..., 0].astype(np.float32)
    return depth * np.float32(scale) if scale != 1.0 else depth


def _unpack(msg: Image, channels: int, dtype) -> np.ndarray:
    """Check an Image's geometry against its data and return an (H, W, C) view without the row padding."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise ConversionError(f"image is empty: {w}x{h} pixels (WxH)")
    itemsize = np.dtype(dtype).itemsize
    row_bytes = w * channels * itemsize
    if step < row_bytes:
        raise ConversionError(
            f"step {step} is smaller than a row of {w} {msg.encoding} pixels ({row_bytes} bytes); fix the step field"
        )
    need = step * (h - 1) + row_bytes
    if len(msg.data) < need:
        raise ConversionError(
            f"image data is truncated: {len(msg.data)} bytes for {w}x{h} {msg.encoding} with step {step} "
            f"(need at least {need})"
        )
    if step % itemsize:
        raise ConversionError(f"step {step} is not a multiple of the {itemsize}-byte sample size")
    raw = np.frombuffer(memoryview(msg.data), dtype=np.uint8, count=need)
    # Rows start every `step` bytes; padding after the last pixel of a row is skipped by the stride.
    rows = np.lib.stride_tricks.as_strided(raw, shape=(h, row_bytes), strides=(step, 1))
    pixels = rows.view(np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")) if itemsize > 1 else rows
    return pixels.reshape(h, w, channels).astype(dtype, copy=False)


# ---------------------------------------------------------------------------------------------- encoding


def rgb_to_image(rgb: np.ndarray, header, encoding: str = "rgb8") -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image in `encoding` (rgb8, bgr8, rgba8, bgra8 or mono8), no padding."""
    if encoding not in COLOR_ENCODINGS:
        raise ConversionError(f"cannot encode to {encoding!r}; use one of {', '.join(COLOR_ENCODINGS)}")
    order = COLOR_ENCODINGS[encoding][1]
    code = {
        "bgr": cv2.COLOR_RGB2BGR,
        "rgba": cv2.COLOR_RGB2RGBA,
        "bgra": cv2.COLOR_RGB2BGRA,
        "mono": cv2.COLOR_RGB2GRAY,
    }
    pixels = rgb if order == "rgb" else cv2.cvtColor(rgb, code[order])
    return _pack(pixels, header, encoding)


def labels_to_image(labels: np.ndarray, header, encoding: str = "mono16") -> Image:
    """(H, W) integer ids -> mono16 or mono8 sensor_msgs/Image (pixel = object id, 0 = background)."""
    if encoding not in LABEL_ENCODINGS:
        raise ConversionError(f"label encoding must be mono16 or mono8, got {encoding!r}")
    dtype = np.uint16 if encoding == "mono16" else np.uint8
    if labels.size and int(labels.max()) > np.iinfo(dtype).max:
        raise ConversionError(f"object id {int(labels.max())} does not fit a {encoding} label image")
    return _pack(labels.astype(dtype, copy=False), header, encoding)


def mask_to_image(mask: np.ndarray, header) -> Image:
    """(H, W) bool mask -> mono8 sensor_msgs/Image (255 = object)."""
    return _pack(mask.astype(np.uint8) * np.uint8(255), header, "mono8")


def rgb_to_compressed(rgb: np.ndarray, header, fmt: str = "jpeg", quality: int = 90) -> CompressedImage:
    """(H, W, 3) uint8 RGB -> sensor_msgs/CompressedImage (jpeg or png)."""
    if fmt not in ("jpeg", "png"):
        raise ConversionError(f"compressed format must be jpeg or png, got {fmt!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ConversionError(f"could not encode a {rgb.shape} image as {fmt}")
    msg = CompressedImage(header=header, format=fmt)
    msg.data = buf.tobytes()
    return msg


def pixels_to_png(pixels: np.ndarray, header) -> CompressedImage:
    """(H, W) uint8 or uint16 pixels -> lossless PNG sensor_msgs/CompressedImage (16-bit stays 16-bit)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(pixels))
    if not ok:
        raise ConversionError(f"could not encode a {pixels.shape} {pixels.dtype} image as png")
    msg = CompressedImage(header=header, format="png")
    msg.data = buf.tobytes()
    return msg


def _pack(pixels: np.ndarray, header, encoding: str) -> Image:
    pixels = np.ascontiguousarray(pixels)
    h, w = pixels.shape[:2]
    msg = Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=int(_HOST_BIG_ENDIAN))
    msg.step = int(pixels.strides[0])
    msg.data = pixels.tobytes()
    return msg
