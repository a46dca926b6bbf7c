"""rosbag2 reading and writing: the real ROS 2 Jazzy recording, our writer checked by an
independent MCAP decoder, and broken inputs."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.geometry.camera import make_K
from recon_ros.geometry.transforms import R_BODY_OPTICAL, make_T, rotvec_to_matrix
from recon_ros.io import messages as M
from recon_ros.io.bag_reader import BagFrameSource, resolve_camera_topics
from recon_ros.io.bag_writer import BagWriter
from recon_ros.io.convert import write_camera_bag
from recon_ros.io.sources import open_source
from recon_ros.io.topics import CameraTopics
from recon_ros.io.trajectory import read_tum
from recon_ros.mapping.frame import Frame

T0 = 1_700_000_000_000_000_000
PERIOD = 33_333_333


def make_frames(n=5, h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        f = Frame(stamp_ns=T0 + i * PERIOD, rgb=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                  K=make_K(30.0 + i, 31.0, w / 2, h / 2),
                  depth=np.round(rng.uniform(0.3, 5.0, (h, w)), 3).astype(np.float32))
        f.depth[0, 0] = 0.0
        f.extras["T_world_cam_gt"] = make_T(rotvec_to_matrix(np.array([0.1, 0.05 * i, 0.0])), [i, 0.5, 1.0])
        frames.append(f)
    return frames


# ----------------------------------------------------------------------------- real ROS 2 bag

def test_reads_real_jazzy_bag(jazzy_bag):
    src = open_source(jazzy_bag)
    assert isinstance(src, BagFrameSource)
    frames = list(src)
    assert len(frames) == 8 and src.skips.total == 0  # the first 8 of the recorded 40 frames
    f0 = frames[0]
    assert f0.rgb.shape == (240, 320, 3) and f0.rgb.dtype == np.uint8
    np.testing.assert_allclose(f0.K, [[307.85, 0, 161.6], [0, 307.95, 119.3], [0, 0, 1]])
    assert f0.frame_id == "camera_color_optical_frame"
    # depth in metres: a room of a few metres, stored as 16UC1 mm
    d = np.concatenate([f.depth[f.depth > 0] for f in frames])
    assert d.dtype == np.float32 and 0.1 < np.median(d) < 6.0 and d.max() < 10.0
    assert np.allclose(d * 1000, np.round(d * 1000), atol=1e-2)
    # static TF chain base_link -> camera_link -> optical
    T_base_opt = src.tf.lookup("base_link", "camera_color_optical_frame", f0.stamp_ns)
    np.testing.assert_allclose(T_base_opt[:3, :3], R_BODY_OPTICAL, atol=1e-9)
    np.testing.assert_allclose(T_base_opt[:3, 3], [0.05, 0.0, 0.1], atol=1e-9)
    # header stamps (not receive times) match the ground truth by stamp
    gt = read_tum(Path(jazzy_bag) / "gt" / "trajectory.tum")
    assert len(gt) == 40  # the whole recorded sequence
    stamps = np.array([f.stamp_ns for f in frames])
    assert np.all(np.abs(stamps - gt.stamps_ns[: len(stamps)]) < 1000)  # TUM text has float rounding (< 1 us)
    assert all(gt.nearest(s, 1000) == i for i, s in enumerate(stamps))


def test_jazzy_bag_odometry_prior_from_tf(jazzy_bag):
    """T_odom_cam is filled from TF when an odom frame is asked for (here base_link as odom)."""
    src = BagFrameSource(jazzy_bag, odom_frame="base_link", max_frames=3)
    frames = list(src)
    assert len(frames) == 3
    for f in frames:
        np.testing.assert_allclose(f.T_odom_cam[:3, :3], R_BODY_OPTICAL, atol=1e-9)
    src2 = BagFrameSource(jazzy_bag, odom_frame="odom", max_frames=2)
    frames2 = list(src2)
    assert all(f.T_odom_cam is None for f in frames2) and src2.skips.counts["no_odometry_tf"] == 2


# ----------------------------------------------------------------------------- our writer

@pytest.mark.parametrize("storage,version", [("sqlite3", 8), ("mcap", 8), ("mcap", 9)])
def test_camera_bag_roundtrip(tmp_path, storage, version):
    frames = make_frames()
    out = write_camera_bag(tmp_path / "bag", frames, storage=storage, version=version)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]  # no temporary left behind
    meta = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == version and meta["storage_identifier"] == storage
    qos = {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"]
           for t in meta["topics_with_message_count"]}
    if version == 8:  # Humble parses a YAML string with integer enums: durability 1 = transient local
        assert isinstance(qos["/tf_static"], str)
        assert yaml.safe_load(qos["/tf_static"])[0]["durability"] == 1
        assert yaml.safe_load(qos["/camera/color/image_raw"])[0]["durability"] == 2
    else:
        assert qos["/tf_static"][0]["durability"] == "transient_local"
    src = BagFrameSource(out)
    back = list(src)
    assert len(back) == len(frames)
    for a, b in zip(frames, back):
        assert a.stamp_ns == b.stamp_ns
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_allclose(a.K, b.K)
        np.testing.assert_allclose(b.depth, a.depth, atol=5e-4 + 1e-6)
        np.testing.assert_allclose(b.extras["T_world_cam_gt"], a.extras["T_world_cam_gt"], atol=1e-9)
    T = src.tf.lookup("base_link", "camera_color_optical_frame", T0)
    np.testing.assert_allclose(T[:3, :3], R_BODY_OPTICAL, atol=1e-12)


def test_mcap_bag_decoded_independently(tmp_path):
    """Every message of an MCAP bag we wrote decodes identically with mcap + mcap_ros2."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from rosbags.rosbag2 import Reader

    frames = make_frames(n=3)
    out = write_camera_bag(tmp_path / "bag", frames, storage="mcap", compress=True)
    mcap_file = next(out.glob("*.mcap"))
    with open(mcap_file, "rb") as fh:
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        theirs = [(ch.topic, m.log_time, dec) for _, ch, m, dec in reader.iter_decoded_messages()]
    store = M.rosbags_types("humble").typestore
    with Reader(out) as r:
        ours = [(c.topic, t, store.deserialize_cdr(raw, c.msgtype)) for c, t, raw in r.messages()]
    assert len(theirs) == len(ours) == 1 + 3 * 5  # tf_static + per frame image, info, depth, depth info, gt tf
    for (t1, s1, a), (t2, s2, b) in zip(theirs, ours):
        assert (t1, s1) == (t2, s2)
        if t1.endswith("/compressed"):
            assert a.format == b.format and bytes(a.data) == bytes(b.data)
        elif t1.endswith("image_raw"):
            assert (a.height, a.width, a.encoding, a.step) == (b.height, b.width, b.encoding, b.step)
            assert bytes(a.data) == bytes(b.data)
        elif t1.endswith("camera_info"):
            np.testing.assert_array_equal(np.asarray(a.k), b.k)
            np.testing.assert_array_equal(np.asarray(a.d), b.d)
            assert a.header.frame_id == b.header.frame_id
        else:
            assert t1 in ("/tf", "/tf_static"), t1
            assert len(a.transforms) == len(b.transforms) > 0
            for x, y in zip(a.transforms, b.transforms):
                assert _tf_fields(x) == _tf_fields(y)
    # the independently decoded ground-truth TF carries the poses and stamps that were written
    gt = [dec.transforms[0] for topic, _, dec in theirs if topic == "/tf"]
    assert len(gt) == len(frames)
    for t, f in zip(gt, frames):
        assert t.header.stamp.sec * 10**9 + t.header.stamp.nanosec == f.stamp_ns
        np.testing.assert_allclose(M.transform_to_matrix(t), f.extras["T_world_cam_gt"], atol=1e-12)


