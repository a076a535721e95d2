"""Raw and compressed camera frame decoding, and the pruned-patch overlay."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from specprune_ros.core.images import (
    ImageDecodeError,
    decode_compressed,
    decode_raw,
    dim_pruned_patches,
    encode_raw_rgb8,
    patch_boxes,
)
from specprune_ros.core.types import InputError


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)  # (H, W, 3)


def _pad(rows: np.ndarray, pad: int) -> tuple[int, bytes]:
    h = rows.shape[0]
    flat = rows.reshape(h, -1)
    padded = np.concatenate([flat, np.full((h, pad), 77, np.uint8)], axis=1)
    return padded.shape[1], padded.tobytes()


@pytest.mark.parametrize("pad", [0, 3])
def test_each_supported_encoding(rgb, pad):
    h, w, _ = rgb.shape
    variants = {
        "rgb8": (rgb, rgb),
        "bgr8": (rgb[:, :, ::-1], rgb),
        "rgba8": (np.concatenate([rgb, np.full((h, w, 1), 9, np.uint8)], axis=2), rgb),
        "bgra8": (np.concatenate([rgb[:, :, ::-1], np.full((h, w, 1), 9, np.uint8)], axis=2), rgb),
        "mono8": (rgb[:, :, :1], np.repeat(rgb[:, :, :1], 3, axis=2)),
    }
    for enc, (pixels, expected) in variants.items():
        step, data = _pad(np.ascontiguousarray(pixels), pad)
        out = decode_raw(enc, h, w, step, data)
        assert out.dtype == np.uint8 and out.shape == (h, w, 3), enc
        np.testing.assert_array_equal(out, expected, err_msg=enc)


@pytest.mark.parametrize("enc", ["yuv422", "16UC1", "mono16", "bayer_rggb8", "32FC1", "rgb16", ""])
def test_unsupported_encodings_name_the_encoding(enc):
    with pytest.raises(ImageDecodeError, match="unsupported image encoding") as info:
        decode_raw(enc, 2, 2, 12, bytes(24))
    assert "rgb8" in str(info.value)  # says what would work
    assert isinstance(info.value, InputError)


def test_wrong_sizes(rgb):
    h, w, _ = rgb.shape
    data = rgb.tobytes()
    with pytest.raises(ImageDecodeError, match="expected height\\*step"):
        decode_raw("rgb8", h, w, w * 3, data[:-1])
    with pytest.raises(ImageDecodeError, match="step 10 is smaller"):
        decode_raw("rgb8", h, w, 10, data)
    with pytest.raises(ImageDecodeError, match="no pixels"):
        decode_raw("rgb8", 0, w, w * 3, b"")


def test_compressed_jpeg_and_png(rgb):
    big = cv2.resize(rgb, (40, 48), interpolation=cv2.INTER_NEAREST)
    ok, png = cv2.imencode(".png", big[:, :, ::-1])
    assert ok
    np.testing.assert_array_equal(decode_compressed("png", png.tobytes()), big)
    ok, jpg = cv2.imencode(".jpg", big[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    out = decode_compressed("rgb8; jpeg compressed bgr8", jpg.tobytes())
    assert out.shape == big.shape
    assert np.abs(out.astype(int) - big.astype(int)).mean() < 20  # lossy, but the same picture
    with pytest.raises(ImageDecodeError, match="could not decode"):
        decode_compressed("jpeg", b"not a jpeg")
    with pytest.raises(ImageDecodeError, match="no data"):
        decode_compressed("jpeg", b"")
    with pytest.raises(ImageDecodeError, match="depth"):
        decode_compressed("16UC1; compressedDepth", png.tobytes())


def test_compressed_16_bit_images_are_refused_not_scaled_down():
    ok, depth = cv2.imencode(".png", np.full((48, 40), 3000, np.uint16))  # image_transport's PNG of a depth image
    assert ok
    with pytest.raises(ImageDecodeError, match="encoding '16uc1'"):
        decode_compressed("16UC1; png compressed", depth.tobytes())
    with pytest.raises(ImageDecodeError, match="uint16 pixels"):  # a format string that does not say so
        decode_compressed("png", depth.tobytes())
    ok, rgb16 = cv2.imencode(".png", np.full((48, 40, 3), 3000, np.uint16))
    with pytest.raises(ImageDecodeError, match="uint16 pixels"):
        decode_compressed("rgb8; png compressed", rgb16.tobytes())
    ok, grey = cv2.imencode(".png", np.full((48, 40), 77, np.uint8))  # 8-bit grey: three equal channels
    np.testing.assert_array_equal(decode_compressed("mono8; png compressed", grey.tobytes()), np.full((48, 40, 3), 77, np.uint8))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height RGB pixels, with no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_compressed_image_beyond_the_decoder_limit_is_a_decode_error():
    # OpenCV refuses this header with cv2.error; the node only survives an ImageDecodeError
    with pytest.raises(ImageDecodeError, match="could not decode"):
        decode_compressed("png", _png_header_only(100_000, 100_000))


def test_encode_round_trip(rgb):
    h, w, step, data = encode_raw_rgb8(rgb)
    np.testing.assert_array_equal(decode_raw("rgb8", h, w, step, data), rgb)


def test_patch_boxes_cover_frame_and_flip():
    boxes = patch_boxes(224, 224)
    assert boxes.shape == (256, 4)
    assert tuple(boxes[0]) == (0, 14, 0, 14) and tuple(boxes[255]) == (210, 224, 210, 224)
    flipped = patch_boxes(224, 224, flip=True)
    assert tuple(flipped[0]) == (210, 224, 210, 224)
    cropped = patch_boxes(256, 256, crop_scale=0.9)
    side = 256 * 0.9**0.5
    assert cropped[0][0] == round((256 - side) / 2)


def test_dim_pruned_patches_darkens_only_pruned():
    img = np.full((224, 224, 3), 200, np.uint8)
    out = dim_pruned_patches(img, kept=[0, 17], dim=0.5)
    assert (out[0:14, 0:14] == 200).all() and (out[14:28, 14:28] == 200).all()
    assert (out[0:14, 14:28] == 100).all()
    assert (out == 200).sum() == 2 * 14 * 14 * 3
    with pytest.raises(ValueError, match="patch index 256"):
        dim_pruned_patches(img, kept=[256])
