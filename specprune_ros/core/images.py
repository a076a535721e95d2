"""Camera frame decoding and the pruning debug overlay. Pure numpy/OpenCV, no ROS.

``decode_raw`` takes the fields of a ``sensor_msgs/Image`` and ``decode_compressed`` those of a
``sensor_msgs/CompressedImage``; both return an RGB ``uint8`` array of shape (H, W, 3) or raise
:class:`ImageDecodeError` saying what was wrong. ``dim_pruned_patches`` draws which patches the policy kept.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .types import InputError

#: raw ``sensor_msgs/Image`` encodings accepted, with their channel count
SUPPORTED_ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}

#: side of the patch grid of one policy image (224 / 14)
PATCH_GRID = 16


class ImageDecodeError(InputError):
    """A camera frame that cannot be turned into an RGB image (encoding, size or payload)."""


def decode_raw(
    encoding: str, height: int, width: int, step: int, data: bytes | bytearray | memoryview | np.ndarray
) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a raw image buffer.

    Args:
        encoding: one of :data:`SUPPORTED_ENCODINGS` (rgb8, bgr8, rgba8, bgra8, mono8).
        height, width: pixels.
        step: bytes per row (>= width * channels; rows may be padded).
        data: the row-major pixel buffer, ``height * step`` bytes.
    """
    enc = (encoding or "").strip().lower()
    if enc not in SUPPORTED_ENCODINGS:
        raise ImageDecodeError(
            f"unsupported image encoding {encoding!r}; supported: {sorted(SUPPORTED_ENCODINGS)} "
            "(convert the camera output, e.g. set the driver to rgb8, or use a compressed topic)"
        )
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"image has no pixels: {width}x{height}")
    channels = SUPPORTED_ENCODINGS[enc]
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageDecodeError(
            f"image step {step} is smaller than width*channels = {width}*{channels} = {row_bytes} for {enc}"
        )
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if buf.size != height * step:
        raise ImageDecodeError(
            f"image data has {buf.size} bytes, expected height*step = {height}*{step} = {height * step} "
            f"({width}x{height} {enc})"
        )
    rows = buf.reshape(height, step)[:, :row_bytes]  # (H, W*C), drops row padding
    pixels = rows.reshape(height, width, channels)  # (H, W, C)
    if enc == "rgb8":
        rgb = pixels
    elif enc == "bgr8":
        rgb = pixels[:, :, ::-1]
    elif enc == "rgba8":
        rgb = pixels[:, :, :3]
    elif enc == "bgra8":
        rgb = pixels[:, :, 2::-1]
    else:  # mono8
        rgb = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(rgb, dtype=np.uint8)  # (H, W, 3), owns its memory


def decode_compressed(fmt: str, data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a JPEG or PNG payload (``sensor_msgs/CompressedImage``). Only 8-bit images are
    camera frames: a 16-bit PNG (a depth image, ``"16UC1; png compressed"``) is refused, not scaled down."""
    f = (fmt or "").lower()
    if "compresseddepth" in f:
        raise ImageDecodeError(f"compressed depth images ({fmt!r}) are not camera frames; subscribe to the colour topic")
    encoding = f.split(";")[0].strip() if ";" in f else ""  # image_transport: "<encoding>; <codec> compressed ..."
    if any(bits in encoding for bits in ("16", "32", "64")):
        raise ImageDecodeError(f"compressed image of encoding {encoding!r} ({fmt!r}) is not an 8-bit camera frame "
                               "(a depth or raw sensor image?); subscribe to the colour topic")
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    return decode_image_bytes(buf, f"the compressed image (format {fmt!r}, {buf.size} bytes)")


def decode_image_bytes(buf: np.ndarray, what: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) from the bytes of a JPEG or PNG file; grey becomes three equal channels, alpha is dropped,
    and anything but 8 bits per channel is refused. ``what`` names the image in errors."""
    import cv2

    if buf.size == 0:
        raise ImageDecodeError(f"{what} has no data")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)  # (H, W, 3) BGR at its own depth, or None
    except cv2.error as exc:  # e.g. a header announcing more pixels than OpenCV's limit
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ImageDecodeError(f"could not decode {what}: {detail}") from None
    if img is None:
        raise ImageDecodeError(f"could not decode {what}; expected JPEG or PNG")
    if img.dtype != np.uint8:
        raise ImageDecodeError(f"{what} has {img.dtype} pixels (16-bit: a depth or raw sensor image?); a camera frame "
                               "must have 8 bits per channel")
    return np.ascontiguousarray(img[:, :, ::-1])


