"""Evaluation metrics against independently computed values on constructed cases."""
from __future__ import annotations

import numpy as np
import pytest

from recon_ros.errors import UserInputError
from recon_ros.eval.depth import depth_metrics, mean_depth_metrics
from recon_ros.eval.surface import (estimate_normals, evaluate_surface, icp_point_to_point,
                                    sample_mesh)
from recon_ros.eval.trajectory import associate, evaluate_trajectory
from recon_ros.geometry.transforms import make_T, rotvec_to_matrix, transform_points


def wavy_trajectory(n: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.linspace(0, 2 * np.pi, n)
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, 3] = np.stack([2 * np.cos(s), 1.5 * np.sin(s), 0.3 * np.sin(3 * s)], axis=1)
    T[:, :3, :3] = rotvec_to_matrix(np.stack([0.1 * np.sin(2 * s), 0.2 * np.cos(s), s], axis=1)
                                    + 0.01 * rng.normal(size=(n, 3)))
    return T


def apply_sim3(S: np.ndarray, poses: np.ndarray) -> np.ndarray:
    s = np.cbrt(np.linalg.det(S[:3, :3]))
    R = S[:3, :3] / s
    out = poses.copy()
    out[:, :3, :3] = R @ poses[:, :3, :3]
    out[:, :3, 3] = poses[:, :3, 3] @ S[:3, :3].T + S[:3, 3]
    return out


STAMPS = 1_000_000_000 + np.arange(80) * 33_333_333


def test_sim3_alignment_recovers_a_known_similarity():
    gt = wavy_trajectory()
    S = make_T(rotvec_to_matrix([0.3, -0.2, 1.0]), [4.0, -1.0, 2.0], scale=0.37)
    est = apply_sim3(S, gt)
    res = evaluate_trajectory(STAMPS, gt, STAMPS, est, align="sim3")
    rep = res.report
    assert rep.ate_trans_m.rmse < 1e-9
    assert rep.ate_rot_deg.max < 1e-6
    assert rep.scale == pytest.approx(1 / 0.37, rel=1e-9)
    assert rep.rpe_trans_m.max < 1e-9
    assert rep.est_length_m == pytest.approx(rep.gt_length_m, rel=1e-9)


def test_se3_alignment_of_a_scaled_trajectory_leaves_the_scale_error():
    gt = wavy_trajectory()
    s = 0.6
    S = make_T(rotvec_to_matrix([0.0, 0.4, -0.7]), [1.0, 2.0, 3.0], scale=s)
    est = apply_sim3(S, gt)
    res = evaluate_trajectory(STAMPS, gt, STAMPS, est, align="se3")
    x = gt[:, :3, 3]
    # rigid fit of s*x onto x: residual (1 - s)(x - mean)
    expected = abs(1 - s) * np.sqrt(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1)))
    assert res.report.ate_trans_m.rmse == pytest.approx(expected, rel=1e-6)
    assert res.report.scale == pytest.approx(1.0)
    # without alignment the error is the distance between the two trajectories
    raw = evaluate_trajectory(STAMPS, gt, STAMPS, est, align="none")
    direct = np.linalg.norm(est[:, :3, 3] - gt[:, :3, 3], axis=1)
    assert raw.report.ate_trans_m.rmse == pytest.approx(np.sqrt(np.mean(direct ** 2)))
    assert raw.report.ate_trans_m.max == pytest.approx(direct.max())