def _tf_fields(t) -> tuple:
    """Every field of a geometry_msgs/TransformStamped."""
    tr, q = t.transform.translation, t.transform.rotation
    return (t.header.stamp.sec, t.header.stamp.nanosec, t.header.frame_id, t.child_frame_id,
            tr.x, tr.y, tr.z, q.x, q.y, q.z, q.w)


def test_generic_writer_arbitrary_messages(tmp_path):
    from rosbags.rosbag2 import Reader

    types = M.rosbags_types("humble")
    pts = np.random.default_rng(1).normal(size=(100, 3)).astype(np.float32)
    with BagWriter(tmp_path / "out", storage="sqlite3") as bag:
        bag.add_topic("/map_cloud", "sensor_msgs/msg/PointCloud2", qos="latched")
        bag.write("/map_cloud", M.make_pointcloud2(types, pts, T0, "map"))
        bag.write("/path", M.make_path(types, [(T0, np.eye(4))], "map", T0))
        bag.write("/odom", M.make_odometry(types, np.eye(4), "map", "base_link", T0))
        assert not (tmp_path / "out").exists()  # only visible when complete
    with Reader(tmp_path / "out") as r:
        got = {c.topic: c.msgtype for c in r.connections}
        msgs = list(r.messages())
    assert got == {"/map_cloud": "sensor_msgs/msg/PointCloud2", "/path": "nav_msgs/msg/Path",
                   "/odom": "nav_msgs/msg/Odometry"}
    cloud = types.typestore.deserialize_cdr(msgs[0][2], "sensor_msgs/msg/PointCloud2")
    np.testing.assert_array_equal(M.pointcloud2_to_xyz(cloud)["points"], pts)


