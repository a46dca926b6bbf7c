"""KeyframeSelector: gates and triggers, the record it builds, mask mapping."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from recon_ros.geometry.camera import PixelMap, backproject_depth, make_K
from recon_ros.geometry.transforms import make_T, rotvec_to_matrix, transform_points
from recon_ros.mapping.frame import Frame, FrameEstimate
from recon_ros.mapping.keyframes import KeyframeSelector, mask_to_model
from recon_ros.mapping.schema import KeyframeConfig

W, H = 40, 30
K = make_K(35.0, 35.0, W / 2 - 0.5, H / 2 - 0.5)
_RNG = np.random.default_rng(0)
_TEXTURE = _RNG.integers(0, 255, (H, W, 3)).astype(np.uint8)


def _est(T, t_s=0.0, depth=2.0, rgb=None, mask=None, ok=True, conf=3.0):
    pts = transform_points(T, backproject_depth(np.full((H, W), depth, np.float32), K))
    frame = Frame(stamp_ns=int(t_s * 1e9), rgb=_TEXTURE if rgb is None else rgb, K=K, mask=mask)
    return FrameEstimate(stamp_ns=frame.stamp_ns, index=0, points=pts,
                         confidence=np.full((H, W), conf, np.float32), colors=frame.rgb,
                         T_world_cam=T, K_model=K, pixel_map=PixelMap.identity(W, H), frame=frame,
                         tracking_ok=ok)


def _cfg(**kw):
    base = dict(min_translation_m=0.0, translation_depth_ratio=0.0, min_rotation_deg=0.0,
                min_overlap=0.0, max_interval_s=0.0, min_interval_s=0.0, sharpness_ratio=0.0)
    base.update(kw)
    return KeyframeConfig(**base)


def _first(sel):
    kf = sel.consider(_est(np.eye(4)))
    assert kf is not None and sel.last_decision.reason == "first"
    return kf


def test_translation_depth_ratio_and_metric_threshold():
    sel = KeyframeSelector(_cfg(translation_depth_ratio=0.1))  # 0.1 x median depth 2 m = 0.2
    _first(sel)
    assert sel.consider(_est(make_T(np.eye(3), [0.15, 0, 0]), 1.0)) is None
    assert sel.consider(_est(make_T(np.eye(3), [0.25, 0, 0]), 2.0)) is not None
    assert sel.last_decision.reason == "translation_depth"

    sel = KeyframeSelector(_cfg(min_translation_m=0.3))
    _first(sel)
    T = make_T(np.eye(3), [0.2, 0, 0])
    assert sel.consider(_est(T, 1.0)) is None  # unknown scale: the metric threshold is off
    assert sel.consider(_est(T, 2.0), scale=1.0) is None  # 0.2 m < 0.3 m
    kf = sel.consider(_est(T, 3.0), scale=2.0)  # 0.4 m > 0.3 m
    assert kf is not None and sel.last_decision.reason == "translation"
    # the record is metric: translation and points scaled by 2
    np.testing.assert_allclose(kf.T_world_cam[:3, 3], [0.4, 0, 0])
    assert np.nanmedian(kf.points_cam[..., 2]) == pytest.approx(4.0)


def test_rotation_threshold():
    sel = KeyframeSelector(_cfg(min_rotation_deg=10.0))
    _first(sel)
    assert sel.consider(_est(make_T(rotvec_to_matrix([0, np.radians(8), 0]), [0, 0, 0]), 1)) is None
    assert sel.consider(_est(make_T(rotvec_to_matrix([0, np.radians(12), 0]), [0, 0, 0]), 2)) is not None
    assert sel.last_decision.rotation_deg == pytest.approx(12.0, abs=1e-6)


def test_overlap_trigger_measures_reprojection():
    sel = KeyframeSelector(_cfg(min_overlap=0.6))
    _first(sel)
    # sideways shift by s at depth 2 m moves the image by 35 * s / 2 pixels of 40
    full = 2.0 * W / 35.0  # the shift that moves the image by its whole width
    assert sel.consider(_est(make_T(np.eye(3), [0.3 * full, 0, 0]), 1)) is None
    assert sel.last_decision.overlap == pytest.approx(0.7, abs=0.05)
    assert sel.consider(_est(make_T(np.eye(3), [0.6 * full, 0, 0]), 2)) is not None
    assert sel.last_decision.overlap == pytest.approx(0.4, abs=0.05)
    # depth disagreement also counts as not seen: same pose, the surface 20 % farther
    assert sel.consider(_est(make_T(np.eye(3), [0.6 * full, 0, 0]), 3, depth=2.4)) is not None


def test_time_trigger_and_min_interval_gate():
    sel = KeyframeSelector(_cfg(max_interval_s=2.0, min_interval_s=0.5, min_rotation_deg=5.0))
    _first(sel)
    assert sel.consider(_est(np.eye(4), 1.5)) is None
    assert sel.consider(_est(np.eye(4), 2.5)) is not None and sel.last_decision.reason == "interval"
    big_turn = make_T(rotvec_to_matrix([0, np.radians(30), 0]), [0, 0, 0])
    assert sel.consider(_est(big_turn, 2.8)) is None and sel.last_decision.reason == "min_interval"
    assert sel.consider(_est(big_turn, 3.1)) is not None


def test_quality_gates():
    turn = make_T(rotvec_to_matrix([0, np.radians(30), 0]), [0, 0, 0])
    sel = KeyframeSelector(_cfg(min_rotation_deg=5.0, min_confidence=2.0, min_sharpness=50.0))
    _first(sel)
    assert sel.consider(_est(turn, 1, ok=False)) is None
    assert sel.last_decision.reason == "tracking_failed"
    assert sel.consider(_est(turn, 1, conf=1.5)) is None
    assert sel.last_decision.reason.startswith("confidence")
    blurred = cv2.GaussianBlur(_TEXTURE, (0, 0), 3.0)
    assert sel.consider(_est(turn, 1, rgb=blurred)) is None
    assert sel.last_decision.reason.startswith("blur")
    mask = np.zeros((H, W), bool)
    mask[:, : int(0.6 * W)] = True
    assert sel.consider(_est(turn, 1, mask=mask)) is None
    assert sel.last_decision.reason.startswith("masked")
    prov = _est(turn, 1)
    prov.provisional = True
    assert sel.consider(prov) is None
    assert sel.consider(_est(turn, 1)) is not None


def test_relative_sharpness_gate():
    sel = KeyframeSelector(_cfg(min_rotation_deg=1.0, sharpness_ratio=0.4))
    _first(sel)
    for i in range(6):
        sel.consider(_est(np.eye(4), 1 + i))  # sharp frames, no trigger
    turn = make_T(rotvec_to_matrix([0, np.radians(20), 0]), [0, 0, 0])
    assert sel.consider(_est(turn, 9, rgb=cv2.GaussianBlur(_TEXTURE, (0, 0), 1.0))) is None
    assert sel.last_decision.reason == "blur_relative"
    # slightly smoother content (not blur) still makes keyframes
    assert sel.consider(_est(turn, 10, rgb=cv2.GaussianBlur(_TEXTURE, (0, 0), 0.3))) is not None


def test_keyframe_record_ids_and_masked_pixels():
    mask = np.zeros((H, W), bool)
    mask[5:10, 5:12] = True
    sel = KeyframeSelector(_cfg(min_rotation_deg=5.0), depth_source="depth")
    kf0 = sel.consider(_est(np.eye(4), 0, mask=mask))
    turn = make_T(rotvec_to_matrix([0, np.radians(20), 0]), [0.1, 0, 0])
    kf1 = sel.consider(_est(turn, 1))
    assert (kf0.id, kf1.id) == (0, 1) and kf1.depth_source == "depth"
    assert not kf0.valid[mask].any() and kf0.valid[~mask].all()
    np.testing.assert_allclose(kf1.points_cam[..., 2], 2.0, atol=1e-5)  # own camera frame
    np.testing.assert_allclose(kf1.T_world_cam, turn)


def test_mask_to_model_through_crop_and_resize():
    # model = crop of 10 px on the left then resize by 1/4: u_m + .5 = (u_i + .5) / 4 - 2.5
    pm = PixelMap(0.25, 0.25, -2.5, 0.0, (100, 40), (22, 10))
    mask = np.zeros((40, 100), bool)
    mask[17, 53] = True  # a single pixel
    m = mask_to_model(mask, pm)
    uv = pm.to_model(np.array([53.0, 17.0]))
    assert m[int(np.floor(uv[1] + 0.5)), int(np.floor(uv[0] + 0.5))]
    assert 1 <= np.count_nonzero(m) <= 4
    assert mask_to_model(None, pm).shape == (10, 22)
