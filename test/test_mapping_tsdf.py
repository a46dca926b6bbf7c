"""The TSDF surface map: plane distance, accuracy near the noise floor, carving, the
minimum-weight rule, de-integration, re-posing after loop closure, the memory cap, the mesh
and the occupancy grid."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mapping_scene import BoxRoom, camera, loop_trajectory

from recon_ros.geometry.camera import make_K
from recon_ros.geometry.transforms import make_T, map_from_optical, rotvec_to_matrix, transform_points
from recon_ros.mapping.occupancy import FREE, OCCUPIED, UNKNOWN, occupancy_grid
from recon_ros.mapping.schema import MapConfig, OccupancyConfig
from recon_ros.mapping.surface_map import SurfaceMap
from recon_ros.mapping.tsdf import TSDFVolume

W, H = 160, 120
K = make_K(140.0, 140.0, (W - 1) / 2, (H - 1) / 2)


def _cfg(**kw) -> MapConfig:
    cfg = MapConfig(min_weight=1.0, fusion_max_width=0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _fuse(m: SurfaceMap, depth: np.ndarray, T: np.ndarray, stamp: int, rgb=None) -> None:
    rgb = np.full(depth.shape + (3,), 128, np.uint8) if rgb is None else rgb
    m.integrate_depth(stamp, depth, rgb, (depth > 0).astype(np.float32), K, T)


def test_flat_depth_image_gives_a_plane_at_the_measured_distance():
    m = SurfaceMap(_cfg(voxel_size_m=0.02))
    depth = np.full((H, W), 2.0, np.float32)
    for i in range(3):
        _fuse(m, depth, np.eye(4), i)
    xyz, normals, rgb, count = m.points()
    assert len(xyz) > 1000
    assert abs(float(np.mean(xyz[:, 2])) - 2.0) < 0.002
    assert float(np.max(np.abs(xyz[:, 2] - 2.0))) < 0.005
    # normals point back at the camera (towards free space), colours are the image's
    assert np.mean(normals[:, 2]) < -0.99
    assert np.all(rgb == 128) and np.all(count >= 1.0)
    # the plane covers the field of view at that distance (x within the image's footprint)
    half_w = 2.0 * (W / 2) / K[0, 0]
    assert xyz[:, 0].min() < -0.8 * half_w and xyz[:, 0].max() > 0.8 * half_w


def test_tilted_plane_under_a_sim3_pose():
    """A Sim(3) pose scales the fused depth: a plane at 1 unit with scale 2.5 lies at 2.5 m."""
    m = SurfaceMap(_cfg(voxel_size_m=0.02))
    R = rotvec_to_matrix(np.array([0.2, -0.3, 0.1]))
    T = make_T(R, np.array([0.3, -0.2, 0.5]), 2.5)
    for i in range(3):
        _fuse(m, np.full((H, W), 1.0, np.float32), T, i)
    xyz = m.points()[0]
    cam = transform_points(np.linalg.inv(make_T(R, np.array([0.3, -0.2, 0.5]))), xyz.astype(np.float64))
    assert len(xyz) > 500
    assert np.median(np.abs(cam[:, 2] - 2.5)) < 0.005


def _room_frames(n: int, noise: float, seed: int = 0, width: int = W, height: int = H):
    room = BoxRoom()
    Kr = camera(width, height)
    rng = np.random.default_rng(seed)
    out = []
    for T in loop_trajectory(n):
        rgb, depth = room.render(Kr, T, width, height)
        noisy = depth + rng.normal(0.0, noise, depth.shape).astype(np.float32)
        out.append((rgb, noisy, T))
    return room, Kr, out


def test_box_room_from_true_poses_is_accurate_to_the_noise_floor():
    """Mean distance of the fused surface to the true surfaces is a fraction of the depth noise
    (fusing averages it away) and the walls are complete."""
    noise = 0.01
    room, Kr, frames = _room_frames(24, noise)
    m = SurfaceMap(_cfg(voxel_size_m=0.03, depth_noise_m=noise, depth_noise_model="constant",
                        min_weight=2.0))
    raw = []
    for i, (rgb, depth, T) in enumerate(frames):
        m.integrate_depth(i, depth, rgb, np.ones_like(depth), Kr, T)
        raw.append(depth)
    xyz = m.points()[0]
    d = room.distance_to_surface(xyz)
    assert len(xyz) > 5000
    assert float(np.mean(d)) < 0.5 * noise, float(np.mean(d))
    assert float(np.mean(d < 0.03)) > 0.97
    # completion: the far wall (z = +3 in the room frame) is covered across its width
    wall = xyz[np.abs(xyz[:, 2] - 3.0) < 0.05]
    assert np.ptp(wall[:, 0]) > 3.0


def _wall_with_box(box: bool) -> np.ndarray:
    depth = np.full((H, W), 3.0, np.float32)
    if box:
        depth[40:80, 60:100] = 1.5
    return depth


def test_free_space_carving_removes_a_moving_object():
    """An object seen for 10 frames that then moves away (the wall behind it seen through its
    old place) leaves < 5 % of its points; the static wall stays complete."""
    m = SurfaceMap(_cfg(voxel_size_m=0.02))
    for i in range(10):
        _fuse(m, _wall_with_box(True), np.eye(4), i)
    xyz = m.points()[0]
    box_before = int(np.sum(xyz[:, 2] < 2.0))
    assert box_before > 300
    for i in range(10, 40):
        _fuse(m, _wall_with_box(False), np.eye(4), i)
    xyz = m.points()[0]
    assert np.sum(xyz[:, 2] < 2.0) < 0.05 * box_before
    # the wall behind the object's old place is there
    behind = xyz[(np.abs(xyz[:, 2] - 3.0) < 0.01) & (np.abs(xyz[:, 0]) < 0.15) & (np.abs(xyz[:, 1]) < 0.15)]
    assert len(behind) > 100


def test_an_object_seen_through_fewer_times_than_it_was_seen_leaves_the_surface():
    """Free-space carving alone only moves the zero crossing of an object seen 10 times and then
    seen through 3 times (the +1 readings do not outweigh the surface ones); the free-space
    vote on the voxels' violations removes it, and the wall behind stays."""
    def run(enabled: bool) -> tuple[np.ndarray, int]:
        cfg = _cfg(voxel_size_m=0.02)
        cfg.transients.enabled = enabled
        m = SurfaceMap(cfg)
        for i in range(10):
            _fuse(m, _wall_with_box(True), np.eye(4), i)
        box_before = int(np.sum(m.points()[0][:, 2] < 2.0))
        for i in range(10, 13):
            _fuse(m, _wall_with_box(False), np.eye(4), i)
        return m.points()[0], box_before

    kept, box_before = run(enabled=False)
    assert box_before > 300
    assert np.sum(kept[:, 2] < 2.0) > 0.5 * box_before  # carving alone keeps most of the object
    xyz, box_before = run(enabled=True)
    assert box_before > 300  # not yet contradicted: the object is there while it is seen
    assert np.sum(xyz[:, 2] < 2.0) < 0.05 * box_before
    wall = xyz[np.abs(xyz[:, 2] - 3.0) < 0.01]
    assert len(wall) > 0.95 * np.sum(np.abs(kept[:, 2] - 3.0) < 0.01)


