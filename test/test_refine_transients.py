"""Transient rejection, user masks and probation on synthetic scenes with a moving box."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.spatial import cKDTree
from scipy.stats import norm

from recon_ros.geometry.transforms import transform_points
from recon_ros.refine.schema import TransientConfig
from recon_ros.refine.transients import TransientFilter

from refine_synth import BoxRoom, DriftingFrontendDouble, make_keyframes, strafe_poses

N = 10


def _noise(kfs, seed=3):
    return DriftingFrontendDouble(rot_deg=0, trans_m=0, log_scale=0, noise_scale=0, depth_noise=0.01,
                                  pixel_noise=0.005, seed=seed).apply(kfs)


@pytest.fixture(scope="module")
def scene():
    poses = strafe_poses(N, step=0.2, target=[0, 0, 3.0])
    room = BoxRoom(seed=2)
    room.add_box([-0.25, -0.3, 2.0], [0.25, 0.3, 2.4], texture=6)
    offsets = [{0: np.array([-1.1 + 0.25 * k, 0.0, -0.3 * np.sin(k)])} for k in range(N)]
    moving = make_keyframes(room, poses, box_offsets_per_kf=offsets)
    static = make_keyframes(BoxRoom(seed=2), poses)
    return moving, static


def _completeness(point_sets, gt, tau=0.03):
    d, _ = cKDTree(np.concatenate(point_sets)).query(gt)
    return float(np.mean(d < tau))


def test_moving_object_is_removed_and_static_map_kept(scene):
    moving, static = scene
    noisy = _noise(moving)
    drop = TransientFilter().detect(noisy)
    obj_total = obj_kept = 0
    all_static, kept_static = [], []
    for km, ks, kn in zip(moving, static, noisy):
        obj = np.abs(km.depth - ks.depth) > 1e-3  # pixels that see the moving box
        obj_total += obj.sum()
        obj_kept += (obj & ~drop[kn.id].drop).sum()
        P = transform_points(km.T_world_cam, km.points_cam)
        all_static.append(P[~obj])
        kept_static.append(P[~obj & ~drop[kn.id].drop])
    assert obj_total > 10_000
    assert obj_kept / obj_total < 0.10, obj_kept / obj_total
    gt = np.concatenate([transform_points(k.T_world_cam, k.points_cam)[::2, ::2].reshape(-1, 3) for k in static])
    before = _completeness(all_static, gt)
    after = _completeness(kept_static, gt)
    assert before - after < 0.02, (before, after)


def test_static_scene_loses_almost_nothing(scene):
    _, static = scene
    noisy = _noise(static, seed=11)
    out = TransientFilter().detect(noisy)
    dropped = np.mean([m.drop[k.valid].mean() for k, m in zip(noisy, out.values())])
    assert dropped < 0.01
    # most points are confirmed by at least two other keyframes
    tentative = np.mean([m.tentative.mean() for m in out.values()])
    assert tentative < 0.5


def test_user_masks_are_always_dropped(scene):
    _, static = scene
    masks = {k.id: np.zeros(k.rgb.shape[:2], bool) for k in static}
    masks[static[3].id][40:80, 60:100] = True
    out = TransientFilter().detect(static, masks=masks)
    m = out[static[3].id]
    assert m.user.sum() > 0 and np.all(m.drop[m.user])
    # the user mask maps through the pixel map: masked model pixels lie inside the image rectangle
    ys, xs = np.nonzero(m.user)
    uv = static[3].pixel_map.to_image(np.stack([xs, ys], -1).astype(float))
    assert uv[:, 0].min() >= 59.5 and uv[:, 0].max() <= 99.5 and uv[:, 1].min() >= 39.5 and uv[:, 1].max() <= 79.5
    assert not out[static[4].id].user.any()


def _pixel_noise(kfs, sigma, seed=1):
    return DriftingFrontendDouble(rot_deg=0, trans_m=0, log_scale=0, noise_scale=0, depth_noise=0.0,
                                  pixel_noise=sigma, seed=seed).apply(kfs)


def _residual_quantile(p, sigmas, weights):
    """Quantile p of |r| when r = log z_point - log z_observed mixes N(0, 2 sigma^2) laws."""
    cdf = lambda x: sum(w * (2 * norm.cdf(x / (s * np.sqrt(2))) - 1) for s, w in zip(sigmas, weights))  # noqa: E731
    return brentq(lambda x: cdf(x) - p, 1e-6, 10.0)


@pytest.mark.parametrize("sigma, percentile", [(0.02, 70.0), (0.08, 70.0), (0.04, 90.0)])
def test_adaptive_threshold_is_the_residual_percentile(scene, sigma, percentile):
    """Per-pixel log-depth noise sigma in every keyframe gives residuals |N(0, 2 sigma^2)|: the
    threshold is their configured percentile (clamps opened so that they do not decide)."""
    _, static = scene
    f = TransientFilter(TransientConfig(histogram_decay=0.0, percentile=percentile,
                                        min_threshold=1e-3, max_threshold=1.0))
    f.detect(_pixel_noise(static, sigma))
    assert f.threshold == pytest.approx(_residual_quantile(percentile / 100, [sigma], [1.0]), rel=0.05)


def test_threshold_histogram_decays_across_calls_and_is_clamped(scene):
    _, static = scene
    tight, rough = _pixel_noise(static, 0.02), _pixel_noise(static, 0.08)
    # decay 0.5: the second call's histogram is half the first one's, half its own
    f = TransientFilter(TransientConfig(histogram_decay=0.5, min_threshold=1e-3, max_threshold=1.0))
    f.detect(tight)
    first = f.threshold
    f.detect(rough)
    assert first == pytest.approx(_residual_quantile(0.7, [0.02], [1.0]), rel=0.05)
    assert f.threshold == pytest.approx(_residual_quantile(0.7, [0.02, 0.08], [0.5, 0.5]), rel=0.05)
    # the default clamps: the 70th percentile of sigma = 0.15 noise (0.31) is cut to max_threshold
    cfg = TransientConfig()
    clamped = TransientFilter(TransientConfig(histogram_decay=0.0))
    clamped.detect(_pixel_noise(static, 0.15))
    assert clamped.threshold == cfg.max_threshold
    low = TransientFilter(TransientConfig(histogram_decay=0.0))
    low.detect(_pixel_noise(static, 0.005))  # percentile 0.007 lies below the lower clamp
    assert low.threshold == cfg.min_threshold


def test_probation_needs_two_confirmations(scene):
    _, static = scene
    # two keyframes only: every point has at most one confirming view, so all stay tentative
    out = TransientFilter().detect(static[:2])
    for k, m in zip(static[:2], out.values()):
        assert np.all(m.tentative[k.valid])
        assert np.all(m.n_agree <= 1)


def test_free_space_vote_is_one_rule_for_pixels_and_voxels():
    """The vote both the refiner (numpy, per pixel) and the volume (torch, per voxel) use:
    at least min_violations views see through, and more than vote_ratio of the decisive ones."""
    import torch

    from recon_ros.mapping.transience import free_space_vote
    violations = [0, 1, 1, 3, 2]
    decisive = [10, 10, 5, 10, 40]
    want = [False, False, True, True, False]  # 1 of 10 is not more than 10 %; 2 of 40 is 5 %
    got_np = free_space_vote(np.array(violations), np.array(decisive), 1, 0.1)
    got_t = free_space_vote(torch.tensor(violations), torch.tensor(decisive), 1, 0.1)
    assert got_np.tolist() == want and got_t.tolist() == want
    assert free_space_vote(np.array([1]), np.array([2]), 2, 0.1).tolist() == [False]  # min_violations
