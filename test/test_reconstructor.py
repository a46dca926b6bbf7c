"""The Reconstructor wiring: frontend -> scale -> keyframes -> map -> trajectory."""
from __future__ import annotations

import numpy as np
import pytest

from recon_ros.config import set_value
from recon_ros.geometry.transforms import invert_T, make_T, transform_points
from recon_ros.io.synth import SynthConfig, iter_frames
from recon_ros.mapping.frame import Frame, FrameEstimate
from recon_ros.mapping.frontend import Frontend
from recon_ros.mapping.reconstructor import ReconConfig, Reconstructor
from recon_ros.geometry.camera import PixelMap, backproject_depth


def small_synth(n=16, **kw) -> list[Frame]:
    """A short stretch (an eighth) of the synthetic loop: a few cm per frame."""
    cfg = SynthConfig(width=160, height=120, n_frames=n, loops=0.125, **kw)
    return list(iter_frames(cfg))


@pytest.fixture(scope="module")
def frames():
    return small_synth()


class GroundTruthFrontend(Frontend):
    """Test double: posed pointmaps made from the synthetic ground truth, optionally shrunk by
    ``1/true_scale`` so that the world is not metric (like Spann3R's). Not a reconstruction."""

    name = "ground_truth"
    metric = False

    def __init__(self, true_scale: float = 1.0) -> None:
        self.true_scale = true_scale
        self.reset()

    def reset(self) -> None:
        self.T0_inv = None
        self.n = 0

    def stats(self) -> dict:
        return {"frames": self.n}

    def step(self, frame: Frame) -> list[FrameEstimate]:
        T_gt = frame.extras["T_world_cam_gt"]
        if self.T0_inv is None:
            self.T0_inv = invert_T(T_gt)
        T = self.T0_inv @ T_gt  # world = first camera
        T[:3, 3] /= self.true_scale
        pts_cam = backproject_depth(frame.extras["depth_gt"], frame.K) / np.float32(self.true_scale)
        pts = transform_points(T, pts_cam)
        self.n += 1
        h, w = pts.shape[:2]
        return [FrameEstimate(stamp_ns=frame.stamp_ns, index=frame.index, points=pts,
                              confidence=np.full((h, w), 5.0, np.float32), colors=frame.rgb,
                              T_world_cam=T, K_model=np.asarray(frame.K), pixel_map=PixelMap.identity(w, h),
                              valid=np.isfinite(pts[..., 2]), frame=frame)]


def dense_keyframes(frames, **params) -> Reconstructor:
    """The ground-truth test double through a Reconstructor that makes a keyframe every few
    frames (``params``: more dotted parameters to set)."""
    cfg = ReconConfig()
    for name, value in {"keyframe.max_interval_s": 0.1, "keyframe.min_interval_s": 0.0, **params}.items():
        set_value(cfg, name, value)
    recon = Reconstructor(cfg, frontend=GroundTruthFrontend())
    for f in frames:
        recon.process(f)
    return recon


def gt_relative(frames):
    T0_inv = invert_T(frames[0].extras["T_world_cam_gt"])
    return [T0_inv @ f.extras["T_world_cam_gt"] for f in frames]


def test_rgbd_reconstructor_tracks_and_maps(frames):
    cfg = ReconConfig()
    set_value(cfg, "frontend.name", "rgbd")
    recon = Reconstructor(cfg)
    for f in frames:
        res = recon.process(f)
        assert res.skipped is None
    recon.flush()
    traj = recon.trajectory()
    assert [s for s, _ in traj] == [f.stamp_ns for f in frames]
    gt = gt_relative(frames)
    err = [np.linalg.norm(T[:3, 3] - G[:3, 3]) for (_, T), G in zip(traj, gt)]
    assert max(err) < 0.03, err
    xyz, rgb, conf = recon.fused_cloud()
    assert len(xyz) > 1000 and rgb.dtype == np.uint8 and len(conf) == len(xyz)
    st = recon.stats()
    assert st["keyframes"] >= 1 and st["map_points"] == len(xyz) and st["scale_known"]
    recon.reset()
    assert recon.trajectory() == [] and len(recon.fused_cloud()[0]) == 0


def test_bad_frames_are_counted_and_skipped(frames):
    cfg = ReconConfig()
    set_value(cfg, "frontend.name", "rgbd")
    recon = Reconstructor(cfg)
    assert recon.process(frames[0]).skipped is None
    # time going backwards
    assert recon.process(frames[0]).skipped == "stamp_not_increasing"
    # depth not registered to the image
    f = frames[1]
    bad = Frame(stamp_ns=f.stamp_ns, rgb=f.rgb, K=f.K, depth=f.depth[:-1], index=1)
    assert recon.process(bad).skipped == "bad_frame"
    # the stream goes on
    assert recon.process(frames[2]).skipped is None
    st = recon.stats()
    assert st["skipped"] == 2 and st["skipped_bad_frame"] == 1 and st["frames"] == 2


