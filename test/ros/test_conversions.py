"""ROS image messages <-> numpy: every supported encoding, row padding, byte order, and every kind of bad message."""

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from threeam_ros import conversions
from threeam_ros.conversions import ConversionError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
HEADER = Header(frame_id="cam")
HEADER.stamp.sec, HEADER.stamp.nanosec = 12, 345


def padded(pixels: np.ndarray, encoding: str, pad: int, big_endian: bool = False) -> Image:
    """An Image with `pad` junk bytes after every row, as some camera drivers send."""
    h, w = pixels.shape[:2]
    if big_endian:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">"))
    rows = pixels.reshape(h, -1).view(np.uint8).reshape(h, -1)
    junk = np.full((h, pad), 0xAB, np.uint8)
    data = np.concatenate([rows, junk], axis=1)
    return Image(
        height=h, width=w, encoding=encoding, step=data.shape[1], is_bigendian=int(big_endian), data=data.tobytes()
    )


EXPECTED_LAYOUT = {
    "rgb8": lambda rgb: rgb,
    "bgr8": lambda rgb: rgb[..., ::-1],
    "rgba8": lambda rgb: np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 200, np.uint8)], axis=2),
    "bgra8": lambda rgb: np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 9, np.uint8)], axis=2),
}


@pytest.mark.parametrize("pad", [0, 1, 3, 64])
@pytest.mark.parametrize("encoding", sorted(EXPECTED_LAYOUT))
def test_colour_encodings_with_any_padding_decode_to_rgb(encoding, pad):
    msg = padded(np.ascontiguousarray(EXPECTED_LAYOUT[encoding](RGB)), encoding, pad)
    out = conversions.image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == RGB.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("pad", [0, 5])
def test_mono8_decodes_to_grey_rgb(pad):
    grey = RGB[..., 0].copy()
    out = conversions.image_to_rgb(padded(grey[..., None], "mono8", pad))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_decoded_frame_owns_its_memory():
    msg = padded(RGB, "rgb8", 0)
    out = conversions.image_to_rgb(msg)
    msg.data = bytes(len(msg.data))
    np.testing.assert_array_equal(out, RGB)


CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


@pytest.mark.parametrize("encoding", sorted(CHANNELS))
def test_encode_decode_round_trip_keeps_header(encoding):
    msg = conversions.rgb_to_image(RGB, HEADER, encoding)
    assert msg.header == HEADER and msg.encoding == encoding and msg.step == RGB.shape[1] * CHANNELS[encoding]
    out = conversions.image_to_rgb(msg)
    if encoding == "mono8":
        grey = conversions.image_to_rgb(conversions.rgb_to_image(out, HEADER, "mono8"))
        np.testing.assert_array_equal(out, grey)  # grey is a fixed point
        assert (out[..., 0] == out[..., 1]).all()
    else:
        np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("encoding", ["mono16", "mono8"])
@pytest.mark.parametrize("big_endian", [False, True])
def test_label_images_round_trip_in_either_byte_order(encoding, big_endian):
    top = 65535 if encoding == "mono16" else 255
    labels = RNG.integers(0, top + 1, (4, 6)).astype(np.uint16)
    msg = conversions.labels_to_image(labels, HEADER, encoding)
    assert msg.header == HEADER and msg.encoding == encoding
    np.testing.assert_array_equal(conversions.image_to_labels(msg), labels)
    dtype = np.uint16 if encoding == "mono16" else np.uint8
    other = padded(labels.astype(dtype)[..., None], encoding, 2, big_endian=big_endian)
    np.testing.assert_array_equal(conversions.image_to_labels(other), labels)


def test_mono8_labels_refuse_ids_above_255():
    with pytest.raises(ConversionError, match="does not fit"):
        conversions.labels_to_image(np.array([[0, 256]], np.uint16), HEADER, "mono8")


def test_masks_round_trip_and_empty_message_means_no_mask():
    mask = RNG.random((5, 7)) > 0.5
    msg = conversions.mask_to_image(mask, HEADER)
    assert msg.encoding == "mono8" and set(np.unique(np.frombuffer(msg.data, np.uint8))) <= {0, 255}
    np.testing.assert_array_equal(conversions.image_to_mask(msg), mask)
    msg.encoding = "8UC1"
    np.testing.assert_array_equal(conversions.image_to_mask(msg), mask)
    assert conversions.image_to_mask(Image()) is None
    with pytest.raises(ConversionError, match="mono8 or 8UC1"):
        conversions.image_to_mask(conversions.rgb_to_image(RGB, HEADER))


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_round_trip(fmt):
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0] = np.arange(48)[None] * 5
    smooth[..., 1] = np.arange(32)[:, None] * 7
    msg = conversions.rgb_to_compressed(smooth, HEADER, fmt)
    assert msg.header == HEADER and msg.format == fmt
    out = conversions.compressed_to_rgb(msg)
    assert out.shape == smooth.shape and out.dtype == np.uint8
    err = np.abs(out.astype(int) - smooth).max()
    assert err == 0 if fmt == "png" else err <= 12


