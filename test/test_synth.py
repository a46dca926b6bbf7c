"""Synthetic scenes: geometry of the rendered depth, trajectory, textures, noise, ground truth."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recon_ros.config import add_cli_args, apply_cli_args, iter_params
from recon_ros.errors import UserInputError
from recon_ros.io.ply import read_ply
from recon_ros.io.trajectory import read_tum
from recon_ros.geometry.camera import backproject_depth
from recon_ros.geometry.transforms import transform_points
from recon_ros.io.synth import (SynthConfig, export_ground_truth, intrinsics, iter_frames,
                                make_scene, render_frame, trajectory)

SMALL = dict(width=64, height=48, n_frames=24)


def surface_distance(scene, pts: np.ndarray, t: float = 0.0) -> np.ndarray:
    """Distance of world points to the nearest analytic surface, computed here from the solids'
    parameters (independently of the ray caster)."""
    dists = []
    offsets = scene.offsets(t)
    for solid, off in zip(scene.solids, offsets):
        d = solid.describe()
        if d["kind"] == "room":
            lo, hi = np.array(d["lo"]), np.array(d["hi"])
            dists.append(np.minimum(np.abs(pts - lo), np.abs(pts - hi)).min(axis=1))
        elif d["kind"] == "box":
            c = np.array(d["center"]) + off
            yaw = d["yaw"]
            R = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
            q = np.abs((pts - c) @ R) - np.array(d["half"])
            dists.append(np.abs(np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)))
        elif d["kind"] == "sphere":
            dists.append(np.abs(np.linalg.norm(pts - (np.array(d["center"]) + off), axis=1) - d["radius"]))
        elif d["kind"] == "cylinder":
            c = np.array(d["center"]) + off
            r = np.hypot(pts[:, 0] - c[0], pts[:, 1] - c[1])
            zc, hz = 0.5 * (d["z0"] + d["z1"]), 0.5 * (d["z1"] - d["z0"])
            q = np.stack([r - d["radius"], np.abs(pts[:, 2] - zc) - hz], axis=1)
            dists.append(np.abs(np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)))
    return np.min(np.stack(dists), axis=0)


def backproject_world(depth: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray) -> np.ndarray:
    """World points (M, 3) of the valid pixels of a z-depth map."""
    pts = backproject_depth(depth, K).reshape(-1, 3)
    pts = pts[np.isfinite(pts[:, 2])].astype(np.float64)
    return transform_points(T_world_cam, pts)


def world_points(frame) -> np.ndarray:
    return backproject_world(frame.extras["depth_gt"], frame.K, frame.extras["T_world_cam_gt"])


def test_depth_lies_on_the_analytic_surfaces():
    cfg = SynthConfig(**SMALL, dynamic_object=True)
    scene = make_scene(cfg)
    for frame in iter_frames(cfg, scene):
        if frame.index % 3:
            continue
        assert np.all(frame.extras["depth_gt"] > 0), "the closed room must be hit by every ray"
        pts = world_points(frame)
        d = surface_distance(scene, pts, frame.extras["time_s"])
        assert d.max() < 1e-4, f"frame {frame.index}: a back-projected point is {d.max():.2e} m off"
    # objects are really seen (not just walls): some pixel is far from every wall plane
    any_obj = False
    for frame in iter_frames(cfg, scene):
        pts = world_points(frame)
        lo, hi = scene.room.lo, scene.room.hi
        wall = np.minimum(np.abs(pts - lo), np.abs(pts - hi)).min(axis=1)
        any_obj |= bool(np.any(wall > 0.05))
    assert any_obj


def test_depth_is_z_depth_along_pixel_rays():
    """A single pixel's depth equals the analytic ray-plane distance to a wall it faces."""
    cfg = SynthConfig(width=33, height=25)
    scene = make_scene(cfg)
    K = intrinsics(cfg)
    # camera in the room centre looking along +x at the x = hi wall, level
    T = np.eye(4)
    T[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)  # optical -> z-up world
    T[:3, 3] = [0.0, 0.0, 1.4]
    _, depth, _ = scene.render(T, K, cfg.width, cfg.height)
    centre = depth[12, 16]
    assert centre == pytest.approx(cfg.room_length_m / 2, abs=1e-5)
    # z-depth is constant over a fronto-parallel wall (where no object is in front)
    pts = backproject_world(depth, K, T)
    on_wall = np.abs(pts[:, 0] - cfg.room_length_m / 2) < 1e-6
    assert on_wall.mean() > 0.3
    np.testing.assert_allclose(depth.ravel()[on_wall], cfg.room_length_m / 2, atol=1e-5)


