"""KeyframeMap: re-anchoring, confidence-weighted voxel fusion, caps, incremental consistency, masks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recon_ros.errors import UserInputError
from recon_ros.geometry.camera import PixelMap, backproject_depth, make_K
from recon_ros.geometry.transforms import make_T, rotvec_to_matrix, transform_points
from recon_ros.mapping.frame import Frame, FrameEstimate, Keyframe
from recon_ros.mapping.fused_map import KeyframeMap
from recon_ros.mapping.keyframes import build_keyframe
from recon_ros.mapping.schema import MapConfig


def _ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def _rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[:, 0] | (rgb[:, 1] << 8) | (rgb[:, 2] << 16)


def _kf(kf_id: int, pts: np.ndarray, colors: np.ndarray, conf: np.ndarray, T: np.ndarray,
        valid: np.ndarray | None = None) -> Keyframe:
    n = len(pts)
    K = make_K(10, 10, 0, 0)
    return Keyframe(id=kf_id, stamp_ns=kf_id, rgb=np.zeros((1, n, 3), np.uint8),
                    points_cam=pts.reshape(1, n, 3).astype(np.float32), confidence=conf.reshape(1, n),
                    colors=colors.reshape(1, n, 3), K=K, K_image=K, pixel_map=PixelMap.identity(n, 1),
                    T_world_cam=T, valid=np.ones((1, n), bool) if valid is None else valid.reshape(1, n))


def _grid_points(rng, n, offset):
    """Points on a 5 cm lattice (one per 1 mm voxel), shifted by ``offset``."""
    ijk = rng.choice(20 ** 3, size=n, replace=False)
    g = np.stack([ijk % 20, (ijk // 20) % 20, ijk // 400], axis=1)
    return g * 0.05 + 0.0123 + np.asarray(offset)


def test_reanchoring_moves_exactly_one_keyframe():
    rng = np.random.default_rng(0)
    cfg = MapConfig(voxel_size_m=0.001, block_voxel_fraction=0.0, min_confidence=0.0)
    m = KeyframeMap(cfg)
    poses, pts = {}, {}
    for k in range(3):
        p = _grid_points(rng, 200, (3.0 * k, 0, 0))
        ids = np.arange(200) + 1000 * k
        T = make_T(rotvec_to_matrix(rng.normal(0, 0.3, 3)), rng.normal(0, 1, 3))
        poses[k], pts[k] = T, p
        m.add_keyframe(_kf(k, p, _ids_to_rgb(ids), rng.uniform(1, 5, 200), T))
    before = dict(zip(*(lambda x, c: (_rgb_to_ids(c).tolist(), x))(*m.fused()[:2])))
    S = make_T(rotvec_to_matrix(np.array([0.1, -0.2, 0.3])), np.array([0.5, -1.0, 2.0]), scale=1.3)
    m.apply_correction(1, S)
    xyz, rgb, _ = m.fused()
    ids = _rgb_to_ids(rgb)
    assert sorted(ids.tolist()) == sorted(before)  # the same points, none lost or duplicated
    for k in range(3):
        sel = (ids >= 1000 * k) & (ids < 1000 * k + 200)
        T = S @ poses[k] if k == 1 else poses[k]
        expect = transform_points(T, pts[k][ids[sel] - 1000 * k])
        np.testing.assert_allclose(xyz[sel], expect, atol=1e-5)
        if k != 1:  # untouched keyframes are bit-identical to before
            np.testing.assert_array_equal(xyz[sel], np.array([before[i] for i in ids[sel]]))
    np.testing.assert_allclose(m.pose(1), S @ poses[1])


def _independent_fusion(world_pts, colors, conf, voxel):
    """Reference voxel fusion with a Python dict (tiny inputs only)."""
    acc: dict = {}
    for p, c, w in zip(world_pts, colors, conf):
        key = tuple(np.floor(p / voxel).astype(int))
        s = acc.setdefault(key, [np.zeros(3), np.zeros(3), 0.0, 0])
        s[0] += w * p
        s[1] += w * c
        s[2] += w
        s[3] += 1
    return {k: (v[0] / v[2], v[1] / v[2], v[2] / v[3]) for k, v in acc.items()}


def test_confidence_weighted_voxel_fusion_matches_reference():
    rng = np.random.default_rng(1)
    voxel = 0.1
    cfg = MapConfig(voxel_size_m=voxel, block_voxel_fraction=0.0, min_confidence=1.5)
    m = KeyframeMap(cfg)
    allp, allc, allw = [], [], []
    for k in range(2):
        p = rng.uniform(0.0, 0.3, (40, 3))  # 27 voxels at most: many shared across keyframes
        c = rng.integers(0, 256, (40, 3)).astype(np.uint8)
        w = rng.uniform(1.0, 4.0, 40)
        T = make_T(rotvec_to_matrix(rng.normal(0, 0.05, 3)), rng.normal(0, 0.02, 3))
        m.add_keyframe(_kf(k, p, c, w, T))
        keep = w >= 1.5
        allp.append(transform_points(T, p.astype(np.float32).astype(np.float64))[keep])
        allc.append(c[keep].astype(float))
        allw.append(w.astype(np.float32)[keep])
    ref = _independent_fusion(np.concatenate(allp), np.concatenate(allc), np.concatenate(allw), voxel)
    xyz, rgb, conf = m.fused()
    assert len(xyz) == len(ref)
    for p, c, w in zip(xyz, rgb, conf):
        # the fused point lies inside its voxel; find that voxel in the reference
        rp, rc, rw = ref[tuple(np.floor(p.astype(np.float64) / voxel).astype(int))]
        np.testing.assert_allclose(p, rp, atol=1e-5)
        assert np.all(np.abs(c.astype(float) - rc) <= 0.5 + 1e-6)
        assert abs(w - rw) < 1e-4


def test_block_downsampling_preserves_weighted_means():
    """With a keyframe grid nested in the world grid, stored averages fuse like raw pixels."""
    rng = np.random.default_rng(2)
    p = rng.uniform(0.0, 0.4, (500, 3))
    c = rng.integers(0, 256, (500, 3)).astype(np.uint8)
    w = rng.uniform(1.0, 3.0, 500)
    raw = KeyframeMap(MapConfig(voxel_size_m=0.1, block_voxel_fraction=0.0, min_confidence=0.0))
    ds = KeyframeMap(MapConfig(voxel_size_m=0.1, block_voxel_fraction=0.5, min_confidence=0.0))
    for m in (raw, ds):
        m.add_keyframe(_kf(0, p, c, w, np.eye(4)))
    a, b = raw.fused(), ds.fused()
    oa, ob = np.lexsort(a[0].T), np.lexsort(b[0].T)
    np.testing.assert_allclose(a[0][oa], b[0][ob], atol=1e-5)
    np.testing.assert_allclose(a[2][oa], b[2][ob], rtol=1e-5)
    assert np.all(np.abs(a[1][oa].astype(int) - b[1][ob].astype(int)) <= 1)
    assert ds.stats().stored_points < raw.stats().stored_points


def test_incremental_updates_equal_a_fresh_fusion():
    rng = np.random.default_rng(3)
    cfg = MapConfig(voxel_size_m=0.05, block_voxel_fraction=0.0, min_confidence=0.0)
    m = KeyframeMap(cfg)
    blocks = {}
    for k in range(6):
        p = rng.uniform(-0.5, 0.5, (300, 3))
        c = rng.integers(0, 256, (300, 3)).astype(np.uint8)
        w = rng.uniform(1, 3, 300)
        T = make_T(rotvec_to_matrix(rng.normal(0, 0.1, 3)), rng.normal(0, 0.1, 3))
        blocks[k] = [p, c, w, T]
        m.add_keyframe(_kf(k, p, c, w, T))
    for k in (1, 4):
        T = make_T(rotvec_to_matrix(rng.normal(0, 0.1, 3)), rng.normal(0, 0.1, 3), scale=0.9)
        m.set_pose(k, T)
        blocks[k][3] = T
    m.remove(2)
    del blocks[2]
    newp = rng.uniform(-0.5, 0.5, 300 * 3).reshape(1, 300, 3)
    m.replace_points(5, newp, np.ones((1, 300), bool))
    blocks[5][0] = newp.reshape(-1, 3)
    fresh = KeyframeMap(cfg)
    for k, (p, c, w, T) in blocks.items():
        fresh.add_keyframe(_kf(k, p, c, w, T))
    a, b = m.fused(), fresh.fused()
    assert len(a[0]) == len(b[0])
    oa, ob = np.lexsort(a[0].T), np.lexsort(b[0].T)
    np.testing.assert_allclose(a[0][oa], b[0][ob], atol=1e-5)
    np.testing.assert_allclose(a[2][oa], b[2][ob], rtol=1e-5)
    assert m.stats().keyframes == 5


def test_point_cap_keeps_the_most_confident_voxels():
    rng = np.random.default_rng(4)
    m = KeyframeMap(MapConfig(voxel_size_m=0.001, block_voxel_fraction=0.0, min_confidence=0.0,
                              max_points=150))
    p = _grid_points(rng, 400, (0, 0, 0))
    w = rng.uniform(1, 10, 400).astype(np.float32)
    m.add_keyframe(_kf(0, p, _ids_to_rgb(np.arange(400)), w, np.eye(4)))
    xyz, rgb, conf = m.fused()
    assert len(xyz) == 150
    np.testing.assert_allclose(np.sort(conf), np.sort(w)[-150:])
    assert m.stats().voxels == 400  # the cap applies to the output, the map keeps everything


def test_byte_cap_evicts_oldest_keyframes():
    rng = np.random.default_rng(5)
    cap = 60_000
    m = KeyframeMap(MapConfig(voxel_size_m=0.01, block_voxel_fraction=0.0, min_confidence=0.0,
                              max_bytes=cap))
    for k in range(20):
        p = rng.uniform(0, 1, (200, 3)) + k
        m.add_keyframe(_kf(k, p, np.zeros((200, 3), np.uint8), np.ones(200), np.eye(4)))
        assert m.nbytes <= cap
    ids = m.keyframe_ids()
    assert ids == list(range(20 - len(ids), 20)) and 0 < len(ids) < 20
    assert m.stats().evicted_keyframes == 20 - len(ids)
    xyz = m.fused()[0]
    assert xyz[:, 0].min() >= 20 - len(ids)  # only the kept keyframes' points remain


def test_masked_pixels_never_enter_the_map():
    h, w = 24, 32
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 200, (2 * h, 2 * w, 3)).astype(np.uint8)
    mask = np.zeros((2 * h, 2 * w), bool)
    mask[10:30, 20:44] = True
    rgb[mask] = (255, 0, 255)  # a colour no unmasked pixel has
    K_img = make_K(40.0, 40.0, w - 0.5, h - 0.5)
    pm = PixelMap(0.5, 0.5, 0.0, 0.0, (2 * w, 2 * h), (w, h))  # model = half resolution
    K = pm.K_to_model(K_img)
    depth = np.full((h, w), 2.0, np.float32) + rng.uniform(0, 0.2, (h, w)).astype(np.float32)
    pts = backproject_depth(depth, K)
    colors = rgb.reshape(h, 2, w, 2, 3).max(axis=(1, 3)).astype(np.uint8)  # any masked pixel -> magenta-ish
    T = make_T(rotvec_to_matrix(np.array([0.0, 0.2, 0.0])), np.array([0.1, 0.0, 0.0]))
    frame = Frame(stamp_ns=0, rgb=rgb, K=K_img, mask=mask)
    est = FrameEstimate(stamp_ns=0, index=0, points=transform_points(T, pts), confidence=np.full((h, w), 3.0, np.float32),
                        colors=colors, T_world_cam=T, K_model=K, pixel_map=pm, frame=frame)
    kf = build_keyframe(0, est)
    m = KeyframeMap(MapConfig(voxel_size_m=0.005, block_voxel_fraction=0.0))
    m.add_keyframe(kf)
    xyz, rgbf, _ = m.fused()
    assert len(xyz) > 0.5 * (h * w - 12 * 14)
    assert not np.any(np.all(rgbf == (255, 0, 255), axis=1) | ((rgbf[:, 0] == 255) & (rgbf[:, 2] == 255)))
    # every model pixel whose footprint touches the mask is invalid; pixels clear of it are valid
    vv, uu = np.mgrid[0:h, 0:w]
    touches = (2 * uu + 1 >= 20) & (2 * uu <= 43) & (2 * vv + 1 >= 10) & (2 * vv <= 29)
    assert not np.any(kf.valid & touches)
    far = (2 * uu + 1 < 18) | (2 * uu > 45) | (2 * vv + 1 < 8) | (2 * vv > 31)
    assert np.all(kf.valid[far])


def test_bad_pose_and_shapes_are_user_errors():
    m = KeyframeMap()
    with pytest.raises(UserInputError):
        m.add_points(0, np.zeros((4, 3)), np.zeros((4, 3)), np.ones(4), None, np.full((4, 4), np.nan))
    with pytest.raises(UserInputError):
        m.add_points(0, np.zeros((4, 3)), np.zeros((3, 3)), np.ones(4), None, np.eye(4))
    with pytest.raises(KeyError):
        m.set_pose(7, np.eye(4))


def test_reanchoring_is_deferred_until_the_cloud_is_needed():
    """set_pose only records the pose (corrections arrive in batches on the mapping thread);
    the voxels move when the cloud or the statistics are asked for, once, to the newest pose,
    and a keyframe removed meanwhile leaves exactly what it added."""
    rng = np.random.default_rng(1)
    cfg = MapConfig(voxel_size_m=0.001, block_voxel_fraction=0.0, min_confidence=0.0)
    m, fresh = KeyframeMap(cfg), KeyframeMap(cfg)
    kfs = [_kf(k, _grid_points(rng, 100, (2.0 * k, 0, 0)), _ids_to_rgb(np.arange(100) + 1000 * k),
               rng.uniform(1, 5, 100), np.eye(4)) for k in range(3)]
    for kf in kfs:
        m.add_keyframe(kf)
    sums = m._sums.copy()
    T1 = make_T(rotvec_to_matrix(np.array([0.0, 0.2, 0.0])), np.array([0.3, 0.0, 0.0]))
    T2 = make_T(rotvec_to_matrix(np.array([0.1, 0.0, 0.0])), np.array([0.0, -0.4, 1.0]))
    m.set_pose(1, T1)
    m.set_pose(2, T1)
    m.set_pose(1, T2)
    np.testing.assert_array_equal(m._sums, sums)  # nothing moved yet
    np.testing.assert_allclose(m.pose(1), T2)
    m.remove(2)  # stale when removed
    for kf, T in ((kfs[0], np.eye(4)), (kfs[1], T2)):
        fresh.add_keyframe(dataclasses.replace(kf, T_world_cam=T))
    a, b = m.fused(), fresh.fused()
    order_a, order_b = np.lexsort(a[0].T), np.lexsort(b[0].T)
    np.testing.assert_allclose(a[0][order_a], b[0][order_b], atol=1e-6)
    np.testing.assert_array_equal(a[1][order_a], b[1][order_b])
    assert m.stats().voxels == fresh.stats().voxels
