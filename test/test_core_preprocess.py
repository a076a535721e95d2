"""Preprocessing: shapes, flip, center crop, JPEG round trip, the two normalizations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from specprune_ros.core.config import PreprocessConfig
from specprune_ros.core.preprocess import center_crop_resize, normalize, policy_frame
from specprune_ros.core.types import InputError

PLAIN = PreprocessConfig(center_crop=False)


def gradient(h=224, w=224):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("shape", [(224, 224), (256, 256), (480, 640), (100, 37)])
def test_any_size_becomes_224(shape):
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for cfg in (PLAIN, PreprocessConfig()):
        out = policy_frame(img, cfg)
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8


def test_224_input_without_crop_is_untouched():
    img = gradient()
    np.testing.assert_array_equal(policy_frame(img, PLAIN), img)


def test_flip_is_180_degrees():
    img = gradient()
    out = policy_frame(img, PreprocessConfig(center_crop=False, flip=True))
    np.testing.assert_array_equal(out, img[::-1, ::-1])


def test_center_crop_samples_the_center():
    img = gradient()
    out = center_crop_resize(img, 0.9, 224)
    side = np.sqrt(0.9)
    lo = (1 - side) / 2 * 223
    # first output pixel samples the box corner; the box corner of the x-ramp is at x = lo
    assert abs(int(out[0, 0, 0]) - lo) <= 1.0
    assert abs(int(out[-1, -1, 0]) - (223 - lo)) <= 1.0
    # scale 1.0 reproduces the image (up to the uint8 round trip)
    np.testing.assert_allclose(center_crop_resize(img, 1.0, 224).astype(int), img.astype(int), atol=1)


def test_crop_changes_the_image_and_is_configurable():
    img = gradient()
    assert not np.array_equal(policy_frame(img, PreprocessConfig(center_crop=True)), img)
    a = policy_frame(img, PreprocessConfig(crop_scale=0.5))
    b = policy_frame(img, PreprocessConfig(crop_scale=0.9))
    assert not np.array_equal(a, b)


def test_jpeg_roundtrip_only_for_resized_frames():
    big = gradient(256, 256)
    plain = policy_frame(big, PreprocessConfig(center_crop=False))
    jpeg = policy_frame(big, PreprocessConfig(center_crop=False, jpeg_roundtrip=True))
    diff = np.abs(jpeg.astype(int) - plain.astype(int))
    assert diff.max() > 0 and diff.mean() < 8
    small = gradient()  # already 224: left alone, as in the OFT evaluation
    np.testing.assert_array_equal(policy_frame(small, PreprocessConfig(center_crop=False, jpeg_roundtrip=True)), small)


def test_resize_is_antialiased():
    stripes = np.zeros((448, 448, 3), np.uint8)
    stripes[::2] = 255  # one-pixel stripes: a plain sampler aliases, an antialiased one averages to grey
    out = policy_frame(stripes, PreprocessConfig(center_crop=False))
    assert 100 < out.mean() < 155 and out.std() < 20


def test_two_normalizations():
    frame = np.full((224, 224, 3), 255, dtype=np.uint8)
    frame[..., 1] = 0
    x = normalize([frame, frame])
    assert x.shape == (1, 12, 224, 224) and x.dtype == torch.float32
    # DINOv2: (x - mean) / std; SigLIP: (x - 0.5) / 0.5
    torch.testing.assert_close(x[0, 0, 0, 0], torch.tensor((1 - 0.485) / 0.229))
    torch.testing.assert_close(x[0, 1, 0, 0], torch.tensor((0 - 0.456) / 0.224))
    torch.testing.assert_close(x[0, 3, 0, 0], torch.tensor(1.0))
    torch.testing.assert_close(x[0, 4, 0, 0], torch.tensor(-1.0))
    torch.testing.assert_close(x[0, 6:], x[0, :6])  # second view, same layout


@pytest.mark.parametrize("bad", [np.zeros((224, 224), np.uint8), np.zeros((224, 224, 4), np.uint8), np.zeros((224, 224, 3), np.float32)])
def test_bad_frames_are_refused(bad):
    with pytest.raises(InputError):
        policy_frame(bad, PLAIN)