def test_trajectory_loops_and_stays_clear_of_objects():
    cfg = SynthConfig(n_frames=90)
    T = trajectory(cfg)
    assert T.shape == (90, 4, 4)
    R = T[:, :3, :3]
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-10)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-10)
    steps = np.linalg.norm(np.diff(T[:, :3, 3], axis=0), axis=1)
    closing = np.linalg.norm(T[-1, :3, 3] - T[0, :3, 3])
    assert closing < 2 * steps.mean(), "the loop must end near its start"
    assert steps.max() < 1.5 * steps.min() + 1e-9, "smooth, near-constant speed"
    heights = T[:, 2, 3]
    assert heights.max() - heights.min() > 0.1
    # optical z (viewing direction) has a pitch that varies and a roughly horizontal heading
    fwd = R[:, :, 2]
    pitch = np.degrees(np.arcsin(fwd[:, 2]))
    assert pitch.max() - pitch.min() > 5
    # y (down) axis points downwards in a z-up world
    assert np.all(R[:, 2, 1] < 0)
    # the camera never enters an object: every solid stays > 0.3 m away
    scene = make_scene(cfg)
    assert surface_distance(scene, T[:, :3, 3]).min() > 0.3
    for solid in scene.solids[1:]:
        assert not np.any(solid.blocks(T[:, :3, 3], 0.0))


def test_textures_are_rich_and_view_consistent():
    cfg = SynthConfig(width=160, height=120, n_frames=40)
    scene = make_scene(cfg)
    f0 = render_frame(scene, cfg, 0)
    img = f0.rgb.astype(np.float64)
    gy, gx = np.gradient(img.mean(axis=2))
    assert np.mean(np.hypot(gx, gy)) > 3.0, "image gradient energy too low for matching"
    assert img.std(axis=(0, 1)).min() > 15, "each colour channel must vary"
    # colourful: chroma (max - min channel) is substantial on average
    assert np.mean(img.max(axis=2) - img.min(axis=2)) > 30
    # not repeating: two distant patches of the same wall are not correlated
    a, b = img[10:40, 10:40].mean(axis=2), img[70:100, 110:140].mean(axis=2)
    corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert abs(corr) < 0.5
    # the same surface point has the same colour in two views (up to shading and level of detail)
    f1 = render_frame(scene, cfg, 1)
    pts = world_points(f0)
    T1 = f1.extras["T_world_cam_gt"]
    pc = transform_points(np.linalg.inv(T1), pts)
    uv = pc[:, :2] / pc[:, 2:] * [f1.K[0, 0], f1.K[1, 1]] + [f1.K[0, 2], f1.K[1, 2]]
    ui, vi = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    inside = (ui >= 0) & (ui < cfg.width) & (vi >= 0) & (vi < cfg.height)
    d1 = f1.extras["depth_gt"][vi.clip(0, cfg.height - 1), ui.clip(0, cfg.width - 1)]
    vis = inside & (np.abs(d1 - pc[:, 2]) < 0.01)
    assert vis.mean() > 0.5
    c0 = f0.rgb.reshape(-1, 3)[np.isfinite(backproject_depth(f0.extras["depth_gt"], f0.K).reshape(-1, 3)[:, 2])]
    c1 = f1.rgb[vi[vis], ui[vis]].astype(float)
    err = np.abs(c0[vis].astype(float) - c1).mean()
    spread = np.abs(c0[vis].astype(float) - c0[vis].astype(float).mean(axis=0)).mean()
    assert err < 0.5 * spread


def test_dynamic_object_mask():
    cfg = SynthConfig(**SMALL, dynamic_object=True)
    scene = make_scene(cfg)
    static = make_scene(SynthConfig(**SMALL))
    seen = 0
    masks = []
    for frame in iter_frames(cfg, scene):
        m = frame.extras["dynamic_mask"]
        masks.append(m)
        if not m.any():
            continue
        seen += 1
        t = frame.extras["time_s"]
        pts = world_points(frame).reshape(cfg.height, cfg.width, 3)
        box = scene.solids[scene.dynamic_index].describe()
        c = np.array(box["center"]) + scene.motion.offset(t)
        q = np.abs(pts - c) - np.array(box["half"])  # the moving box is axis-aligned
        dist = np.abs(np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(axis=-1), 0))
        assert dist[m].max() < 1e-4, "masked pixels lie on the moving box"
        # without the moving object those pixels see something farther away
        _, d_static, _ = static.render(frame.extras["T_world_cam_gt"], frame.K, cfg.width, cfg.height, t)
        assert np.all(d_static[m] > frame.extras["depth_gt"][m])
        np.testing.assert_array_equal(d_static[~m], frame.extras["depth_gt"][~m])
    assert seen >= 2, "the moving box must be visible in several frames"
    # it moves: the mask changes between frames where it is seen
    seen_masks = [m for m in masks if m.any()]
    assert any(not np.array_equal(seen_masks[0], m) for m in seen_masks[1:])