def test_depth_scale_makes_a_non_metric_frontend_metric(frames):
    cfg = ReconConfig()
    set_value(cfg, "scale.mode", "depth")
    recon = Reconstructor(cfg, frontend=GroundTruthFrontend(true_scale=2.5))
    for f in frames:
        recon.process(f)
    assert recon.scale == pytest.approx(2.5, rel=0.01)
    gt = gt_relative(frames)
    for (_, T), G in zip(recon.trajectory(), gt):
        np.testing.assert_allclose(T[:3, 3], G[:3, 3], atol=0.02)
    # the map is metric too: its points lie on the true surfaces (compare with GT points)
    xyz, _, _ = recon.fused_cloud()
    ref = transform_points(invert_T(frames[0].extras["T_world_cam_gt"]) @ frames[5].extras["T_world_cam_gt"],
                           backproject_depth(frames[5].extras["depth_gt"], frames[5].K)).reshape(-1, 3)
    ref = ref[np.isfinite(ref[:, 2])]
    from scipy.spatial import cKDTree
    d, _ = cKDTree(xyz).query(ref[::50])
    assert np.median(d) < 0.03


def test_corrections_re_anchor_keyframes_and_the_frames_after_them(frames):
    recon = dense_keyframes(frames)
    kfs = recon.keyframes()
    assert len(kfs) >= 3
    target = kfs[1]
    before_traj = dict(recon.trajectory())
    before_cloud = recon.map.block_points_world(target.id).copy()
    other = recon.map.block_points_world(kfs[0].id).copy()
    C = make_T(np.eye(3), [0.5, 0.0, 0.0])
    assert recon.apply_corrections({target.stamp_ns: C @ target.T_world_cam}) == 1
    np.testing.assert_allclose(recon.map.block_points_world(target.id), before_cloud + [0.5, 0, 0], atol=1e-5)
    np.testing.assert_allclose(recon.map.block_points_world(kfs[0].id), other, atol=1e-6)
    after = dict(recon.trajectory())
    # frames between this keyframe and the next follow the correction; earlier frames do not
    moved = [s for s in after if np.linalg.norm(after[s][:3, 3] - before_traj[s][:3, 3]) > 0.4]
    assert target.stamp_ns in moved
    assert all(s >= target.stamp_ns for s in moved)
    assert all(s < kfs[2].stamp_ns for s in moved)
    # unknown stamps change nothing
    assert recon.apply_corrections({12345: np.eye(4)}) == 0


def test_evicted_keyframes_release_their_records(frames):
    """Under a small byte cap the map evicts old keyframes; the Reconstructor must not keep their
    images and pointmaps alive (memory stays bounded on long runs)."""
    recon = dense_keyframes(frames, **{"keyframe.max_interval_s": 0.05, "map.max_bytes": 1_500_000})
    ms = recon.map.stats()
    assert ms.evicted_keyframes > 0 and ms.bytes <= 1_500_000
    assert len(recon._keyframes) == len(recon.map) == len(recon.keyframes())
    assert len(recon.trajectory()) == len(frames)  # poses of every frame remain


def test_refined_depth_replaces_a_keyframe_by_stamp(frames):
    cfg = ReconConfig()
    recon = Reconstructor(cfg, frontend=GroundTruthFrontend())
    for f in frames[:4]:
        recon.process(f)
    kf = recon.keyframes()[0]
    before = recon.map.block_points_world(kf.id).copy()
    pts = kf.points_cam * np.float32(1.1)  # 10 % deeper along every ray
    assert recon.replace_depth_at(kf.stamp_ns, pts)
    after = recon.map.block_points_world(kf.id)
    cam = transform_points(invert_T(kf.T_world_cam), after)
    assert np.median(cam[:, 2]) == pytest.approx(1.1 * np.median(transform_points(invert_T(kf.T_world_cam), before)[:, 2]), rel=0.02)
    assert not recon.replace_depth_at(123, pts)  # no keyframe at that stamp
    from recon_ros.errors import UserInputError
    with pytest.raises(UserInputError, match="shape"):
        recon.replace_depth_at(kf.stamp_ns, pts[:-1])


def test_frame_corrections_are_interpolated_between_keyframes(frames):
    recon = dense_keyframes(frames)
    a, b = recon.keyframes()[1:3]
    before = dict(recon.trajectory())
    shift = lambda d: make_T(np.eye(3), [d, 0.0, 0.0])  # noqa: E731
    recon.apply_corrections({a.stamp_ns: shift(0.5) @ a.T_world_cam, b.stamp_ns: shift(1.0) @ b.T_world_cam})
    after = dict(recon.trajectory())
    between = [s for s in after if a.stamp_ns <= s < b.stamp_ns]
    assert len(between) >= 2
    for s in between:
        alpha = (s - a.stamp_ns) / (b.stamp_ns - a.stamp_ns)
        np.testing.assert_allclose(after[s][:3, 3] - before[s][:3, 3], [0.5 + 0.5 * alpha, 0, 0], atol=1e-6)
    np.testing.assert_allclose(after[b.stamp_ns][:3, 3] - before[b.stamp_ns][:3, 3], [1.0, 0, 0], atol=1e-6)