def test_rpe_of_a_linear_drift_and_a_yaw_drift():
    n = 50
    gt = np.tile(np.eye(4), (n, 1, 1))
    yaw = np.linspace(0, 3, n)
    gt[:, :3, :3] = rotvec_to_matrix(np.stack([np.zeros(n), np.zeros(n), yaw], axis=1))
    gt[:, :3, 3] = np.stack([np.cos(yaw), np.sin(yaw), np.zeros(n)], axis=1) * 2
    v = np.array([0.01, -0.02, 0.005])
    est = gt.copy()
    est[:, :3, 3] += np.arange(n)[:, None] * v
    stamps = STAMPS[:n]
    for delta in (1, 4):
        rep = evaluate_trajectory(stamps, gt, stamps, est, align="none", rpe_delta_frames=delta).report
        assert rep.rpe_trans_m.mean == pytest.approx(np.linalg.norm(v) * delta, rel=1e-9)
        assert rep.rpe_trans_m.std < 1e-9
        assert rep.rpe_rot_deg.max < 1e-9
        assert rep.rpe_trans_m.count == n - delta
    omega = 0.01  # rad per frame about z, commuting with the yaw-only ground truth
    est2 = gt.copy()
    est2[:, :3, :3] = gt[:, :3, :3] @ rotvec_to_matrix(np.outer(np.arange(n) * omega, [0, 0, 1]))
    rep = evaluate_trajectory(stamps, gt, stamps, est2, align="none", rpe_delta_frames=3).report
    assert rep.rpe_rot_deg.mean == pytest.approx(np.degrees(3 * omega), rel=1e-6)
    assert rep.rpe_rot_deg.std < 1e-6


def test_rpe_per_distance():
    n = 101
    gt = np.tile(np.eye(4), (n, 1, 1))
    gt[:, 0, 3] = np.linspace(0, 10, n)  # straight line, 0.1 m per frame
    est = gt.copy()
    est[:, 0, 3] *= 1.02  # 2 % too long: every 1 m window is 2 cm off
    stamps = 5_000_000_000 + np.arange(n) * 100_000_000
    rep = evaluate_trajectory(stamps, gt, stamps, est, align="none", rpe_distance_m=1.0).report
    assert rep.rpe_dist_trans_pct.mean == pytest.approx(2.0, rel=1e-6)
    assert rep.rpe_dist_trans_pct.count == n - 10
    assert rep.rpe_dist_rot_deg_per_m.max == pytest.approx(0.0, abs=1e-9)


def test_association_tolerance_and_uniqueness():
    a = np.array([0, 100, 200, 300, 400], dtype=np.int64)
    b = np.array([5, 98, 104, 260, 1000], dtype=np.int64)
    ia, ib = associate(a, b, max_dt_ns=10)
    assert list(zip(ia, ib)) == [(0, 0), (1, 1)]  # 104 is 4 from 100 but 98 is closer; 260 too far
    ia, ib = associate(a, b, max_dt_ns=50)
    assert list(zip(ia, ib)) == [(0, 0), (1, 1), (3, 3)]  # 200 is 60 from 260 and 96 from 104
    ia, ib = associate(a, b, max_dt_ns=100)
    # 200 and 300 both have 260 as nearest; the closer 300 keeps it
    assert list(zip(ia, ib)) == [(0, 0), (1, 1), (3, 3)]
    # unsorted estimate stamps associate the same way
    perm = np.array([3, 0, 4, 2, 1])
    ia2, ib2 = associate(a, b[perm], max_dt_ns=50)
    assert list(zip(ia2, perm[ib2])) == [(0, 0), (1, 1), (3, 3)]
    # two ground-truth stamps competing for one estimate: the closer one wins
    ia, ib = associate(np.array([0, 10]), np.array([6]), max_dt_ns=20)
    assert list(zip(ia, ib)) == [(1, 0)]
    gt = wavy_trajectory(5)
    with pytest.raises(UserInputError, match="same clock"):
        evaluate_trajectory(a, gt, a + 10**9, gt, max_dt_s=0.02)


def test_trajectory_subset_and_clock_offsets():
    gt = wavy_trajectory()
    est = gt[::3]
    jitter = np.random.default_rng(1).integers(-5_000_000, 5_000_000, size=len(est))
    rep = evaluate_trajectory(STAMPS, gt, STAMPS[::3] + jitter, est, align="se3").report
    assert rep.n_matched == len(est)
    assert rep.ate_trans_m.rmse < 1e-9