def test_seeds_are_deterministic_and_distinct():
    cfg = SynthConfig(**SMALL, seed=3, depth_noise_m=0.01, image_noise_std=2.0, depth_dropout=0.1)
    a = render_frame(make_scene(cfg), cfg, 5)
    b = render_frame(make_scene(cfg), cfg, 5)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)
    other = SynthConfig(**dict(SMALL, seed=4), depth_noise_m=0.01)
    c = render_frame(make_scene(other), other, 5)
    assert not np.array_equal(a.rgb, c.rgb)
    # the moving object does not change the static scene
    dyn = SynthConfig(**SMALL, seed=3, dynamic_object=True)
    sa, sb = make_scene(cfg), make_scene(dyn)
    np.testing.assert_array_equal(sa.palettes, sb.palettes)
    assert [s.describe() for s in sa.solids] == [s.describe() for s in sb.solids[:-1]]


@pytest.mark.parametrize("model", ["constant", "linear", "quadratic"])
def test_depth_noise_statistics(model):
    sigma = 0.02
    cfg = SynthConfig(width=160, height=120, n_frames=10, depth_noise_m=sigma,
                      depth_noise_model=model, depth_dropout=0.2)
    scene = make_scene(cfg)
    frame = render_frame(scene, cfg, 3)
    gt = frame.extras["depth_gt"].astype(np.float64)
    d = frame.depth.astype(np.float64)
    valid = d > 0
    assert abs((~valid).mean() - 0.2) < 0.01, "dropout fraction as configured"
    expected = sigma * {"constant": np.ones_like(gt), "linear": gt, "quadratic": gt ** 2}[model]
    z = (d - gt)[valid] / expected[valid]
    assert abs(z.mean()) < 0.02
    assert abs(z.std() - 1.0) < 0.02
    assert frame.depth.dtype == np.float32


def test_frames_carry_the_contract():
    cfg = SynthConfig(**SMALL, odometry_prior=True, depth_max_m=2.5)
    frames = list(iter_frames(cfg))
    assert len(frames) == cfg.n_frames
    stamps = np.array([f.stamp_ns for f in frames])
    np.testing.assert_allclose(np.diff(stamps), 1e9 / 30, atol=1)
    for f in frames[:3]:
        f.validate()
        assert f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8
        assert f.depth.shape == (48, 64)
        np.testing.assert_array_equal(f.T_odom_cam, f.extras["T_world_cam_gt"])
        assert np.all(f.depth[f.extras["depth_gt"] > 2.5] == 0)
    K = frames[0].K
    assert K[0, 0] == pytest.approx(32 / np.tan(np.radians(35)))
    assert (K[0, 2], K[1, 2]) == (31.5, 23.5)


def test_config_is_a_schema_with_cli_flags():
    import argparse
    names = {s.name for s in iter_params(SynthConfig)}
    assert {"seed", "width", "n_frames", "depth_noise_m", "dynamic_object"} <= names
    p = argparse.ArgumentParser()
    add_cli_args(p, SynthConfig)
    cfg = apply_cli_args(SynthConfig(), p.parse_args(["--seed", "7", "--depth_noise_model", "quadratic"]))
    assert cfg.seed == 7 and cfg.depth_noise_model == "quadratic"
    with pytest.raises(UserInputError):
        apply_cli_args(SynthConfig(), p.parse_args(["--depth_noise_model", "cubic"]))


def test_bad_layouts_and_poses_are_user_errors():
    with pytest.raises(UserInputError, match="path_radius"):
        make_scene(SynthConfig(path_radius_m=3.0))
    cfg = SynthConfig(**SMALL)
    scene = make_scene(cfg)
    T = np.eye(4)
    T[:3, 3] = [10.0, 0.0, 1.0]
    with pytest.raises(UserInputError, match="outside"):
        scene.render(T, intrinsics(cfg), 8, 8)