def test_compressed_grey_png_becomes_rgb():
    import cv2

    grey = RGB[..., 1].copy()
    ok, buf = cv2.imencode(".png", grey)
    out = conversions.compressed_to_rgb(CompressedImage(format="mono8; png compressed", data=buf.tobytes()))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


BAD_IMAGES = {
    "unknown encoding": (Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8)), "unsupported image enc"),
    "empty encoding": (Image(height=2, width=2, encoding="", step=6, data=bytes(12)), "unsupported image enc"),
    "zero size": (Image(height=0, width=0, encoding="rgb8", step=0, data=b""), "empty"),
    "zero width": (Image(height=4, width=0, encoding="rgb8", step=0, data=b""), "empty"),
    "truncated": (Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(40)), "truncated"),
    "no data": (Image(height=4, width=4, encoding="bgr8", step=12, data=b""), "truncated"),
    "step too small": (Image(height=4, width=4, encoding="rgb8", step=8, data=bytes(48)), "step 8"),
    "16-bit odd step": (Image(height=2, width=2, encoding="mono16", step=5, data=bytes(10)), None),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_images_raise_conversion_errors_with_reasons(case):
    msg, needle = BAD_IMAGES[case]
    with pytest.raises(ConversionError) as info:
        if msg.encoding == "mono16":
            conversions.image_to_labels(msg)
        else:
            conversions.image_to_rgb(msg)
    if needle:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    "msg, needle",
    [
        (CompressedImage(format="jpeg", data=b""), "no data"),
        (CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 not really a jpeg"), "could not be decoded"),
        (CompressedImage(format="tiff", data=b"II*\x00"), "unsupported compressed format"),
    ],
)
def test_bad_compressed_images_raise(msg, needle):
    with pytest.raises(ConversionError, match=needle):
        conversions.compressed_to_rgb(msg)


def test_truncated_jpeg_is_refused_or_decoded_never_crashes():
    full = conversions.rgb_to_compressed(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), HEADER, "jpeg")
    cut = CompressedImage(format="jpeg", data=bytes(full.data)[: len(full.data) // 3])
    try:
        out = conversions.compressed_to_rgb(cut)  # libjpeg may fill the missing rows with grey
        assert out.shape == (64, 64, 3)
    except ConversionError as exc:
        assert "could not be decoded" in str(exc)


def test_overlay_tints_only_object_pixels_with_stable_colours():
    rgb = np.full((40, 60, 3), 100, np.uint8)
    labels = np.zeros((40, 60), np.uint16)
    labels[5:20, 5:25] = 3
    labels[25:38, 30:58] = 300
    out = conversions.draw_overlay(rgb, labels, alpha=0.5)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert (out[25:, :25] == 100).all()  # background away from the masks and their id text is untouched
    assert not (out[labels == 3] == 100).all(axis=1).all()
    expected = 0.5 * 100 + 0.5 * np.array(conversions.object_color(300))
    np.testing.assert_allclose(out[37, 57], expected, atol=1)  # a corner of object 300, away from its id text
    assert conversions.object_color(3) != conversions.object_color(300)
    assert conversions.object_color(3) == conversions.object_color(3)
    np.testing.assert_array_equal(conversions.draw_overlay(rgb, np.zeros_like(labels)), rgb)


@pytest.mark.parametrize("big_endian", [False, True])
def test_depth_images_decode_to_metres(big_endian):
    metres = np.array([[0.0, 1.5, 2.25], [np.nan, 0.5, 10.0]], np.float32)
    out = conversions.image_to_depth(padded(metres[..., None], "32FC1", 4, big_endian=big_endian))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(metres))
    np.testing.assert_allclose(out[~np.isnan(out)], metres[~np.isnan(metres)])
    mm = np.array([[0, 1500, 2250], [65535, 500, 10]], np.uint16)
    out = conversions.image_to_depth(padded(mm[..., None], "16UC1", 2, big_endian=big_endian))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, mm / 1000.0, rtol=1e-6)
    with pytest.raises(ConversionError, match="32FC1"):
        conversions.image_to_depth(conversions.rgb_to_image(RGB, HEADER))