def encode_raw_rgb8(rgb: np.ndarray) -> tuple[int, int, int, bytes]:
    """``(height, width, step, data)`` of an RGB uint8 image for a ``sensor_msgs/Image`` with encoding rgb8."""
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ImageDecodeError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    h, w, _ = img.shape
    return h, w, w * 3, img.tobytes()


def patch_boxes(
    height: int,
    width: int,
    grid: int = PATCH_GRID,
    crop_scale: float = 1.0,
    flip: bool = False,
) -> np.ndarray:
    """Pixel box of each policy patch in the ORIGINAL camera frame, shape (grid*grid, 4): (y0, y1, x0, x1).

    The policy resizes the frame to 224x224 (no aspect preservation), optionally rotates it by 180 degrees
    (``flip``) and, with ``crop_scale < 1``, takes a centre crop of ``crop_scale`` of the area (side
    ``sqrt(crop_scale)``) resized back to 224, then splits it into ``grid x grid`` patches (row-major
    index). This maps each patch back through those steps; it is exact up to resampling (each patch's box
    is rounded to whole pixels).
    """
    if not 0 < crop_scale <= 1:
        raise ValueError(f"crop_scale must be in (0, 1], got {crop_scale}")
    side = math.sqrt(crop_scale)
    lo = (1.0 - side) / 2.0  # crop start, as a fraction of the full frame
    edges = lo + side * np.arange(grid + 1) / grid  # (grid+1,) fractions of the policy frame
    boxes = np.zeros((grid * grid, 4), dtype=np.int64)
    for r in range(grid):
        for c in range(grid):
            y0f, y1f = edges[r], edges[r + 1]
            x0f, x1f = edges[c], edges[c + 1]
            if flip:  # a 180-degree rotation: fraction f in the policy frame is 1 - f in the camera frame
                y0f, y1f = 1 - y1f, 1 - y0f
                x0f, x1f = 1 - x1f, 1 - x0f
            boxes[r * grid + c] = (
                int(round(y0f * height)),
                int(round(y1f * height)),
                int(round(x0f * width)),
                int(round(x1f * width)),
            )
    return boxes


def dim_pruned_patches(
    rgb: np.ndarray,
    kept: Sequence[int],
    grid: int = PATCH_GRID,
    crop_scale: float = 1.0,
    flip: bool = False,
    dim: float = 0.3,
) -> np.ndarray:
    """Copy of ``rgb`` (H, W, 3) with every patch NOT in ``kept`` darkened to ``dim`` of its brightness.

    Pixels outside the centre crop (never seen by the policy) are darkened too.
    """
    img = np.asarray(rgb, dtype=np.uint8)
    h, w = img.shape[:2]
    keep_mask = np.zeros((h, w), dtype=bool)  # (H, W)
    boxes = patch_boxes(h, w, grid, crop_scale, flip)
    for idx in kept:
        if not 0 <= int(idx) < grid * grid:
            raise ValueError(f"patch index {idx} outside 0..{grid * grid - 1}")
        y0, y1, x0, x1 = boxes[int(idx)]
        keep_mask[y0:y1, x0:x1] = True
    out = img.astype(np.float32)
    out[~keep_mask] *= dim
    return out.round().clip(0, 255).astype(np.uint8)