def test_writer_failure_leaves_nothing(tmp_path):
    def frames():
        yield from make_frames(n=2)
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        write_camera_bag(tmp_path / "bag", frames())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserInputError, match="already exists"):
        (tmp_path / "x").mkdir()
        write_camera_bag(tmp_path / "x", make_frames(n=1))


# ----------------------------------------------------------------------------- robustness

def test_truncated_bag_gives_clear_error(tmp_path, jazzy_bag):
    shutil.copytree(jazzy_bag, tmp_path / "b")
    f = next((tmp_path / "b").glob("*.mcap"))
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    with pytest.raises(DataFormatError, match="cannot open bag"):
        BagFrameSource(tmp_path / "b")


def _write_raw_bag(path, images, depth_images=()):
    types = M.rosbags_types("humble")
    with BagWriter(path) as bag:
        bag.add_topic("/cam/image", "sensor_msgs/msg/Image")
        for msg in images:
            bag.write("/cam/image", msg)
        if depth_images:
            bag.add_topic("/cam/depth", "sensor_msgs/msg/Image")
            for msg in depth_images:
                bag.write("/cam/depth", msg)
        bag.add_topic("/cam/camera_info", "sensor_msgs/msg/CameraInfo")
        bag.write("/cam/camera_info", M.make_camera_info(types, make_K(20, 20, 8, 6), 16, 12, T0, "c"))
    return types


def test_bad_messages_are_counted_skips(tmp_path):
    types = M.rosbags_types("humble")
    img = lambda i, shape=(12, 16, 3), enc="rgb8", t=None: M.make_image(  # noqa: E731
        types, np.full(shape, i, np.uint8), enc, T0 + (t if t is not None else i) * PERIOD, "c")
    bad = img(1)
    bad.encoding = "bayer_grbg8"
    images = [img(0), bad, img(2), img(3, shape=(6, 8, 3)), img(4, t=1), img(5)]
    # write in receive order but with one stamp going backwards (frame 4 stamped as 1)
    _write_raw_bag(tmp_path / "b", images)
    src = BagFrameSource(tmp_path / "b")
    assert src.topics.image == "/cam/image" and src.topics.camera_info == "/cam/camera_info"
    assert src.topics.depth is None
    frames = list(src)
    assert [int(f.rgb[0, 0, 0]) for f in frames] == [0, 2, 5]
    assert src.skips.counts["undecodable_image"] == 1
    assert src.skips.counts["image_size_changed"] == 1
    assert src.skips.counts["stamp_went_backwards"] == 1
    np.testing.assert_allclose(frames[0].K, make_K(20, 20, 8, 6))


def test_depth_matching_with_offset_and_missing(tmp_path):
    types = M.rosbags_types("humble")
    ims = [M.make_image(types, np.full((12, 16, 3), i, np.uint8), "rgb8", T0 + i * PERIOD, "c") for i in range(4)]
    # depth 3 ms late, and missing for frame 2; 32FC1 metres
    deps = [M.make_image(types, np.full((12, 16), 1.0 + i, np.float32), "32FC1", T0 + i * PERIOD + 3_000_000, "c")
            for i in (0, 1, 3)]
    _write_raw_bag(tmp_path / "b", ims, deps)
    src = BagFrameSource(tmp_path / "b", slop_s=0.01)
    frames = list(src)
    assert [int(f.rgb[0, 0, 0]) for f in frames] == [0, 1, 3]
    assert [float(f.depth[0, 0]) for f in frames] == [1.0, 2.0, 4.0]
    assert src.skips.counts["no_depth_within_slop"] == 1
    src_nodepth = BagFrameSource(tmp_path / "b", use_depth=False)
    assert len(list(src_nodepth)) == 4


def test_topic_resolution():
    avail = {"/a/image_raw": "sensor_msgs/msg/Image", "/b/image_raw": "sensor_msgs/msg/Image"}
    with pytest.raises(UserInputError, match="several image topics"):
        resolve_camera_topics(avail)
    r = resolve_camera_topics(avail, image_topic="/b/image_raw")
    assert r.image == "/b/image_raw"
    with pytest.raises(UserInputError, match="not in the bag"):
        resolve_camera_topics(avail, image_topic="/c/image_raw")
    with pytest.raises(UserInputError, match="no colour image topic"):
        resolve_camera_topics({"/tf": "tf2_msgs/msg/TFMessage"})
    r = resolve_camera_topics({"/cam/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
                               "/cam/camera_info": "sensor_msgs/msg/CameraInfo",
                               "/cam/depth/image_raw": "sensor_msgs/msg/Image"}, defaults=CameraTopics())
    assert (r.image, r.camera_info, r.depth) == ("/cam/image_raw/compressed", "/cam/camera_info",
                                                 "/cam/depth/image_raw")
