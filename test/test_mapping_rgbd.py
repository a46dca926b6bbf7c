"""The rgbd frontend on a small analytic RGB-D loop (test helper ``mapping_scene``), bad inputs,
failure detection, and the rgbd -> keyframes -> fused map chain against the true surfaces."""
from __future__ import annotations

import numpy as np
import pytest

from mapping_scene import BoxRoom, camera, rgbd_sequence
from recon_ros.config import dump_yaml, from_dict, iter_params
from recon_ros.errors import UserInputError
from recon_ros.geometry.transforms import invert_T, make_T, rotation_angle_deg
from recon_ros.mapping.frame import Frame
from recon_ros.mapping.frontend import Frontend, final_estimates
from recon_ros.mapping.fused_map import KeyframeMap
from recon_ros.mapping.keyframes import KeyframeSelector
from recon_ros.mapping.rgbd import RGBDFrontend
from recon_ros.mapping.schema import MappingConfig

W, H, N = 128, 96, 48


@pytest.fixture(scope="module")
def sequence():
    return rgbd_sequence(W, H, N, noise=0.005)


@pytest.fixture(scope="module")
def tracked(sequence):
    room, traj, frames = sequence
    cfg = MappingConfig()
    cfg.frontend.name = "rgbd"
    fe = RGBDFrontend(cfg)
    ests = []
    for f in frames:
        ests += fe.step(f)
    ests += fe.flush()
    return fe, ests


def test_is_a_frontend_with_one_estimate_per_frame(tracked):
    fe, ests = tracked
    assert isinstance(fe, Frontend) and fe.name == "rgbd" and fe.metric
    assert [e.index for e in ests] == list(range(N))
    assert all(not e.provisional for e in ests)
    st = fe.stats()
    assert st["frames"] == N and st["failures"] == 0 and st["tracked"] == N


def test_trajectory_matches_ground_truth(sequence, tracked):
    _, traj, _ = sequence
    _, ests = tracked
    T0 = traj[0]  # the frontend world is the first camera frame
    pos_err = np.array([np.linalg.norm((T0 @ e.T_world_cam)[:3, 3] - traj[e.index][:3, 3]) for e in ests])
    rot_err = np.array([rotation_angle_deg((T0 @ e.T_world_cam)[:3, :3].T @ traj[e.index][:3, :3])
                        for e in ests])
    length = sum(np.linalg.norm(traj[i + 1][:3, 3] - traj[i][:3, 3]) for i in range(N - 1))
    ate = float(np.sqrt(np.mean(pos_err ** 2)))
    assert ate < 0.01 * length, (ate, length)
    assert rot_err.max() < 2.0