def grid_plane(n: int = 60, spacing: float = 0.02) -> np.ndarray:
    u, v = np.meshgrid(np.arange(n) * spacing, np.arange(n) * spacing)
    return np.stack([u.ravel(), v.ravel(), np.zeros(u.size)], axis=1)


def test_surface_offset_gives_accuracy_equal_to_the_offset():
    gt = grid_plane()
    pred = gt + [0.0, 0.0, 0.03]  # normal offset of 3 cm
    rep = evaluate_surface(pred, gt, threshold=0.05).report
    assert rep.accuracy_mean_m == pytest.approx(0.03, abs=1e-12)
    assert rep.accuracy_median_m == pytest.approx(0.03, abs=1e-12)
    assert rep.completion_mean_m == pytest.approx(0.03, abs=1e-12)
    assert rep.chamfer_m == pytest.approx(0.03, abs=1e-12)
    assert rep.fscore == 1.0
    assert rep.normal_consistency == pytest.approx(1.0, abs=1e-9)
    strict = evaluate_surface(pred, gt, threshold=0.02).report
    assert strict.precision == 0.0 and strict.recall == 0.0 and strict.fscore == 0.0


def test_identical_clouds_and_partial_prediction():
    rng = np.random.default_rng(0)
    gt = rng.uniform(-1, 1, size=(3000, 3))
    rep = evaluate_surface(gt.copy(), gt).report
    assert rep.fscore == 1.0 and rep.accuracy_mean_m == 0.0 and rep.completion_mean_m == 0.0
    # half of the ground truth predicted: precision 1, recall = fraction within threshold
    plane = grid_plane(50, 0.02)
    half = plane[plane[:, 0] < 0.49]
    rep = evaluate_surface(half, plane, threshold=0.05).report
    comp = np.maximum(plane[:, 0] - half[:, 0].max(), 0)
    assert rep.precision == 1.0
    assert rep.recall == pytest.approx(np.mean(comp < 0.05))
    assert rep.completion_mean_m == pytest.approx(comp.mean(), abs=1e-12)
    P, R = rep.precision, rep.recall
    assert rep.fscore == pytest.approx(2 * P * R / (P + R))
    # NaN points are dropped, not propagated
    with_nan = np.concatenate([half, [[np.nan, 0, 0]]])
    assert evaluate_surface(with_nan, plane).report.n_pred == len(half)


def test_pca_normals_and_normal_consistency():
    rng = np.random.default_rng(2)
    # points on a sphere: the PCA normal is radial
    v = rng.normal(size=(4000, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    n = estimate_normals(v, k=12)
    assert np.mean(np.abs(np.sum(n * v, axis=1))) > 0.995
    # tilted prediction normals lower the consistency by the cosine of the tilt
    gt = grid_plane(30)
    tilt = np.radians(30)
    wrong = np.tile([0.0, np.sin(tilt), np.cos(tilt)], (len(gt), 1))
    rep = evaluate_surface(gt, gt, pred_normals=wrong, gt_normals=np.tile([0, 0, 1.0], (len(gt), 1))).report
    assert rep.normal_consistency == pytest.approx(np.cos(tilt), abs=1e-9)


def test_icp_undoes_a_small_rigid_motion():
    rng = np.random.default_rng(3)
    # a non-symmetric scene: three faces of a box corner with random samples
    pts = rng.uniform(0, 1, size=(6000, 3))
    pts[:2000, 0] = 0
    pts[2000:4000, 1] = 0
    pts[4000:, 2] = 0
    pts[:, 0] *= 1.5
    T = make_T(rotvec_to_matrix([0.02, -0.03, 0.04]), [0.03, -0.02, 0.025])
    moved = transform_points(T, pts)
    res = icp_point_to_point(moved, pts, max_dist=0.1)
    np.testing.assert_allclose(res.T @ T, np.eye(4), atol=1e-6)
    assert res.converged and res.fitness == 1.0
    before = evaluate_surface(moved, pts).report
    after = evaluate_surface(moved, pts, icp=True).report
    assert before.accuracy_mean_m > 0.01
    assert after.accuracy_mean_m < 1e-5
    assert after.icp["converged"]


def test_mesh_sampling_is_uniform_over_area():
    # two triangles: a unit square at z = 0 and a 2x2 square (4x area) at z = 1
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                  [0, 0, 1], [2, 0, 1], [2, 2, 1], [0, 2, 1]], dtype=float)
    f = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    pts, normals = sample_mesh(v, f, 20000, seed=0)
    top = pts[:, 2] > 0.5
    assert top.mean() == pytest.approx(0.8, abs=0.01)
    assert np.all((pts[~top, :2] >= 0) & (pts[~top, :2] <= 1))
    assert np.allclose(np.abs(normals[:, 2]), 1.0)
    # uniform within the square: each quadrant gets a quarter
    q = (pts[top, 0] < 1) & (pts[top, 1] < 1)
    assert q.mean() == pytest.approx(0.25, abs=0.015)