def test_surface_samples_and_ground_truth_export(tmp_path):
    cfg = SynthConfig(width=64, height=48, n_frames=12)
    scene = make_scene(cfg)
    surf = scene.sample_surface(0.05)
    d = surface_distance(scene, surf.points)
    assert d.max() < 1e-9
    np.testing.assert_allclose(np.linalg.norm(surf.normals, axis=1), 1.0, atol=1e-9)
    # normals face the free space: a small step along them leaves every solid
    out = surf.points + 0.0125 * surf.normals
    room = scene.room
    assert np.all(room.contains_interior(out, 0.0))
    for s in scene.solids[1:]:
        assert not np.any(s.blocks(out, 0.0))
    # nothing hidden by contact: no sample sits inside another solid or under an object
    for s in scene.solids[1:]:
        hidden = s.blocks(surf.points, -1e-3)
        assert not np.any(hidden)
    paths = export_ground_truth(scene, cfg, tmp_path, spacing=0.05)
    ply = read_ply(paths["surface"])
    assert 0 < len(ply.points) < len(surf.points)  # only what the cameras saw
    assert ply.normals is not None and ply.colors is not None
    assert surface_distance(scene, ply.points).max() < 1e-5  # float32 storage
    traj = read_tum(paths["trajectory"])
    stamps, poses = traj.stamps_ns, traj.poses
    np.testing.assert_allclose(poses, trajectory(cfg), atol=1e-8)
    assert stamps[0] == cfg.start_stamp_ns
    meta = json.loads(paths["meta"].read_text())
    np.testing.assert_allclose(meta["K"], intrinsics(cfg))
    assert meta["config"]["seed"] == cfg.seed and meta["width"] == 64
    assert not list(tmp_path.glob(".*partial"))


def test_sift_matches_between_views_are_geometrically_correct():
    """The textures support feature matching: SIFT matches agree with the true geometry."""
    import cv2
    from recon_ros.geometry.camera import project_points
    from recon_ros.geometry.transforms import invert_T
    cfg = SynthConfig(width=320, height=240, n_frames=120)
    scene = make_scene(cfg)
    a, b = render_frame(scene, cfg, 60), render_frame(scene, cfg, 63)
    sift = cv2.SIFT_create()
    ka, da = sift.detectAndCompute(cv2.cvtColor(a.rgb, cv2.COLOR_RGB2GRAY), None)
    kb, db = sift.detectAndCompute(cv2.cvtColor(b.rgb, cv2.COLOR_RGB2GRAY), None)
    pairs = cv2.BFMatcher().knnMatch(da, db, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance]
    assert len(good) >= 100
    ua = np.array([ka[g.queryIdx].pt for g in good])
    ub = np.array([kb[g.trainIdx].pt for g in good])
    z = a.extras["depth_gt"][np.round(ua[:, 1]).astype(int), np.round(ua[:, 0]).astype(int)]
    K = a.K
    pc = np.stack([(ua[:, 0] - K[0, 2]) / K[0, 0] * z, (ua[:, 1] - K[1, 2]) / K[1, 1] * z, z], axis=1)
    T_b_a = invert_T(b.extras["T_world_cam_gt"]) @ a.extras["T_world_cam_gt"]
    uv, _ = project_points(transform_points(T_b_a, pc), K)
    err = np.linalg.norm(uv - ub, axis=1)
    assert np.mean(err < 2.0) > 0.9


def test_cast_with_per_ray_origins_matches_the_camera_render():
    cfg = SynthConfig(width=40, height=30, dynamic_object=True)
    scene = make_scene(cfg)
    T = trajectory(cfg)[7]
    K = intrinsics(cfg)
    depth = scene.render_depth(T, K, cfg.width, cfg.height, 0.4)
    u, v = np.meshgrid(np.arange(cfg.width), np.arange(cfg.height))
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, dtype=float)], -1)
    dirs = d_cam.reshape(-1, 3) @ T[:3, :3].T
    # per-ray origins moved back along each ray by 0.1: hits come 0.1 later, at the same points
    origins = T[:3, 3] - 0.1 * dirs
    hits = scene.cast(origins, dirs, 0.4)
    np.testing.assert_allclose(hits.t - 0.1, depth.ravel(), atol=1e-5)
    assert surface_distance(scene, hits.points, 0.4).max() < 1e-6
    # normals are unit and face the ray origin
    np.testing.assert_allclose(np.linalg.norm(hits.normals, axis=1), 1.0, atol=1e-9)
    assert np.all(np.einsum("ij,ij->i", hits.normals, dirs) < 0)
