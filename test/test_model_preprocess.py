"""Preprocessing parity with the reference (images bit-exact, crop/resize bookkeeping)."""
from __future__ import annotations

import numpy as np
import pytest
from fixture_compare import assert_matches_reference

from recon_ros.errors import UserInputError
from recon_ros.geometry.camera import make_K
from recon_ros.model.preprocess import img_to_rgb, preprocess_rgb


@pytest.mark.parametrize("name", ["preprocess_odd", "scenario_a", "scenario_b"])
def test_preprocess_matches_reference(spann3r_fixtures, name):
    ref = np.load(spann3r_fixtures / f"{name}.npz")
    target = (ref["img"].shape[-1], ref["img"].shape[-2])
    for raw, img, K_ref in zip(ref["raw_rgb"], ref["img"], ref["intrinsics_after_preprocess"]):
        pre = preprocess_rgb(raw, target)
        assert pre.img.shape == (1, *img.shape)
        np.testing.assert_array_equal(pre.img[0].numpy(), img)
        assert pre.true_shape == img.shape[1:]
        h0, w0 = raw.shape[:2]
        K = pre.pixel_map.K_to_model(make_K(1.0, 1.0, w0 // 2, h0 // 2))
        assert_matches_reference("K", K, K_ref, rtol=1e-6)
        np.testing.assert_array_equal(img_to_rgb(pre.img), pre.rgb)


def test_pixel_map_round_trip_and_content(spann3r_fixtures):
    """Model pixels map back onto the image pixels they were resampled from."""
    ref = np.load(spann3r_fixtures / "preprocess_odd.npz")
    raw = ref["raw_rgb"][0]
    pre = preprocess_rgb(raw)
    pm = pre.pixel_map
    uv = np.stack(np.meshgrid(np.arange(224.0), np.arange(224.0)), -1)
    np.testing.assert_allclose(pm.to_model(pm.to_image(uv)), uv, atol=1e-9)
    img_uv = pm.to_image(uv)
    assert img_uv[..., 0].min() > -0.5 and img_uv[..., 0].max() < raw.shape[1] - 0.5
    # colours agree with a nearest-pixel lookup of the raw image up to resampling blur
    iu = np.clip(np.round(img_uv[..., 0]).astype(int), 0, raw.shape[1] - 1)
    iv = np.clip(np.round(img_uv[..., 1]).astype(int), 0, raw.shape[0] - 1)
    diff = np.abs(raw[iv, iu].astype(float) - pre.rgb.astype(float)).mean()
    shifted = np.abs(raw[iv, np.clip(iu + 6, 0, raw.shape[1] - 1)].astype(float) - pre.rgb).mean()
    assert diff < shifted


def test_general_target_sizes():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, (101, 157, 3), dtype=np.uint8)
    pre = preprocess_rgb(raw, (96, 64))
    assert pre.img.shape == (1, 3, 64, 96) and pre.img.abs().max() <= 1
    pre = preprocess_rgb(raw, (32, 32))
    assert pre.img.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("target", [(100, 64), (64, 96), (0, 16)])
def test_bad_targets(target):
    with pytest.raises(UserInputError):
        preprocess_rgb(np.zeros((64, 64, 3), np.uint8), target)


@pytest.mark.parametrize("raw, fragment", [
    (np.zeros((64, 64, 3), np.float32), "uint8"),
    (np.zeros((64, 64, 4), np.uint8), "alpha"),
    (np.zeros((64, 64), np.uint8), "H x W x 3"),
    ("image.png", "numpy array"),
])
def test_bad_raw_images(raw, fragment):
    with pytest.raises(UserInputError, match=fragment):
        preprocess_rgb(raw)