def test_pointmaps_are_metric_and_posed(sequence, tracked):
    room, traj, frames = sequence
    _, ests = tracked
    e = ests[N // 2]
    pts = e.points[e.valid]
    world = (pts.astype(np.float64) @ traj[0][:3, :3].T) + traj[0][:3, 3]
    d = room.distance_to_surface(world)
    assert np.median(d) < 0.01 and np.mean(d < 0.03) > 0.95
    # pixel geometry: seen from the true camera of that frame with the sensor's K, every point
    # lies on its own pixel (within tracking error) at the depth measured there
    f = frames[e.index]
    T_cam_world = invert_T(traj[e.index]) @ traj[0]  # frontend world -> true camera
    cam = pts.astype(np.float64) @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
    uv = cam[:, :2] / cam[:, 2:3] * np.diag(f.K)[:2] + f.K[:2, 2]
    vv, uu = np.nonzero(e.valid)
    assert np.abs(uv - np.stack([uu, vv], 1)).max() < 0.5
    assert np.abs(cam[:, 2] - f.depth[vv, uu]).max() < 0.01
    np.testing.assert_array_equal(e.K_model, f.K)
    assert e.confidence[e.valid].min() >= 1.0


def test_map_accuracy_through_keyframes(sequence, tracked):
    room, traj, _ = sequence
    _, ests = tracked
    cfg = MappingConfig()
    sel = KeyframeSelector(cfg.keyframe, depth_source="depth")
    m = KeyframeMap(cfg.map)
    for e in final_estimates(ests):
        kf = sel.consider(e, scale=1.0)
        if kf is not None:
            m.add_keyframe(kf)
    assert 4 <= len(m) <= N // 2
    xyz, rgb, conf = m.fused()
    world = xyz.astype(np.float64) @ traj[0][:3, :3].T + traj[0][:3, 3]
    d = room.distance_to_surface(world)
    assert np.mean(d) < 0.02 and np.median(d) < 0.01


def test_garbage_depth_is_detected_and_the_pose_held(sequence):
    _, traj, frames = sequence
    fe = RGBDFrontend()
    for f in frames[:5]:
        assert fe.step(f)[0].tracking_ok
    held = fe.step(frames[4])[0].T_world_cam  # same frame again: zero motion
    rng = np.random.default_rng(1)
    garbage = Frame(stamp_ns=frames[4].stamp_ns + 10_000_000, rgb=rng.integers(0, 255, (H, W, 3)).astype(np.uint8),
                    K=frames[5].K, depth=rng.uniform(0.3, 6.0, (H, W)).astype(np.float32), index=100)
    e = fe.step(garbage)[0]
    assert not e.tracking_ok and fe.stats()["failures"] == 1
    assert final_estimates([e]) == []
    np.testing.assert_allclose(e.T_world_cam, held, atol=1e-6)
    # an empty depth image is a counted failure too, not a crash
    empty = Frame(stamp_ns=frames[4].stamp_ns + 20_000_000, rgb=frames[6].rgb, K=frames[6].K,
                  depth=np.full((H, W), np.nan, np.float32), index=101)
    assert not fe.step(empty)[0].tracking_ok and fe.stats()["failures"] == 2
    # the next good frame is tracked again from the held pose
    ok = fe.step(frames[5])[0]
    assert ok.tracking_ok
    assert np.linalg.norm((traj[0] @ ok.T_world_cam)[:3, 3] - traj[5][:3, 3]) < 0.02


def test_missing_depth_or_intrinsics_is_a_user_error(sequence):
    _, _, frames = sequence
    f = frames[0]
    with pytest.raises(UserInputError, match="depth"):
        RGBDFrontend().step(Frame(stamp_ns=0, rgb=f.rgb, K=f.K))
    with pytest.raises(UserInputError, match="intrinsics"):
        RGBDFrontend().step(Frame(stamp_ns=0, rgb=f.rgb, depth=f.depth))
    with pytest.raises(UserInputError):
        RGBDFrontend().step(Frame(stamp_ns=0, rgb=f.rgb, K=f.K, depth=f.depth[:10]))


def test_nan_and_masked_depth_are_ignored(sequence):
    _, traj, frames = sequence
    fe = RGBDFrontend()
    rng = np.random.default_rng(2)
    for f in frames[:8]:
        depth = f.depth.copy()
        holes = rng.random(depth.shape) < 0.2
        depth[holes] = np.nan
        depth[:10, :10] = np.inf
        depth[-5:, -5:] = -1.0
        mask = np.zeros((H, W), bool)
        mask[40:60, 50:80] = True
        e = fe.step(Frame(stamp_ns=f.stamp_ns, rgb=f.rgb, K=f.K, depth=depth, mask=mask, index=f.index))[0]
        assert e.tracking_ok
        assert not e.valid[holes].any() and not e.valid[mask].any() and not e.valid[:10, :10].any()
        assert np.all(np.isfinite(e.points[e.valid]))
    err = np.linalg.norm((traj[0] @ e.T_world_cam)[:3, 3] - traj[7][:3, 3])
    assert err < 0.02


def test_frames_without_valid_depth_before_start_are_skipped(sequence):
    _, _, frames = sequence
    fe = RGBDFrontend()
    f = frames[0]
    assert fe.step(Frame(stamp_ns=0, rgb=f.rgb, K=f.K, depth=np.zeros((H, W), np.float32))) == []
    assert fe.stats()["skipped"] == 1
    assert fe.step(f)[0].tracking_ok
    fe.reset()
    assert fe.stats()["frames"] == 0


FREE_TEXT = {"map.device", "map.evict_directory", "map.load_path"}


def test_schema_round_trip_and_docs():
    cfg = from_dict(MappingConfig, {"frontend": {"name": "rgbd"}, "map": {"voxel_size_m": 0.05}})
    assert cfg.frontend.name == "rgbd" and cfg.map.voxel_size_m == 0.05
    specs = list(iter_params(MappingConfig))
    assert {s.name.split(".")[0] for s in specs} == {"mapping", "frontend", "tracking", "relocalization",
                                                     "scale", "keyframe", "map"}
    # every parameter is documented; numbers carry a range, choices their list; free text is
    # for paths and device names only
    assert all(s.doc for s in specs)
    assert all(s.choices or s.min is not None or s.type is bool or s.name in FREE_TEXT for s in specs), \
        [s.name for s in specs if not (s.choices or s.min is not None or s.type is bool)]
    assert "voxel_size_m: 0.02" in dump_yaml(MappingConfig)
    with pytest.raises(UserInputError):
        from_dict(MappingConfig, {"scale": {"mode": "magic"}})


@pytest.mark.slow
def test_photometric_term_tracks_along_a_textured_plane():
    """Sliding along one flat textured wall is unobservable for point-to-plane ICP alone."""
    room = BoxRoom(half=(50.0, 50.0, 2.0), boxes=[])
    w, h = 96, 72
    K = camera(w, h)
    traj = [make_T(np.eye(3), [0.02 * i, 0.01 * i, 0.0]) for i in range(25)]
    rng = np.random.default_rng(3)
    frames = []
    for i, T in enumerate(traj):
        rgb, d = room.render(K, T, w, h)
        frames.append(Frame(stamp_ns=i * 33_333_333, rgb=rgb, K=K, index=i,
                            depth=d + rng.normal(0, 0.005, d.shape).astype(np.float32)))
    errors = {}
    for weight in (0.0, 0.1):
        cfg = MappingConfig()
        cfg.tracking.photometric_weight = weight
        fe = RGBDFrontend(cfg)
        for f in frames:
            e = fe.step(f)[0]
        errors[weight] = np.linalg.norm(e.T_world_cam[:3, 3] - traj[-1][:3, 3])
    path = np.linalg.norm(traj[-1][:3, 3])
    assert errors[0.1] < 0.03 * path
    assert errors[0.0] > 3 * errors[0.1]


def test_an_intensity_residual_far_above_the_recent_frames_fails_tracking():
    """A pose slid along the walls fits the depth as well as the true one; only its intensity
    residual, several times that of the frames tracked before it, gives it away."""
    import dataclasses
    room = BoxRoom(half=(50.0, 50.0, 2.0), boxes=[])
    w, h = 96, 72
    K = camera(w, h)
    fe = RGBDFrontend(MappingConfig())
    for i in range(12):
        T = make_T(np.eye(3), [0.02 * i, 0.01 * i, 0.0])
        rgb, d = room.render(K, T, w, h)
        fe.step(Frame(stamp_ns=i * 33_333_333, rgb=rgb, K=K, index=i, depth=d))
    good = fe._last
    assert fe.status.state == "tracking" and np.isfinite(good.photometric_rms)
    typical = float(np.median(fe._photometric))
    assert fe._failure_reason(good, good.T_world_cam) is None
    slid = dataclasses.replace(good, photometric_rms=max(6 * typical, 0.07))
    assert slid.photometric_rms < fe.config.tracking.max_photometric_rms  # the absolute check passes it
    reason = fe._failure_reason(slid, good.T_world_cam)
    assert reason is not None and "median" in reason
    fe.config.tracking.photometric_ratio = 0.0  # off
    assert fe._failure_reason(slid, good.T_world_cam) is None


def test_noise_weighting_favours_the_precise_near_readings():
    """Depth noise growing with depth squared: weighting residuals by their inverse variance
    (``noise_power`` 2) tracks more accurately than weighting them alike."""
    from recon_ros.io.synth import SynthConfig, render_frame, make_scene
    from recon_ros.mapping.rgbd import gray01
    from recon_ros.mapping.schema import TrackingConfig
    from recon_ros.mapping.tracking import build_pyramid, track

    cfg = SynthConfig(width=160, height=120, n_frames=120)
    scene = make_scene(cfg)
    a, b = render_frame(scene, cfg, 10), render_frame(scene, cfg, 12)
    T_ab = invert_T(a.extras["T_world_cam_gt"]) @ b.extras["T_world_cam_gt"]  # b in a's frame
    tc = TrackingConfig(photometric_weight=0.0)  # geometry only: the weighting under test
    rng = np.random.default_rng(0)
    errors: dict[float, list] = {0.0: [], 2.0: []}
    for _ in range(6):
        pyr = []
        for f in (a, b):
            d = f.extras["depth_gt"].astype(np.float64)
            noisy = np.where(d > 0, d + rng.standard_normal(d.shape) * 0.015 * d ** 2, np.nan)
            pyr.append(build_pyramid(noisy.astype(np.float32), gray01(f.rgb), f.K, 1, 3))
        for p in errors:
            res = track(pyr[1], [(np.eye(4), pyr[0])], np.eye(4), tc, noise_power=p)
            errors[p].append(np.linalg.norm(res.T_world_cam[:3, 3] - T_ab[:3, 3]))
    assert np.mean(errors[2.0]) < 0.8 * np.mean(errors[0.0])
