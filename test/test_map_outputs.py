"""Map products on disk and in messages: map.ply with normals, mesh.ply, the map_server
occupancy files, the Marker / OccupancyGrid builders (real rosbags classes, CDR round trip)
and what `recon-ros replay` writes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from recon_ros.cli import main
from recon_ros.io.messages import (make_mesh_marker, make_occupancy_grid, occupancy_grid_to_numpy,
                                   rosbags_types)
from recon_ros.io.outputs import read_pgm, write_occupancy
from recon_ros.io.ply import read_ply, write_ply
from recon_ros.mapping.occupancy import OccupancyGrid
from recon_ros.mapping.schema import OccupancyConfig


def _grid() -> OccupancyGrid:
    data = np.full((3, 4), -1, np.int8)
    data[0, :] = 0  # the first row (lowest y) is free
    data[2, 3] = 100  # the top-right cell is occupied
    return OccupancyGrid(data, 0.05, (-1.0, 2.0, 0.0))


def test_occupancy_files_follow_the_map_server_format(tmp_path):
    files = write_occupancy(tmp_path / "occupancy", _grid(), OccupancyConfig())
    meta = yaml.safe_load(files["occupancy"].read_text())
    assert meta["image"] == "occupancy.pgm" and (tmp_path / meta["image"]).is_file()
    assert meta["resolution"] == pytest.approx(0.05) and meta["origin"] == [-1.0, 2.0, 0.0]
    assert meta["negate"] == 0 and meta["mode"] == "trinary"
    assert meta["occupied_thresh"] == pytest.approx(0.65) and meta["free_thresh"] == pytest.approx(0.25)
    img = read_pgm(files["occupancy_image"])
    assert img.shape == (3, 4)
    # the image's first row is the grid's last (+y up); occupied black, free white, unknown grey
    assert img[0, 3] == 0 and np.all(img[2, :] == 254) and 0 < img[1, 1] < 254
    # map_server's reading (negate 0): p = (255 - v) / 255 classifies as written
    p = (255.0 - img) / 255.0
    assert p[0, 3] > meta["occupied_thresh"] and np.all(p[2, :] < meta["free_thresh"])
    assert meta["free_thresh"] < p[1, 1] < meta["occupied_thresh"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["occupancy.pgm", "occupancy.yaml"]


def test_failed_occupancy_write_leaves_the_previous_files(tmp_path, monkeypatch):
    write_occupancy(tmp_path / "occupancy", _grid(), OccupancyConfig())
    before = (tmp_path / "occupancy.pgm").read_bytes()
    bad = OccupancyGrid(np.zeros((2, 2), np.int8), 0.05, (0.0, 0.0, 0.0))
    import recon_ros.io.atomic as atomic

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(atomic.os, "fsync", boom)
    with pytest.raises(OSError):
        write_occupancy(tmp_path / "occupancy", bad, OccupancyConfig())
    assert (tmp_path / "occupancy.pgm").read_bytes() == before
    assert not list(tmp_path.glob(".*"))


def test_ply_with_normals_and_faces_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.random((10, 3)).astype(np.float32)
    n = rng.normal(size=(10, 3)).astype(np.float32)
    c = rng.integers(0, 255, (10, 3)).astype(np.uint8)
    f = np.array([[0, 1, 2], [2, 3, 4]])
    write_ply(tmp_path / "mesh.ply", v, c, faces=f, normals=n)
    back = read_ply(tmp_path / "mesh.ply")
    np.testing.assert_allclose(back.points, v, atol=1e-7)
    np.testing.assert_allclose(back.normals, n, atol=1e-7)
    assert np.array_equal(back.colors, c) and np.array_equal(back.faces, f)


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_mesh_marker_and_occupancy_grid_serialise(distro):
    types = rosbags_types(distro)
    store = types.typestore
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], float)
    f = np.array([[0, 1, 2], [1, 3, 2]])
    c = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.uint8)
    m = make_mesh_marker(types, v, f, 123, "map", colors=c)
    back = store.deserialize_cdr(store.serialize_cdr(m, m.__msgtype__), m.__msgtype__)
    assert back.type == 11 and back.header.frame_id == "map"  # TRIANGLE_LIST
    pts = np.array([[p.x, p.y, p.z] for p in back.points])
    np.testing.assert_allclose(pts, v[f.reshape(-1)])
    assert back.colors[0].r == 1.0 and back.colors[1].g == 1.0 and back.colors[3].a == 1.0
    with pytest.raises(Exception, match="out of range"):
        make_mesh_marker(types, v, np.array([[0, 1, 9]]), 0, "map")
    g = _grid()
    msg = make_occupancy_grid(types, g.data, g.resolution, g.origin, 5, "map")
    back = store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)
    data, res, T = occupancy_grid_to_numpy(back)
    assert np.array_equal(data, g.data) and res == pytest.approx(0.05)
    np.testing.assert_allclose(T[:3, 3], [-1.0, 2.0, 0.0])
    assert back.info.width == 4 and back.info.height == 3


def test_replay_writes_map_mesh_and_occupancy(tmp_path):
    scene, out = tmp_path / "scene", tmp_path / "run"
    assert main(["-q", "synth", str(scene), "--no-progress", "--synth.width", "160", "--synth.height", "120",
                 "--synth.n_frames", "20", "--synth.loops", "0.15", "--gt-spacing", "0.05"]) == 0
    assert main(["-q", "replay", str(scene), "--frontend", "rgbd", "--out", str(out), "--no-progress",
                 "--map.voxel_size_m", "0.04"]) == 0
    cloud = read_ply(out / "map.ply")
    assert len(cloud.points) > 500 and cloud.normals is not None and cloud.colors is not None
    np.testing.assert_allclose(np.linalg.norm(cloud.normals, axis=1), 1.0, atol=1e-3)
    mesh = read_ply(out / "mesh.ply")
    assert mesh.faces is not None and len(mesh.faces) > 500
    meta = yaml.safe_load((out / "occupancy.yaml").read_text())
    img = read_pgm(out / meta["image"])
    assert np.any(img == 0) and np.any(img == 254)  # walls and floor
    summary = json.loads((out / "summary.json").read_text())
    assert {"mesh", "occupancy", "occupancy_image"} <= set(summary["files"])
    from rosbags.rosbag2 import Reader
    types = rosbags_types()
    with Reader(out / "recon_bag") as reader:
        conns = {c.topic: c for c in reader.connections}
        assert conns["/recon/map_mesh"].msgcount == 1 and conns["/recon/occupancy"].msgcount == 1
        for conn, _, raw in reader.messages(connections=[conns["/recon/occupancy"]]):
            grid = types.typestore.deserialize_cdr(raw, conn.msgtype)
            assert grid.header.frame_id == "map" and grid.info.width * grid.info.height == len(grid.data)
        for conn, _, raw in reader.messages(connections=[conns["/recon/map_mesh"]]):
            marker = types.typestore.deserialize_cdr(raw, conn.msgtype)  # written as raw CDR
            assert marker.type == 11 and len(marker.points) == 3 * len(mesh.faces)
    assert Path(out / "mesh.ply").stat().st_size > 0


def _bag_messages(path: Path, topics: tuple) -> dict:
    from rosbags.rosbag2 import Reader
    types = rosbags_types()
    out: dict = {t: [] for t in topics}
    with Reader(path) as reader:
        conns = [c for c in reader.connections if c.topic in topics]
        for conn, _, raw in reader.messages(connections=conns):
            out[conn.topic].append(types.typestore.deserialize_cdr(raw, conn.msgtype))
    return out


@pytest.mark.parametrize("base_frame", ["", "base_link"])
def test_replay_bag_has_the_nodes_frames(tmp_path, base_frame):
    """The output bag's pose and TF are recon_node's: map -> image frame, or with a base frame
    map -> base_link with the map starting at the body's first pose (mounting from the bag's TF)."""
    from recon_ros.geometry.transforms import map_from_optical
    from recon_ros.io.messages import pose_to_matrix, transform_to_matrix
    scene, out = tmp_path / "scene", tmp_path / "run"
    assert main(["-q", "synth", str(scene), "--no-progress", "--synth.width", "160", "--synth.height", "120",
                 "--synth.n_frames", "10", "--synth.loops", "0.05"]) == 0
    extra = ["--frames.base_frame", base_frame] if base_frame else []
    assert main(["-q", "replay", str(scene), "--frontend", "rgbd", "--out", str(out), "--no-progress",
                 "--map.voxel_size_m", "0.04", *extra]) == 0
    msgs = _bag_messages(out / "recon_bag", ("/tf", "/tf_static", "/recon/pose"))
    children = {t.child_frame_id for m in msgs["/tf"] for t in m.transforms}
    parents = {t.header.frame_id for m in msgs["/tf"] for t in m.transforms}
    assert parents == {"map"} and children == {base_frame or "camera_color_optical_frame"}
    (static,) = [t for m in msgs["/tf_static"] for t in m.transforms]
    assert (static.header.frame_id, static.child_frame_id) == ("map", "recon_world")
    first = pose_to_matrix(msgs["/recon/pose"][0].pose)
    if base_frame:  # base_link -> camera_link (identity) -> optical: the mounting places recon_world
        np.testing.assert_allclose(first, np.eye(4), atol=1e-6)
        np.testing.assert_allclose(transform_to_matrix(static.transform), map_from_optical(), atol=1e-9)
    else:
        np.testing.assert_allclose(first, map_from_optical(), atol=1e-6)


def test_recorder_writes_map_to_odom(tmp_path):
    """With an odom frame the bag carries map -> odom, so that map -> odom -> base equals the pose."""
    from types import SimpleNamespace

    from recon_ros.geometry.transforms import invert_T, make_T, rotvec_to_matrix
    from recon_ros.io.bag_writer import BagWriter
    from recon_ros.io.messages import pose_to_matrix, transform_to_matrix
    from recon_ros.io.outputs import BagSink
    from recon_ros.pipeline.outputs import ResultPublisher
    from recon_ros.ros.schema import OutputFramesConfig

    mount = make_T(rotvec_to_matrix([-1.2, 0.0, -1.5]), [0.2, 0.0, 0.5])
    T_odom_cam = make_T(rotvec_to_matrix([0.1, -0.2, 0.05]), [1.0, 2.0, 0.1])
    T_recon_cam = make_T(rotvec_to_matrix([0.0, 0.3, 0.0]), [0.1, 0.0, 0.4])
    stamp = 5_000_000_000
    frame = SimpleNamespace(frame_id="cam", extras={"T_base_cam": mount}, T_odom_cam=T_odom_cam, stamp_ns=stamp)
    est = SimpleNamespace(stamp_ns=stamp, T_world_cam=T_recon_cam)  # a minimal estimate
    writer = BagWriter(tmp_path / "bag").open()
    pub = ResultPublisher(BagSink(writer), OutputFramesConfig(base_frame="base_link", odom_frame="odom"))
    pub.observe_input(frame)
    pub.publish_estimate(est, final=True)
    writer.close()
    msgs = _bag_messages(tmp_path / "bag", ("/tf", "/recon/pose"))
    (tf,) = [t for m in msgs["/tf"] for t in m.transforms]
    assert (tf.header.frame_id, tf.child_frame_id) == ("map", "odom")
    T_map_base = pose_to_matrix(msgs["/recon/pose"][0].pose)
    np.testing.assert_allclose(transform_to_matrix(tf.transform) @ T_odom_cam @ invert_T(mount), T_map_base,
                               atol=1e-9)
    np.testing.assert_allclose(T_map_base, mount @ T_recon_cam @ invert_T(mount), atol=1e-9)
