"""Re-fusion after a correction spread over time (``map.repose_budget_ms``): a correction
queues the moved frames, later frames each re-fuse a budget's worth, and the result is the
map an all-at-once re-fusion gives."""
from __future__ import annotations

import numpy as np
import torch

from recon_ros.geometry.transforms import make_T, rotvec_to_matrix
from recon_ros.mapping.surface_map import SurfaceMap
from test_mapping_tsdf import _cfg, _room_frames


def _drifted(cfg, frames) -> tuple[SurfaceMap, dict]:
    m = SurfaceMap(cfg)
    truth = {}
    for i, (rgb, depth, T) in enumerate(frames):
        drift = make_T(rotvec_to_matrix(np.array([0.0, 0.004 * i, 0.0])), np.array([0.006 * i, 0.0, 0.0]))
        m.integrate_depth(i, depth, rgb, np.ones_like(depth), _room_frames.K, drift @ T)
        truth[i] = T
    return m, truth


def _same_volume(a: SurfaceMap, b: SurfaceMap) -> None:
    n = a.volume.n
    assert b.volume.n == n
    oa, ob = torch.argsort(a.volume.keys[:n]), torch.argsort(b.volume.keys[:n])
    torch.testing.assert_close(b.volume.weight[:n][ob], a.volume.weight[:n][oa], atol=1e-4, rtol=1e-5)
    seen = a.volume.weight[:n][oa] > 1e-3
    torch.testing.assert_close(b.volume.tsdf[:n][ob][seen], a.volume.tsdf[:n][oa][seen], atol=1e-4, rtol=0)


def test_budgeted_repose_queues_and_ends_where_all_at_once_does():
    room, Kr, frames = _room_frames(12, 0.005)
    _room_frames.K = Kr
    cfg = _cfg(voxel_size_m=0.03, min_weight=2.0)
    now, truth = _drifted(cfg, frames)
    later, _ = _drifted(cfg, frames)
    assert now.repose(truth) == 11  # frame 0 had no drift
    assert now.pending == 0
    assert later.repose(truth, budget_ms=1e-3) == 11
    assert later.pending == 10  # one frame per call at least, the rest queued
    assert later.stats().frames_pending == 10
    for left in range(9, -1, -1):
        assert later.work(1e-3) == 1 and later.pending == left
    assert later.stats().frames_reposed == 11
    _same_volume(now, later)


def test_frames_fused_while_a_correction_is_queued():
    """New frames fused between the budgeted steps: the map ends as accurate as the one
    re-posed at once (within 5 %, same surface size)."""
    room, Kr, frames = _room_frames(18, 0.005)
    _room_frames.K = Kr
    cfg = _cfg(voxel_size_m=0.03, min_weight=2.0)
    now, truth = _drifted(cfg, frames[:12])
    later, _ = _drifted(cfg, frames[:12])
    now.repose(truth)
    later.repose(truth, budget_ms=1e-3)
    for i, (rgb, depth, T) in enumerate(frames[12:], start=12):
        for m in (now, later):
            m.integrate_depth(i, depth, rgb, np.ones_like(depth), Kr, T)
        later.work(1e-3)
    assert later.pending == 4
    later.work()
    a_now = float(np.mean(room.distance_to_surface(now.points()[0])))
    a_later = float(np.mean(room.distance_to_surface(later.points()[0])))
    assert abs(a_later - a_now) <= 0.05 * a_now, (a_later, a_now)
    n_now, n_later = len(now.points()[0]), len(later.points()[0])
    assert abs(n_later - n_now) <= 0.05 * n_now, (n_later, n_now)


def test_a_second_correction_replaces_the_queued_pose():
    """A queued frame corrected again before its turn is fused once, at the newest pose;
    corrected back to where it is fused, it leaves the queue untouched."""
    room, Kr, frames = _room_frames(6, 0.0)
    _room_frames.K = Kr
    cfg = _cfg(voxel_size_m=0.03)
    m, truth = _drifted(cfg, frames)
    fused = m.stored_poses()
    assert m.repose(truth, budget_ms=1e-3) == 5
    queued = list(m._pending)
    assert len(queued) == 4
    shift = make_T(np.eye(3), np.array([0.0, 0.0, 0.05]))
    assert m.repose({k: shift @ truth[k] for k in queued}, budget_ms=1e-3) == 4
    assert m.pending == 3  # re-targeted in place, one done
    back = list(m._pending)[:2]
    assert m.repose({k: fused[k] for k in back}, budget_ms=1e-3) == 0
    assert m.pending == 0  # the two left the queue, the budget took the last one
    reposed = m.stats().frames_reposed
    assert reposed == 1 + 1 + 1  # truth (first round), shifted (second), the last one
    poses = m.stored_poses()
    for k in back:
        assert np.allclose(poses[k], fused[k])
    for k in set(queued) - set(back):
        assert np.allclose(poses[k], shift @ truth[k])


def test_reconstructor_spreads_a_correction_over_the_next_frames():
    """apply_corrections only queues the re-fusion; every processed frame continues it within
    map.repose_budget_ms, and the end of the stream (flush) finishes it."""
    from mapping_scene import quick_rgbd_config
    from recon_ros.mapping.frame import Frame
    from recon_ros.mapping.reconstructor import Reconstructor

    room, Kr, frames = _room_frames(30, 0.0)
    recon = Reconstructor(quick_rgbd_config(**{"map.repose_budget_ms": 1e-3}))  # one frame per step
    for i, (rgb, depth, _) in enumerate(frames[:24]):
        recon.process(Frame(stamp_ns=(i + 1) * 33_000_000, rgb=rgb, K=Kr, depth=depth, index=i))
    kfs = recon.keyframes()
    assert len(kfs) >= 3
    shift = make_T(np.eye(3), np.array([0.0, 0.0, 0.05]))
    assert recon.apply_corrections({kf.stamp_ns: shift @ kf.T_world_cam for kf in kfs[1:]}) == len(kfs) - 1
    queued = recon.surface.pending
    assert queued > 2
    for i, (rgb, depth, _) in enumerate(frames[24:26], start=24):
        recon.process(Frame(stamp_ns=(i + 1) * 33_000_000, rgb=rgb, K=Kr, depth=depth, index=i))
    assert recon.surface.pending == queued - 2
    assert recon.stats()["surface_frames_pending"] == queued - 2
    recon.flush()
    assert recon.surface.pending == 0
    fused = recon.surface.stored_poses()
    for stamp, T in recon._frame_poses(True):
        if stamp in fused:
            np.testing.assert_allclose(fused[stamp], T, atol=1e-9)