def test_depth_metrics_on_known_arrays():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])  # 0 = invalid
    pred = np.array([[1.1, 1.0], [4.0, 3.0]])
    m = depth_metrics(pred, gt)
    p, g = np.array([1.1, 1.0, 4.0]), np.array([1.0, 2.0, 4.0])
    assert m["n_valid"] == 3
    assert m["abs_rel"] == pytest.approx(np.mean(np.abs(p - g) / g))
    assert m["sq_rel"] == pytest.approx(np.mean((p - g) ** 2 / g))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((p - g) ** 2)))
    assert m["rmse_log"] == pytest.approx(np.sqrt(np.mean(np.log(p / g) ** 2)))
    # ratios 1.1, 2.0, 1.0
    assert m["delta_1.25"] == pytest.approx(2 / 3)
    assert m["delta_1.25^2"] == pytest.approx(2 / 3)  # 2.0 > 1.5625
    assert m["delta_1.25^3"] == pytest.approx(2 / 3)  # 2.0 > 1.953
    assert m["delta_1.05"] == pytest.approx(1 / 3)
    # a mask removes pixels; scale-free prediction is fixed by median scaling
    m2 = depth_metrics(pred, gt, mask=np.array([[True, False], [True, True]]))
    assert m2["n_valid"] == 2
    scaled = depth_metrics(3.0 * gt + 0.0, gt, median_scaling=True)
    assert scaled["abs_rel"] == pytest.approx(0.0) and scaled["scale"] == pytest.approx(1 / 3)
    empty = depth_metrics(np.zeros((2, 2)), np.zeros((2, 2)))
    assert empty["n_valid"] == 0 and np.isnan(empty["abs_rel"])
    avg = mean_depth_metrics([m, m2, empty])
    assert avg["n_frames"] == 2 and avg["rmse"] == pytest.approx((m["rmse"] + m2["rmse"]) / 2)
    with pytest.raises(UserInputError):
        depth_metrics(np.zeros((2, 3)), np.zeros((2, 2)))


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserInputError, match="alignment"):
        evaluate_trajectory(STAMPS, wavy_trajectory(), STAMPS, wavy_trajectory(), align="sim2")
    with pytest.raises(UserInputError):
        evaluate_surface(np.zeros((0, 3)), grid_plane())
    with pytest.raises(UserInputError):
        evaluate_surface(np.zeros((5, 2)), grid_plane())


def test_depth_metrics_of_synthetic_sensor_noise():
    """The configured depth noise of a synthetic frame shows up as the RMSE it should have."""
    from recon_ros.io.synth import SynthConfig, make_scene, render_frame
    cfg = SynthConfig(width=120, height=90, n_frames=4, depth_noise_m=0.015, depth_dropout=0.1)
    frame = render_frame(make_scene(cfg), cfg, 1)
    m = depth_metrics(frame.depth, frame.extras["depth_gt"], mask=frame.depth > 0)
    assert m["rmse"] == pytest.approx(0.015, rel=0.05)
    assert m["valid_fraction"] == pytest.approx(0.9, abs=0.01)
    assert m["delta_1.25"] == 1.0