def test_removing_a_frame_removes_its_violations():
    """Violations are voxel sums like the others: a frame that sees through the object adds
    them, and removing that frame takes them back exactly (the object reappears)."""
    m = SurfaceMap(_cfg(voxel_size_m=0.02))
    for i in range(5):
        _fuse(m, _wall_with_box(True), np.eye(4), i)
    free_ref = m.volume.free[:m.volume.n].clone()
    n_box = int(np.sum(m.points()[0][:, 2] < 2.0))
    _fuse(m, _wall_with_box(False), np.eye(4), 99)
    assert float(m.volume.free[:free_ref.shape[0]].sum()) > float(free_ref.sum()) + 100
    assert np.sum(m.points()[0][:, 2] < 2.0) < 0.05 * n_box
    fr = m._frames[99]
    m._integrate(fr, fr.T_world_cam, -1.0)
    m._cache.clear()
    torch.testing.assert_close(m.volume.free[:free_ref.shape[0]], free_ref, atol=1e-5, rtol=0)
    assert int(np.sum(m.points()[0][:, 2] < 2.0)) == n_box


def test_static_surfaces_seen_from_many_views_stay():
    """A room with boxes (silhouettes, grazing walls) seen along a noisy loop: the free-space
    vote leaves out almost nothing and the surface keeps its accuracy."""
    room, Kr, frames = _room_frames(24, 0.01)
    out = {}
    for enabled in (False, True):
        cfg = _cfg(voxel_size_m=0.03, depth_noise_m=0.01, depth_noise_model="constant", min_weight=2.0)
        cfg.transients.enabled = enabled
        m = SurfaceMap(cfg)
        for i, (rgb, depth, T) in enumerate(frames):
            m.integrate_depth(i, depth, rgb, np.ones_like(depth), Kr, T)
        out[enabled] = m.points()[0]
    assert len(out[True]) > 0.995 * len(out[False])
    assert _accuracy(room, out[True]) <= _accuracy(room, out[False]) * 1.01


