"""ScaleEstimator: depth, odometry, fixed and none modes."""
from __future__ import annotations

import numpy as np

from recon_ros.geometry.camera import PixelMap, backproject_depth, make_K
from recon_ros.geometry.transforms import invert_T, make_T, rotvec_to_matrix, transform_points
from recon_ros.mapping.frame import Frame, FrameEstimate
from recon_ros.mapping.scale import ScaleEstimator, robust_median
from recon_ros.mapping.schema import ScaleConfig


def _estimate(rng, true_scale, T_metric, with_depth=True, pm=None, outlier_frac=0.15):
    """A frontend estimate at 1/true_scale of metric size, and its frame with noisy depth."""
    W, H = 64, 48
    pm = pm or PixelMap(0.5, 0.5, 0.0, 0.0, (W, H), (W // 2, H // 2))
    K_img = make_K(50.0, 50.0, W / 2 - 0.5, H / 2 - 0.5)
    K = pm.K_to_model(K_img)
    w, h = pm.model_size
    z = 1.5 + rng.uniform(0, 2.0, (h, w))
    pts_metric = backproject_depth(z.astype(np.float32), K)
    T_front = T_metric.copy()
    T_front[:3, 3] /= true_scale
    points = transform_points(T_front, pts_metric / true_scale)
    depth = np.kron(z, np.ones((2, 2))).astype(np.float32)  # image-resolution metric depth
    depth *= (1 + rng.normal(0, 0.01, depth.shape)).astype(np.float32)
    bad = rng.random(depth.shape) < outlier_frac
    depth[bad] = rng.uniform(0.2, 10.0, np.count_nonzero(bad))
    depth[rng.random(depth.shape) < 0.05] = np.nan
    depth[rng.random(depth.shape) < 0.05] = 0.0
    frame = Frame(stamp_ns=0, rgb=np.zeros((H, W, 3), np.uint8), K=K_img, depth=depth if with_depth else None)
    conf = rng.uniform(1.0, 5.0, (h, w)).astype(np.float32)
    return FrameEstimate(stamp_ns=0, index=0, points=points, confidence=conf,
                         colors=np.zeros((h, w, 3), np.uint8), T_world_cam=T_front, K_model=K,
                         pixel_map=pm, frame=frame)


def test_depth_mode_recovers_scale_with_noise_and_outliers():
    rng = np.random.default_rng(0)
    true_scale = 2.7
    est = ScaleEstimator(ScaleConfig(mode="depth", min_valid_pixels=100, min_confidence=1.5))
    for i in range(15):
        T = make_T(rotvec_to_matrix(rng.normal(0, 0.3, 3)), rng.normal(0, 1.0, 3))
        st = est.update(_estimate(rng, true_scale, T, outlier_frac=0.3 if i % 5 else 0.0))
    assert st.known and st.samples == 15
    assert abs(st.scale / true_scale - 1) < 0.01
    assert 0 < st.uncertainty < 0.02 * true_scale
    # a frame without depth gives no sample and does not disturb the estimate
    st2 = est.update(_estimate(rng, true_scale, np.eye(4), with_depth=False))
    assert st2.samples == 15 and est.stats()["skipped"] == 1


def test_depth_mode_respects_min_valid_pixels():
    rng = np.random.default_rng(1)
    est = ScaleEstimator(ScaleConfig(mode="depth", min_valid_pixels=10_000))
    st = est.update(_estimate(rng, 1.0, np.eye(4)))
    assert not st.known and st.scale == 1.0 and st.samples == 0


def test_robust_median_error_tracks_spread():
    rng = np.random.default_rng(2)
    x = 3.0 + rng.normal(0, 0.1, 400)
    med, err = robust_median(x)
    assert abs(med - 3.0) < 0.02
    # standard error of the median of N(0, 0.1): 0.1 * sqrt(pi / 2) / sqrt(400)
    assert abs(err - 0.1 * np.sqrt(np.pi / 2) / 20) < 0.002


def _odom_estimate(T_front, T_odom):
    h, w = 2, 2
    frame = Frame(stamp_ns=0, rgb=np.zeros((h, w, 3), np.uint8), T_odom_cam=T_odom)
    return FrameEstimate(stamp_ns=0, index=0, points=np.zeros((h, w, 3), np.float32),
                         confidence=np.ones((h, w), np.float32), colors=np.zeros((h, w, 3), np.uint8),
                         T_world_cam=T_front, K_model=np.eye(3), pixel_map=PixelMap.identity(w, h),
                         frame=frame)


def test_odometry_mode_recovers_scale_and_ignores_tiny_motion():
    rng = np.random.default_rng(3)
    true_scale = 0.4
    # the frontend world is the odometry world rotated, shifted and shrunk by 1/true_scale
    G = make_T(rotvec_to_matrix(np.array([0.3, -1.0, 0.5])), np.array([2.0, 1.0, -3.0]))
    est = ScaleEstimator(ScaleConfig(mode="odometry", min_motion_m=0.05))
    pos = np.zeros(3)
    for i in range(120):
        if i % 3 == 0:
            pos = pos + rng.normal(0, 0.1, 3)  # a real motion
        else:
            pos = pos + rng.normal(0, 0.001, 3)  # standing still, tiny odometry jitter
        T_odom = make_T(rotvec_to_matrix(rng.normal(0, 0.5, 3)), pos)
        T_front = invert_T(G) @ T_odom
        T_front[:3, 3] /= true_scale
        T_front[:3, 3] += rng.normal(0, 0.002, 3)  # frontend pose noise, large vs the jitter
        st = est.update(_odom_estimate(T_front, T_odom))
    assert st.known and st.samples >= 25
    assert abs(st.scale / true_scale - 1) < 0.02


def test_fixed_and_none_modes():
    rng = np.random.default_rng(4)
    e = _estimate(rng, 2.0, np.eye(4))
    st = ScaleEstimator(ScaleConfig(mode="fixed", fixed_value=0.25)).update(e)
    assert st.known and st.scale == 0.25 and st.uncertainty == 0.0
    st = ScaleEstimator(ScaleConfig(mode="none")).update(e)
    assert not st.known and st.scale == 1.0
