"""Raw camera frame (uint8 HxWx3 RGB, any size) -> policy-ready 224x224 frame -> 6-channel tensor.

Steps, each configurable (PreprocessConfig): 180 degree flip, JPEG round trip and antialiased Lanczos
resize to 224 (both only for frames of another size, as in the OpenVLA-OFT evaluation),
center crop of ``crop_scale`` area resized back to 224 (bilinear, sampled like TensorFlow's
``crop_and_resize``, which the LIBERO evaluation used), then DINOv2 and SigLIP normalizations.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from PIL import Image

from .config import PreprocessConfig
from .types import InputError

DINO_MEAN = (0.485, 0.456, 0.406)
DINO_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def center_crop_resize(img: np.ndarray, scale: float, size: int) -> np.ndarray:
    """Bilinear crop-and-resize of the centered square box covering ``scale`` of the area.

    img (H, W, 3) uint8 -> (size, size, 3) uint8. Sample points follow ``tf.image.crop_and_resize``:
    ``y_i = y1 (H-1) + i (y2-y1)(H-1)/(size-1)``; the float result is converted back to uint8 like
    ``tf.image.convert_image_dtype(saturate=True)`` (x * 255.5, truncated).
    """
    side = math.sqrt(scale)
    lo, hi = (1 - side) / 2, (1 + side) / 2
    H, W = img.shape[:2]
    ys = lo * (H - 1) + np.arange(size) * (hi - lo) * (H - 1) / (size - 1)  # (size,)
    xs = lo * (W - 1) + np.arange(size) * (hi - lo) * (W - 1) / (size - 1)
    f = img.astype(np.float32) / np.float32(255.0)
    # separable bilinear: rows first, then columns
    y0 = np.floor(ys).astype(int)
    y1 = np.minimum(y0 + 1, H - 1)
    wy = (ys - y0).astype(np.float32)[:, None, None]  # (size, 1, 1)
    rows = f[y0] * (1 - wy) + f[y1] * wy  # (size, W, 3)
    x0 = np.floor(xs).astype(int)
    x1 = np.minimum(x0 + 1, W - 1)
    wx = (xs - x0).astype(np.float32)[None, :, None]  # (1, size, 1)
    out = rows[:, x0] * (1 - wx) + rows[:, x1] * wx  # (size, size, 3) in [0, 1]
    return np.clip(out * 255.5, 0, 255).astype(np.uint8)


def policy_frame(img: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> the policy-ready uint8 (224, 224, 3) frame (what the vision towers see)."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"expected a uint8 (H, W, 3) RGB frame, got {img.dtype} {img.shape}")
    if cfg.flip:
        img = img[::-1, ::-1]
    size = cfg.image_size
    if img.shape[:2] != (size, size):
        # As the OFT evaluation: JPEG round trip (the training data was stored as JPEG), then an antialiased
        # Lanczos resize. Frames already at the policy size are left alone, as there.
        if cfg.jpeg_roundtrip:
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.LANCZOS))
    if cfg.center_crop:
        img = center_crop_resize(img, cfg.crop_scale, size)
    return np.ascontiguousarray(img)


_MEAN = np.array(DINO_MEAN + SIGLIP_MEAN, dtype=np.float32)  # (6,)
_STD = np.array(DINO_STD + SIGLIP_STD, dtype=np.float32)


def normalize(frames: list[np.ndarray], fused: bool = True) -> torch.Tensor:
    """Policy-ready frames (each (224, 224, 3) uint8) -> (1, V*6, 224, 224) float32: per view DINOv2 then SigLIP."""
    x = np.stack(frames).astype(np.float32) / np.float32(255.0)  # (V, 224, 224, 3)
    x = np.concatenate([x, x], axis=-1) if fused else x  # (V, 224, 224, 6)
    c = x.shape[-1]
    x = (x - _MEAN[:c]) / _STD[:c]
    x = x.transpose(0, 3, 1, 2).reshape(1, -1, *x.shape[1:3])  # (1, V*C, 224, 224)
    return torch.from_numpy(np.ascontiguousarray(x))