def test_min_weight_rule_hides_surfaces_seen_too_few_times():
    m = SurfaceMap(_cfg(voxel_size_m=0.02, min_weight=3.0))
    depth = np.full((H, W), 2.0, np.float32)
    _fuse(m, depth, np.eye(4), 0)
    _fuse(m, depth, np.eye(4), 1)
    assert len(m.points()[0]) == 0
    _fuse(m, depth, np.eye(4), 2)
    assert len(m.points()[0]) > 1000
    # the rule is read at extraction: lowering it shows the surface of fewer readings
    m2 = SurfaceMap(_cfg(voxel_size_m=0.02, min_weight=3.0))
    _fuse(m2, depth, np.eye(4), 0)
    m2.config.min_weight = 1.0
    m2._cache.clear()
    assert len(m2.points()[0]) > 1000


def test_deintegration_is_exact():
    vol_cfg = _cfg(voxel_size_m=0.03)
    room, Kr, frames = _room_frames(6, 0.005)
    m = SurfaceMap(vol_cfg)
    for i, (rgb, depth, T) in enumerate(frames[:3]):
        m.integrate_depth(i, depth, rgb, np.ones_like(depth), Kr, T)
    t_ref = m.volume.tsdf[:m.volume.n].clone()
    w_ref = m.volume.weight[:m.volume.n].clone()
    f_ref = m.volume.free[:m.volume.n].clone()
    rgb, depth, T = frames[4]
    m.integrate_depth(99, depth, rgb, np.ones_like(depth), Kr, T)
    fr = m._frames[99]
    m._integrate(fr, fr.T_world_cam, -1.0)
    n = t_ref.shape[0]
    # blocks allocated by the removed frame are empty again; the others are as before
    assert torch.all(m.volume.weight[n:m.volume.n] == 0)
    torch.testing.assert_close(m.volume.weight[:n], w_ref, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(m.volume.free[:n], f_ref, atol=1e-4, rtol=0)
    observed = w_ref > 1e-3
    torch.testing.assert_close(m.volume.tsdf[:n][observed], t_ref[observed], atol=1e-3, rtol=0)


def _accuracy(room: BoxRoom, xyz: np.ndarray) -> float:
    return float(np.mean(room.distance_to_surface(xyz)))


def test_reposing_frames_equals_fusing_them_from_scratch():
    """Frames fused with drifting poses, then moved to the true poses (what a loop closure
    does), give the map a from-scratch fusion with the true poses gives (accuracy within 5 %,
    same surface)."""
    room, Kr, frames = _room_frames(24, 0.005)
    cfg = _cfg(voxel_size_m=0.03, min_weight=2.0)
    drifted = SurfaceMap(cfg)
    truth = {}
    for i, (rgb, depth, T) in enumerate(frames):
        drift = make_T(rotvec_to_matrix(np.array([0.0, 0.004 * i, 0.0])), np.array([0.006 * i, 0.0, 0.0]))
        drifted.integrate_depth(i, depth, rgb, np.ones_like(depth), Kr, drift @ T)
        truth[i] = T
    acc_drifted = _accuracy(room, drifted.points()[0])
    assert drifted.repose(truth) == len(frames) - 1  # frame 0 had no drift
    scratch = SurfaceMap(cfg)
    for i, (rgb, depth, T) in enumerate(frames):
        scratch.integrate_depth(i, depth, rgb, np.ones_like(depth), Kr, T)
    a_re, a_sc = _accuracy(room, drifted.points()[0]), _accuracy(room, scratch.points()[0])
    assert acc_drifted > 2 * a_sc  # the drift mattered
    assert abs(a_re - a_sc) <= 0.05 * a_sc, (a_re, a_sc)
    n_re, n_sc = len(drifted.points()[0]), len(scratch.points()[0])
    assert abs(n_re - n_sc) <= 0.05 * n_sc, (n_re, n_sc)


def test_memory_cap_evicts_least_recently_seen_blocks_to_disk(tmp_path):
    room, Kr, frames = _room_frames(24, 0.0)
    cfg = _cfg(voxel_size_m=0.03, max_memory_mib=2.0, evict_directory=str(tmp_path / "ev"))
    m = SurfaceMap(cfg)
    for i, (rgb, depth, T) in enumerate(frames):
        m.integrate_depth(i, depth, rgb, np.ones_like(depth), Kr, T)
        assert m.volume.nbytes <= 2.0 * 1024 * 1024
    st = m.stats()
    assert st.evicted_blocks > 0
    files = sorted((tmp_path / "ev").glob("blocks_*.npz"))
    assert files and not list((tmp_path / "ev").glob(".*"))  # complete files only
    saved = sum(len(np.load(f)["coords"]) for f in files)
    assert saved == st.evicted_blocks
    # the blocks still live were seen more recently than every evicted one
    assert int(m.volume.last_seen[:m.volume.n].min()) >= 1


def test_mesh_is_watertight_on_a_plane_and_faces_the_camera():
    vol = TSDFVolume(0.02, min_weight=1.0)
    d = torch.full((H, W), 2.0)
    for _ in range(2):
        vol.integrate(d, K, np.eye(4), 0.08, colors=torch.full((H, W, 3), 100.0))
    v, f, c, n = vol.extract_mesh()
    assert len(f) > 1000 and f.max() < len(v)
    assert np.allclose(v[:, 2], 2.0, atol=1e-4)
    tri_n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert np.all(tri_n[:, 2] < 0)  # wound towards the camera (free space)
    # interior edges are shared by exactly two triangles (no cracks at block borders)
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    assert np.mean(counts == 2) > 0.95 and counts.max() == 2
    assert np.all(c == 100)


def test_occupancy_grid_marks_walls_in_the_band_and_free_floor():
    """The box room fused from true poses, cut in the z-up map frame: wall cells are occupied,
    the floor between them is free, nothing outside the room is known."""
    room, Kr, frames = _room_frames(24, 0.0)
    m = SurfaceMap(_cfg(voxel_size_m=0.04))
    for i, (rgb, depth, T) in enumerate(frames):
        m.integrate_depth(i, depth, rgb, np.ones_like(depth), Kr, T)
    xyz, normals, _, _ = m.points()
    T = map_from_optical()
    pts = transform_points(T, xyz.astype(np.float64))
    nrm = normals @ T[:3, :3].T
    grid = occupancy_grid(pts, nrm, OccupancyConfig(min_height_m=0.1, max_height_m=1.5), 0.04)
    assert grid.floor_height == pytest.approx(-1.3, abs=0.03)

    def cell(x_map, y_map):
        j = int((x_map - grid.origin[0]) / grid.resolution)
        i = int((y_map - grid.origin[1]) / grid.resolution)
        return grid.data[min(max(i, 0), grid.height - 1), min(max(j, 0), grid.width - 1)]

    def wall_at(x_map, y_map, along_x):
        """Occupied within one cell of (x_map, y_map) across the wall."""
        offs = (-0.04, 0.0, 0.04)
        return any(cell(x_map + (0 if along_x else o), y_map + (o if along_x else 0)) == OCCUPIED for o in offs)
    # optical z = forward = map x; optical x = right = map -y. The room's walls are at optical
    # z = +-3 (map x = +-3) and optical x = +-2.5 (map y = -+2.5)
    ys = np.linspace(-1.5, 1.5, 7)
    # (the tall box at optical (0.9, ., 1.9) hides part of the map x = +3 wall from the loop)
    assert sum(wall_at(3.0, y, False) for y in ys) >= 5
    assert sum(wall_at(-3.0, y, False) for y in ys) >= 6
    assert sum(wall_at(x, 2.5, True) for x in np.linspace(-2, 2, 7)) >= 6
    # the floor seen between the camera loop and the walls is free; nothing outside the room is
    xs = grid.origin[0] + (np.arange(grid.width) + 0.5) * grid.resolution
    ysg = grid.origin[1] + (np.arange(grid.height) + 0.5) * grid.resolution
    X, Y = np.meshgrid(xs, ysg)
    inside = (np.abs(X) < 2.9) & (np.abs(Y) < 2.4)
    free = grid.data == FREE
    assert free[inside].mean() > 0.3, free[inside].mean()
    assert not np.any(free & ((np.abs(X) > 3.1) | (np.abs(Y) > 2.6)))
    # boxes taller than the band's lower edge are obstacles: box 0 at optical (-1.2, ., 1.4)
    occ = grid.data == OCCUPIED
    box = (np.abs(X - 1.4) < 0.4) & (np.abs(Y - 1.2) < 0.4)
    assert occ[box].sum() > 20  # its faces (the inside is never seen)
    assert np.all(np.isin(grid.data, [OCCUPIED, FREE, UNKNOWN]))
    # a band above everything marks nothing occupied
    high = occupancy_grid(pts, nrm, OccupancyConfig(min_height_m=5.0, max_height_m=6.0), 0.04)
    assert not np.any(high.data == OCCUPIED)


def test_far_and_huge_readings_stay_bounded():
    """Readings past map.max_depth_m are not fused and the truncation band stops growing with the
    noise model at truncation_max_voxels, so wild depth (an unscaled or untrained frontend) can
    not allocate the whole space."""
    near = np.full((H, W), 2.0, np.float32)
    wild = near.copy()
    wild[:, W // 2:] = 500.0  # beyond max_depth_m: ignored
    m = SurfaceMap(_cfg(voxel_size_m=0.02, max_depth_m=8.0))
    _fuse(m, wild, np.eye(4), 0)
    xyz, _, _, _ = m.points()
    assert len(xyz) > 100 and float(xyz[:, 2].max()) < 2.1
    # readings at 7 m: quadratic noise would ask for a 0.74 m band (37 voxels); the cap is 16
    capped = SurfaceMap(_cfg(voxel_size_m=0.02, truncation_max_voxels=16.0))
    uncapped = SurfaceMap(_cfg(voxel_size_m=0.02, truncation_max_voxels=1000.0))
    far = np.full((H, W), 7.0, np.float32)
    _fuse(capped, far, np.eye(4), 0)
    _fuse(uncapped, far, np.eye(4), 0)
    band_blocks = lambda sm: sm.volume.stats().blocks  # noqa: E731
    assert band_blocks(capped) < 0.6 * band_blocks(uncapped)
