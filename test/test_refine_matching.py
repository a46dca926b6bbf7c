"""SIFT matching, verification, retrieval and the keyframe graph on synthetic renders."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from recon_ros.geometry.camera import project_points
from recon_ros.geometry.transforms import invert_T, make_T, rotvec_to_matrix, transform_points
from recon_ros.refine.graph import KeyframeGraphBuilder, candidate_pairs, frustum_overlap
from recon_ros.refine.matching import (extract_features, mutual_ratio_matches, sample_pointmap, sim3_ransac,
                                       verify_pair)
from recon_ros.refine.retrieval import BowIndex, kmeans
from recon_ros.refine.schema import GraphConfig, MatchingConfig

from refine_synth import BoxRoom, DriftingFrontendDouble, circle_poses, make_keyframes


@pytest.fixture(scope="module")
def loop_kfs():
    return make_keyframes(BoxRoom(seed=1), circle_poses(24))


def _true_reprojection(kf_a, kf_b, uv_a, uv_b):
    X, ok = sample_pointmap(kf_a, uv_a)
    Xw = transform_points(kf_a.T_world_cam, X)
    uv, _ = project_points(transform_points(invert_T(kf_b.T_world_cam), Xw), kf_b.K_image)
    return np.linalg.norm(uv - uv_b, axis=1)[ok]


def test_verified_matches_agree_with_ground_truth_geometry(loop_kfs):
    a, b = loop_kfs[3], loop_kfs[4]
    fa, fb = extract_features(a.rgb), extract_features(b.rgb)
    m = verify_pair(a, b, fa, fb, MatchingConfig())
    assert m is not None and len(m) >= 50
    err = _true_reprojection(a, b, m.uv_a, m.uv_b)
    assert np.median(err) < 0.5 and np.percentile(err, 95) < 2.0
    # The RANSAC Sim(3) maps a's lifted points onto b's (identity scale for exact pointmaps)
    T_true = invert_T(b.T_world_cam) @ a.T_world_cam
    np.testing.assert_allclose(m.T_b_a[:3, 3], T_true[:3, 3], atol=0.05)
    assert abs(np.cbrt(np.linalg.det(m.T_b_a[:3, :3])) - 1.0) < 0.02


def test_pointmap_lifting_follows_the_pixel_map(loop_kfs):
    kf = loop_kfs[0]
    # pointmap pixel (10, 20) seen from the image: lifting its image position returns that point
    uv_img = kf.pixel_map.to_image(np.array([[10.0, 20.0], [50.0, 40.0]]))
    X, ok = sample_pointmap(kf, uv_img)
    assert ok.all()
    np.testing.assert_allclose(X, kf.points_cam[[20, 40], [10, 50]], rtol=1e-5)
    # image pixels outside the centre crop have no pointmap
    X, ok = sample_pointmap(kf, np.array([[2.0, 60.0]]))
    assert not ok[0]


def test_user_mask_removes_keypoints(loop_kfs):
    kf = loop_kfs[2]
    mask = np.zeros(kf.rgb.shape[:2], bool)
    mask[:, :80] = True
    f = extract_features(kf.rgb, mask)
    assert len(f) > 20
    assert np.all(f.uv[:, 0] >= 79.0)


def test_mutual_ratio_matches_properties():
    rng = np.random.default_rng(0)
    d1 = rng.random((60, 128)).astype(np.float32)
    d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    perm = rng.permutation(60)
    d2 = d1[perm] + 0.001 * rng.standard_normal((60, 128)).astype(np.float32)
    d2 /= np.linalg.norm(d2, axis=1, keepdims=True)
    pairs, ratios = mutual_ratio_matches(d1, d2, 0.8)
    assert len(pairs) == 60
    np.testing.assert_array_equal(perm[pairs[:, 1]], pairs[:, 0])
    assert np.all(ratios < 0.8)
    # duplicated descriptors are ambiguous and fail the ratio test
    pairs, _ = mutual_ratio_matches(d1, np.concatenate([d1, d1]), 0.8)
    assert len(pairs) == 0


def test_sim3_ransac_recovers_transform_with_outliers():
    rng = np.random.default_rng(1)
    Xa = rng.uniform(-1, 1, (200, 3)) + [0, 0, 3]
    T = make_T(rotvec_to_matrix([0.1, -0.2, 0.3]), [0.5, -0.1, 0.2], 1.3)
    Xb = transform_points(T, Xa)
    out = rng.choice(200, 60, replace=False)
    Xb[out] += rng.uniform(-1, 1, (60, 3))
    T_est, inl = sim3_ransac(Xa, Xb, 0.05, 128, rng)
    np.testing.assert_allclose(T_est, T, atol=1e-6)
    assert set(np.flatnonzero(~inl)) <= set(out) and inl.sum() >= 140


def test_kmeans_separates_clusters():
    rng = np.random.default_rng(2)
    centres = rng.uniform(-10, 10, (4, 8))
    x = np.concatenate([c + 0.1 * rng.standard_normal((50, 8)) for c in centres])
    found = kmeans(x, 4, seed=0)
    d = np.linalg.norm(found[:, None] - centres[None], axis=2)
    assert np.all(d.min(axis=1) < 0.1) and len(set(d.argmin(axis=1))) == 4


def test_retrieval_finds_the_loop(loop_kfs):
    feats = [extract_features(k.rgb) for k in loop_kfs]
    bow = BowIndex(vocabulary_size=64)
    assert bow.build_vocabulary([f.desc for f in feats])
    for k, f in zip(loop_kfs, feats):
        bow.add(k.id, f.desc)
    order = {k.id: i for i, k in enumerate(loop_kfs)}
    cands = bow.candidates(order, k=2, min_gap=8, min_score=0.0)
    # the last keyframes revisit the first ones: their best retrieval hits are at the loop start
    last = [(a, b) for a, b, _ in cands if b in (22, 23)]
    assert any(a in (0, 1) for a, _ in last), cands


def test_frustum_overlap_reflects_viewpoint_distance(loop_kfs):
    ov = frustum_overlap(loop_kfs[:8])
    assert np.all(np.diag(ov) == 0)
    assert ov[0, 1] > 0.5
    assert ov[0, 1] > ov[0, 3] > ov[0, 6]


def test_candidate_pairs_include_temporal_covisible_and_loops():
    cfg = GraphConfig(temporal_neighbours=2, covisible_neighbours=1, min_overlap=0.3, loop_min_gap=5)
    ids = list(range(10))
    ov = np.zeros((10, 10))
    ov[2, 6] = ov[6, 2] = 0.8
    pairs = candidate_pairs(ids, ov, cfg, loops=[(0, 9, 0.9)])
    assert pairs[(0, 1)] == "temporal" and pairs[(0, 2)] == "temporal" and (0, 3) not in pairs
    assert pairs[(2, 6)] == "covisible"
    assert pairs[(0, 9)] == "loop"


@pytest.mark.slow
def test_graph_closes_loop_despite_drift(loop_kfs):
    drifted = DriftingFrontendDouble(rot_deg=0.4, trans_m=0.01, log_scale=0.006, seed=0).apply(loop_kfs)
    builder = KeyframeGraphBuilder()
    edges, _, stats = builder.build(drifted)
    assert stats.loop_edges >= 1
    loops = [e for e in edges if e.kind == "loop"]
    for e in loops:
        err = _true_reprojection(loop_kfs[e.a], loop_kfs[e.b], e.uv_a, e.uv_b)
        assert np.median(err) < 1.0
    assert stats.verified == stats.pairs_tried > 0  # a fresh builder verifies every pair
    # cached: a second build verifies nothing and gives the same edges
    edges2, _, stats2 = builder.build(drifted)
    assert stats2.pairs_tried == stats.pairs_tried and stats2.verified == 0
    assert [(e.a, e.b, len(e)) for e in edges2] == [(e.a, e.b, len(e)) for e in edges]
    # one more keyframe: only pairs not seen before (its own, and any new loop candidates) are verified
    extra = replace(loop_kfs[5], id=max(k.id for k in drifted) + 1, stamp_ns=drifted[-1].stamp_ns + 1)
    n_cached = len(builder.edges)
    _, _, stats3 = builder.build(drifted + [extra])
    new_pairs = list(builder.edges)[n_cached:]
    assert stats3.verified == len(new_pairs) < stats3.pairs_tried
    assert any(extra.id in key for key in new_pairs)
