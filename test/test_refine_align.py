"""Sparse global alignment on synthetic loops with a drifting frontend (a test double)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from recon_ros.geometry.transforms import invert_T, transform_points, umeyama
from recon_ros.refine.align import GlobalAligner, exact_delta, window_sets
from recon_ros.refine.schema import AlignConfig, RefineConfig
from recon_ros.refine.stages import Refiner

from refine_synth import BoxRoom, DriftingFrontendDouble, ate_rmse, camera_centres, circle_poses, make_keyframes

N_LOOP = 24


@pytest.fixture(scope="module")
def loop_truth():
    return make_keyframes(BoxRoom(seed=1), circle_poses(N_LOOP))


@pytest.fixture(scope="module")
def drift_run(loop_truth):
    drifted = DriftingFrontendDouble(rot_deg=0.4, trans_m=0.01, log_scale=0.006, depth_noise=0.02,
                                     pixel_noise=0.005, seed=0).apply(loop_truth)
    refiner = Refiner(RefineConfig())
    result = refiner.align(drifted)
    return drifted, refiner, result


def _loop_gap_error(poses, truth) -> float:
    """Error of the first-to-last keyframe displacement after a Sim(3) fit of the whole trajectory."""
    est = camera_centres(poses)
    gt = camera_centres(truth)
    S = umeyama(est, gt, with_scale=True)
    al = transform_points(S, est)
    return float(np.linalg.norm((al[-1] - al[0]) - (gt[-1] - gt[0])))


def test_drift_double_really_drifts(loop_truth):
    drifted = DriftingFrontendDouble(rot_deg=0.4, trans_m=0.01, log_scale=0.006, seed=0).apply(loop_truth)
    gt = [k.T_world_cam for k in loop_truth]
    assert ate_rmse([k.T_world_cam for k in drifted], gt) > 0.03
    # scale drift goes into the pointmaps: the last keyframe's depths are scaled against the truth
    ratio = np.nanmedian(drifted[-1].depth / loop_truth[-1].depth)
    assert abs(np.log(ratio)) > 0.05


@pytest.mark.slow
def test_alignment_reduces_ate_and_closes_loop(drift_run, loop_truth):
    drifted, _, res = drift_run
    gt = [k.T_world_cam for k in loop_truth]
    before = ate_rmse([k.T_world_cam for k in drifted], gt)
    after = ate_rmse([res.poses[k.id] for k in drifted], gt)
    assert res.changed, res.reason
    assert after <= 0.7 * before, (before, after)
    assert res.stats["loop_edges"] >= 1
    gap_before = _loop_gap_error([k.T_world_cam for k in drifted], gt)
    gap_after = _loop_gap_error([res.poses[k.id] for k in drifted], gt)
    assert gap_after < 0.5 * gap_before, (gap_before, gap_after)
    assert res.cost_after < res.cost_before
    assert res.reproj_median_after < 1.5


@pytest.mark.slow
def test_alignment_keeps_gauge_and_reports_corrections(drift_run):
    drifted, _, res = drift_run
    first = drifted[0]
    np.testing.assert_allclose(res.poses[first.id], first.T_world_cam, atol=1e-9)
    for kf in drifted:
        np.testing.assert_allclose(res.corrections[kf.id] @ kf.T_world_cam, res.poses[kf.id], atol=1e-8)


@pytest.mark.slow
def test_alignment_undoes_the_scale_drift(drift_run, loop_truth):
    """The corrected poses carry a Sim(3) scale that undoes the known pointmap scale drift: the
    pointmap scale times the pose scale returns towards 1 (a correction in the wrong direction
    or none at all leaves it at or beyond the drift)."""
    drifted, _, res = drift_run
    drift, left = [], []
    for kf, truth in zip(drifted, loop_truth):
        ratio = np.nanmedian(kf.depth / truth.depth)  # the double's scale drift of this keyframe
        s = np.cbrt(np.linalg.det(res.poses[kf.id][:3, :3]))
        drift.append(abs(np.log(ratio)))
        left.append(abs(np.log(s * ratio)))
    assert drift[-1] > 0.1  # the last keyframe drifted by more than 10 %
    assert left[-1] < 0.5 * drift[-1], (drift[-1], left[-1])
    assert np.mean(left) < 0.5 * np.mean(drift), (np.mean(drift), np.mean(left))


@pytest.mark.slow
def test_no_drift_does_not_get_worse(loop_truth):
    jittered = DriftingFrontendDouble(rot_deg=0.0, trans_m=0.0, log_scale=0.0, noise_scale=0.0, jitter_deg=0.3,
                                      jitter_m=0.01, depth_noise=0.02, pixel_noise=0.005, seed=5).apply(loop_truth)
    res = Refiner(RefineConfig()).align(jittered)
    gt = [k.T_world_cam for k in loop_truth]
    before = ate_rmse([k.T_world_cam for k in jittered], gt)
    after = ate_rmse([res.poses[k.id] for k in jittered], gt)
    assert after <= 1.05 * before, (before, after)


@pytest.mark.slow
def test_warm_start_keeps_solution_and_converges_fast(drift_run):
    drifted, refiner, first = drift_run
    kept = dict(refiner.corrections)
    second = refiner.align(drifted)
    # the first run converged: from its solution there is nothing significant left to gain, so
    # the accepted corrections are kept exactly
    assert not second.changed and "no significant improvement" in second.reason, second.reason
    for kf in drifted:
        np.testing.assert_allclose(second.poses[kf.id], first.poses[kf.id], atol=1e-9)
        np.testing.assert_array_equal(refiner.corrections[kf.id], kept[kf.id])
    # the warm start begins where the first run ended
    assert second.cost_before < 0.5 * first.cost_before
    assert second.cost_before <= 1.2 * first.cost_after


@pytest.mark.slow
def test_window_run_moves_only_the_window(drift_run):
    drifted, _, _ = drift_run
    cfg = RefineConfig()
    cfg.align.window = 6
    refiner = Refiner(cfg)
    res = refiner.align(drifted, window=True)
    assert res.changed, res.reason
    edges = list(refiner.graph.edges.values())
    free, frozen, _ = window_sets([k.id for k in drifted], [e for e in edges if e is not None], 6)
    assert set(free) <= {k.id for k in drifted[-6:]}
    for kf in drifted:
        if kf.id not in free:
            np.testing.assert_allclose(res.poses[kf.id], kf.T_world_cam, atol=1e-9)
    moved = [np.linalg.norm(res.poses[i][:3, 3] - drifted[i].T_world_cam[:3, 3]) for i in free]
    assert max(moved) > 1e-4


@pytest.mark.slow
def test_too_few_matches_leaves_poses_unchanged(drift_run):
    drifted, refiner, _ = drift_run
    edges = [e for e in refiner.graph.edges.values() if e is not None][:1]
    cfg = AlignConfig(min_total_matches=10_000)
    res = GlobalAligner(cfg).align(drifted, edges)
    assert not res.changed and "too few matches" in res.reason
    for kf in drifted:
        np.testing.assert_array_equal(res.poses[kf.id], kf.T_world_cam)


@pytest.mark.slow
def test_non_finite_matches_are_skipped(drift_run):
    drifted, refiner, _ = drift_run
    edges = [e for e in refiner.graph.edges.values() if e is not None]
    bad = [dataclasses.replace(e, X_a=np.full_like(e.X_a, np.nan)) if k % 2 == 0 else e for k, e in enumerate(edges)]
    res = GlobalAligner(AlignConfig()).align(drifted, bad)
    n_bad = sum(len(e) for k, e in enumerate(edges) if k % 2 == 0)
    assert res.stats["nonfinite_matches_skipped"] == n_bad
    assert res.changed and all(np.all(np.isfinite(T)) for T in res.poses.values())
    res = GlobalAligner(AlignConfig()).align(drifted, [dataclasses.replace(e, X_a=np.full_like(e.X_a, np.nan))
                                                        for e in edges])
    assert not res.changed and "too few matches" in res.reason


@pytest.mark.slow
def test_diverging_solve_is_rejected(drift_run, monkeypatch):
    """A solver step that makes things worse (simulated) must leave the input poses in place."""
    drifted, refiner, _ = drift_run
    edges = [e for e in refiner.graph.edges.values() if e is not None]
    aligner = GlobalAligner(AlignConfig(fine_iterations=0))

    def wrong(P, poses, free_mask, *args, **kwargs):
        out = poses.copy()
        out[free_mask, :3, 3] += np.random.default_rng(0).normal(0.0, 0.3, (int(free_mask.sum()), 3))
        return out, 1

    monkeypatch.setattr(aligner, "_lm", wrong)
    res = aligner.align(drifted, edges)
    assert not res.changed and "diverged" in res.reason and res.cost_after > res.cost_before
    for kf in drifted:
        np.testing.assert_array_equal(res.poses[kf.id], kf.T_world_cam)


def test_exact_delta_pivots_about_the_scene_point():
    p = np.array([0.3, -0.2, 2.0])
    D = exact_delta(np.array([0.1, -0.2, 0.05, 0, 0, 0, 0.0]), p, 1.0)
    np.testing.assert_allclose(transform_points(D, p[None])[0], p, atol=1e-12)
    D = exact_delta(np.array([0, 0, 0, 0.1, 0.2, 0.3, np.log(2.0)]), p, 2.0)
    np.testing.assert_allclose(transform_points(D, p[None])[0], p + 2.0 * np.array([0.1, 0.2, 0.3]), atol=1e-12)
    assert np.isclose(np.cbrt(np.linalg.det(D[:3, :3])), 2.0)
    np.testing.assert_allclose(invert_T(invert_T(D)), D, atol=1e-12)


@pytest.mark.slow
def test_focal_and_anchor_options_run_and_still_improve(drift_run, loop_truth):
    drifted, refiner, _ = drift_run
    edges = [e for e in refiner.graph.edges.values() if e is not None]
    cfg = AlignConfig(optimize_focal=True, optimize_anchors=True)
    res = GlobalAligner(cfg).align(drifted, edges)
    gt = [k.T_world_cam for k in loop_truth]
    assert res.changed, res.reason
    assert ate_rmse([res.poses[k.id] for k in drifted], gt) < 0.7 * ate_rmse([k.T_world_cam for k in drifted], gt)
    assert abs(res.focal_scale - 1.0) < 0.02  # the synthetic focal is exact
    assert res.anchor_offsets and all(np.all(np.isfinite(a)) for a in res.anchor_offsets.values())


@pytest.mark.gpu
def test_cuda_matches_cpu(drift_run):
    if not torch.cuda.is_available():
        pytest.fail("marked gpu but CUDA is not available")
    drifted, refiner, _ = drift_run
    edges = [e for e in refiner.graph.edges.values() if e is not None]
    cpu = GlobalAligner(AlignConfig(device="cpu")).align(drifted, edges)
    gpu = GlobalAligner(AlignConfig(device="cuda")).align(drifted, edges)
    for kf in drifted:
        np.testing.assert_allclose(gpu.poses[kf.id], cpu.poses[kf.id], atol=1e-6)


@pytest.mark.slow
def test_analytic_jacobians_match_finite_differences(drift_run):
    """The 3D and reprojection Jacobians against central differences of exact Sim(3) increments."""
    drifted, refiner, _ = drift_run
    edges = [e for e in refiner.graph.edges.values() if e is not None][:3]
    al = GlobalAligner(AlignConfig())
    poses = np.stack([k.T_world_cam for k in drifted])
    free = np.ones(len(drifted), bool)
    P = al._prepare(drifted, edges, poses, poses, free)
    alpha = torch.zeros(P.n_anchors, dtype=torch.float64)
    lf = torch.zeros((), dtype=torch.float64)
    for phase in ("coarse", "fine"):
        fns, _ = al._residual_fns(P, poses, alpha, lf, phase, 1.0)
        s, f = fns[0]
        r0, J, _, _ = f(True)
        a, b = int(P.ea[0]), int(P.eb[0])
        sel = (P.ea[s] == a) & (P.eb[s] == b)
        piv, Lp = al._pivots(P, poses)
        eps = 1e-6
        for side, k in ((0, a), (1, b)):
            for c in range(7):
                d = np.zeros(7)
                d[c] = eps
                plus, minus = poses.copy(), poses.copy()
                plus[k] = exact_delta(d, piv[k].numpy(), float(Lp[k])) @ poses[k]
                minus[k] = exact_delta(-d, piv[k].numpy(), float(Lp[k])) @ poses[k]
                rp = al._residual_fns(P, plus, alpha, lf, phase, 1.0)[0][0][1](False)[0]
                rm = al._residual_fns(P, minus, alpha, lf, phase, 1.0)[0][0][1](False)[0]
                num = ((rp - rm) / (2 * eps))[sel]
                ana = J[sel][:, :, 7 * side + c]
                scale = max(float(num.abs().max()), 1e-6)
                assert float((num - ana).abs().max()) < 1e-4 * scale + 1e-7, (phase, side, c)
