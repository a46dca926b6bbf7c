"""recon_node wiring, exercised WITHOUT ROS 2 through the in-repo rclpy stand-in.

The stand-in (test/rclpy_standin, a test double) records publishers, subscriptions, services and
timers; these tests drive the node's callbacks directly with real message objects (rosbags
classes), use FakeReconstructor (a test double of the core with predictable poses), and check what
the node publishes against independently computed values. They verify our wiring and our
assumptions about the rclpy API, not ROS itself (QoS matching, executors and real TF timing are
for launch_testing on a ROS machine).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from recon_ros.config import group
from recon_ros.geometry.transforms import R_BODY_OPTICAL, invert_T, make_T, rotvec_to_matrix
from recon_ros.io import messages as M
from recon_ros.mapping.reconstructor import OutputConfig

from rclpy_standin import installed
from rclpy_standin.doubles import FakeCoreConfig, FakeReconstructor, camera_pose

T = M.rosbags_types()
W, H = 32, 24
CAM = "camera_color_optical_frame"
K = np.array([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]])
NS = "/recon_node"


@pytest.fixture
def ros():
    """Install the rclpy stand-in for one test and import the node module under it."""
    with installed():
        import recon_ros.ros.recon_node as recon_node
        yield recon_node


def make_node(ros, *, delay_s=0.0, overrides=None, factory=None):
    from rclpy.parameter import Parameter
    made = {}

    def build(cfg):
        made["recon"] = FakeReconstructor(cfg, delay_s=delay_s)
        return made["recon"]

    ov = {"save.on_shutdown": False}
    ov.update(overrides or {})
    node = ros.ReconNode(core_cls=FakeCoreConfig, reconstructor_factory=factory or build,
                         parameter_overrides=[Parameter(name=k, value=v) for k, v in ov.items()])
    node.get_clock().set_ns(1_000_000_000_000)
    return node, made


def start(ros, **kw):
    node, made = make_node(ros, **kw)
    assert node.trigger_configure() == 97 and node.state_label == "inactive"
    assert node.trigger_activate() == 97 and node.state_label == "active"
    return node, made["recon"]


def image_msg(stamp_ns, w=W, h=H, encoding="rgb8", value=100):
    if encoding == "rgb8":
        arr = np.full((h, w, 3), value, np.uint8)
    elif encoding == "32FC1":
        arr = np.ones((h, w), np.float32)
    return M.make_image(T, arr, encoding, stamp_ns, CAM)


def info_msg(stamp_ns, w=W, h=H):
    return M.make_camera_info(T, K, w, h, stamp_ns, CAM)


def feed(node, stamp_ns, **kw):
    """Deliver a matching image + camera_info pair the way the executor would."""
    node.get_clock().set_ns(stamp_ns + 5_000_000)
    node.subscriptions["/camera_info"].callback(info_msg(stamp_ns, w=kw.get("w", W), h=kw.get("h", H)))
    node.subscriptions["/image"].callback(image_msg(stamp_ns, **kw))
    node.subscriptions["/camera_info"].callback(info_msg(stamp_ns + 25_000_000))  # decides the match


def settle(node):
    """Wait until the frames are processed and the map outputs they made are published."""
    assert node._worker.wait_idle(10.0)
    assert node._map_worker.wait_idle(10.0)


def pub(node, name):
    return node.publishers[f"{NS}/{name}"]


def stamp(i):
    return 2_000_000_000 + i * 33_000_000


# -- lifecycle ------------------------------------------------------------------------------------
def test_lifecycle_creates_and_releases_everything(ros):
    node, made = make_node(ros)
    assert "recon" not in made and not node.publishers and not node.subscriptions  # nothing before configure
    node.trigger_configure()
    assert "recon" in made
    for name in ("map_cloud", "frame_cloud", "pose", "odom", "path", "keyframes", "keyframe_info"):
        assert f"{NS}/{name}" in node.publishers
    assert {f"{NS}/save_map", f"{NS}/reset", f"{NS}/set_paused"} <= set(node.services)
    assert not node.subscriptions  # inactive: not listening
    node.trigger_activate()
    assert set(node.subscriptions) == {"/image", "/camera_info", "/corrected_path", "/refined_keyframes"}
    from rclpy.qos import QoSDurabilityPolicy, QoSReliabilityPolicy
    assert node.subscriptions["/image"].qos.reliability == QoSReliabilityPolicy.BEST_EFFORT  # sensor data
    assert pub(node, "map_cloud").qos.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL
    assert pub(node, "map_cloud").qos.reliability == QoSReliabilityPolicy.RELIABLE
    assert pub(node, "path").qos.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL
    info = " ".join(node.get_logger().messages("info"))
    assert "/image" in info and "/camera_info" in info and "slop" in info  # topics, QoS, sync logged
    node.trigger_deactivate()
    assert not node.subscriptions
    worker = node._worker
    node.trigger_cleanup()
    assert node._recon is None and not worker.running and not node.publishers and not node.services


def test_configure_failure_is_reported_and_recoverable(ros):
    def broken(cfg):
        raise FileNotFoundError("checkpoint /nope.pth not found")

    node, _ = make_node(ros, factory=broken)
    assert node.trigger_configure() == 98
    assert node.state_label == "unconfigured"
    assert any("/nope.pth" in m for m in node.get_logger().messages("error"))


def test_compressed_transport_and_depth_subscriptions(ros):
    node, _ = start(ros, overrides={"input.image_transport": "compressed", "input.use_depth": True,
                                    "input.qos": "reliable"})
    assert {"/image/compressed", "/camera_info", "/depth"} <= set(node.subscriptions)
    from rclpy.qos import QoSReliabilityPolicy
    assert node.subscriptions["/depth"].qos.reliability == QoSReliabilityPolicy.RELIABLE
    node.trigger_deactivate()
    node.trigger_cleanup()


# -- parameters -----------------------------------------------------------------------------------
def test_parameters_declared_from_schema_with_ranges(ros):
    from recon_ros.config import iter_params
    from recon_ros.ros.schema import ReconNodeConfig
    node, _ = make_node(ros)
    specs = list(iter_params(FakeCoreConfig)) + list(iter_params(ReconNodeConfig))
    for spec in specs:
        d = node.describe_parameter(spec.name)
        # a lifecycle node: static parameters are settable while unconfigured, so rclpy must not
        # refuse them as read-only; the schema check refuses them once configured
        assert not d.read_only, spec.name
        assert ("[set while unconfigured]" in d.description) == (not spec.dynamic), spec.name
        assert spec.doc.split()[0] in d.description
        if spec.type is float and spec.max is not None:
            assert d.floating_point_range[0].to_value == spec.max
        if spec.type is int and spec.min is not None:
            assert d.integer_range[0].from_value == spec.min


def test_dynamic_parameter_validation(ros):
    from rclpy.parameter import Parameter
    node, recon = start(ros)
    ok = node.set_parameters([Parameter(name="map.voxel_size_m", value=0.05)])[0]
    assert ok.successful and recon.cfg.map.voxel_size_m == 0.05  # core config shared with the core
    ok = node.set_parameters([Parameter(name="publish.map_cloud_rate_hz", value=2)])[0]
    assert ok.successful and node.ros.publish.map_cloud_rate_hz == 2.0
    stored = node.get_parameter("publish.map_cloud_rate_hz").value
    assert isinstance(stored, float) and stored == 2.0  # an integer given for a float is stored as float
    bad = node.set_parameters([Parameter(name="map.voxel_size_m", value=5.0)])[0]
    assert not bad.successful and "1.0" in bad.reason and recon.cfg.map.voxel_size_m == 0.05
    bad = node.set_parameters([Parameter(name="input.process_every_n", value=0)])[0]
    assert not bad.successful and node.ros.input.process_every_n == 1
    # A static one is refused while configured, with what to do instead ...
    res = node.set_parameters([Parameter(name="input.qos", value="reliable")])[0]
    assert not res.successful and "unconfigured" in res.reason and "cleanup" in res.reason
    assert node._schema.check_runtime_change({"input.qos": "reliable"}) is not None
    # ... and accepted while unconfigured; configure then uses it.
    node.trigger_deactivate()
    node.trigger_cleanup()
    res = node.set_parameters([Parameter(name="input.qos", value="reliable")])[0]
    assert res.successful, res.reason
    bad = node.set_parameters([Parameter(name="input.qos", value="fastest")])[0]
    assert not bad.successful and "fastest" in bad.reason  # still validated
    node.trigger_configure()
    node.trigger_activate()
    from rclpy.qos import QoSReliabilityPolicy
    assert node.subscriptions["/image"].qos.reliability == QoSReliabilityPolicy.RELIABLE


def test_pose_goes_out_before_the_map_work(ros):
    """The worker publishes pose and TF when the core's estimate is done, before the map work
    of that frame (Reconstructor.finish); keyframes and paths follow it."""
    node, recon = start(ros)
    seen = []
    recon.on_finish = lambda: seen.append((len(pub(node, "pose").messages), len(node._tf_pub.sent),
                                           len(pub(node, "keyframes").messages)))
    for i in range(2):
        feed(node, stamp(i))
        settle(node)
    assert recon.processed == [stamp(0), stamp(1)]
    assert seen == [(1, 1, 0), (2, 2, 1)]  # frame 0 is a keyframe: published after its finish
    assert len(pub(node, "keyframes").messages) == 1


def test_bad_override_fails_configure(ros):
    node, _ = make_node(ros, overrides={"input.qos": "fastest"})
    assert node.trigger_configure() == 98
    assert any("input.qos" in m for m in node.get_logger().messages("error"))


# -- the pipeline ---------------------------------------------------------------------------------
def test_frames_flow_to_outputs_in_map_frame(ros):
    node, recon = start(ros)
    pub(node, "frame_cloud").subscribers = 1
    for i in range(4):
        feed(node, stamp(i))
        settle(node)
    assert recon.processed == [stamp(i) for i in range(4)]
    assert np.allclose(recon.frames[0].K, K) and recon.frames[0].rgb.shape == (H, W, 3)
    assert "recon_gpu" in recon.threads  # inference ran on the worker, not in a callback
    T_map_recon = make_T(R_BODY_OPTICAL, np.zeros(3))  # no base frame: optical -> z-up
    poses = pub(node, "pose").messages
    assert len(poses) == 4
    for i, msg in enumerate(poses):
        assert M.stamp_to_ns(msg.header.stamp) == stamp(i) and msg.header.frame_id == "map"
        expected = T_map_recon @ camera_pose(i)
        assert np.allclose(M.pose_to_matrix(msg), expected, atol=1e-9)
        # The camera moves along its optical axis = forward = +x in map.
        assert np.isclose(msg.pose.position.x, 0.1 * i)
    odom = pub(node, "odom").messages[-1]
    assert odom.child_frame_id == CAM and odom.header.frame_id == "map"
    # TF: static map -> recon_world, dynamic map -> camera frame (no base/odom configured).
    static = node._tf_static_pub.sent
    assert [(s.header.frame_id, s.child_frame_id) for s in static] == [("map", "recon_world")]
    assert np.allclose(M.transform_to_matrix(static[0]), T_map_recon)
    dyn = node._tf_pub.sent
    assert {(s.header.frame_id, s.child_frame_id) for s in dyn} == {("map", CAM)}
    # Keyframes every 2nd frame: organised cloud in the camera frame + matching info + path.
    kfs = pub(node, "keyframes").messages
    infos = pub(node, "keyframe_info").messages
    assert [M.stamp_to_ns(k.header.stamp) for k in kfs] == [stamp(0), stamp(2)]
    assert [M.stamp_to_ns(k.header.stamp) for k in infos] == [stamp(0), stamp(2)]
    assert kfs[0].height == 4 and kfs[0].width == 5 and kfs[0].header.frame_id == CAM
    path = pub(node, "path").messages[-1]
    assert [M.stamp_to_ns(p.header.stamp) for p in path.poses] == [stamp(0), stamp(2)]
    assert np.allclose(M.pose_to_matrix(path.poses[1]), T_map_recon @ camera_pose(2))
    # Map cloud: rate-limited, in map, all fused points transformed.
    maps = pub(node, "map_cloud").messages
    assert len(maps) == 1  # 1 Hz: the frames came within 0.1 s
    node.get_clock().set_ns(stamp(3) + 2_000_000_000)
    node._housekeeping()  # the pending (dirty) map goes out once it is due
    settle(node)
    assert len(maps) == 2
    xyz = M.pointcloud2_to_xyz(maps[-1])["points"].reshape(-1, 3)
    assert maps[-1].header.frame_id == "map"
    fused = recon.fused_cloud()[0]
    assert len(xyz) == len(fused)
    assert np.allclose(xyz, fused @ R_BODY_OPTICAL.T, atol=1e-5)
    assert len(pub(node, "frame_cloud").messages) == 4


def test_frame_cloud_only_with_subscribers(ros):
    node, _ = start(ros)
    feed(node, stamp(0))
    settle(node)
    assert not pub(node, "frame_cloud").messages
    pub(node, "frame_cloud").subscribers = 1
    feed(node, stamp(1))
    settle(node)
    assert len(pub(node, "frame_cloud").messages) == 1


def test_latest_frame_wins_under_a_slow_model(ros):
    node, recon = start(ros, delay_s=0.15)
    n = 12
    for i in range(n):
        feed(node, stamp(i))  # returns at once although the model is busy
        time.sleep(0.03)  # a 30 Hz camera
    settle(node)
    st = node._worker.stats()
    assert st.submitted == n
    assert st.processed + st.dropped == n
    assert 2 <= st.processed < n and st.dropped > 0
    assert recon.processed[-1] == stamp(n - 1)  # the newest frame is always processed
    assert recon.processed == sorted(recon.processed)
    assert node.counters()["dropped_busy"] == st.dropped


def test_process_every_n(ros):
    from rclpy.parameter import Parameter
    node, recon = start(ros)
    assert node.set_parameters([Parameter(name="input.process_every_n", value=3)])[0].successful
    for i in range(7):
        feed(node, stamp(i))
        settle(node)
    assert recon.processed == [stamp(0), stamp(3), stamp(6)]


def test_frames_wait_for_tf_and_time_out(ros):
    node, recon = start(ros, overrides={"frames.odom_frame": "odom", "frames.base_frame": "base_link",
                                        "frames.tf_timeout_s": 0.2})
    assert node._tf_timer.is_canceled()  # TF is polled only while frames wait for it
    feed(node, stamp(0))
    node._poll_tf()
    settle(node)
    assert recon.processed == [] and node._intake.waiting == 1  # waiting, not blocking, not dropped
    assert not node._tf_timer.is_canceled()
    node.get_clock().set_ns(stamp(0) + 500_000_000)  # past the timeout
    node._poll_tf()
    assert node.counters()["tf_timeouts"] == 1 and node._intake.waiting == 0
    assert node._tf_timer.is_canceled()
    assert any("tf_timeout_s" in m for m in node.get_logger().messages("warning"))
    # Now provide the mounting and odometry: the next frame goes through.
    # A real chain: odom -> base_link (dynamic, sampled around the image stamp) -> camera (static,
    # via camera_link). The node must compose it and interpolate odometry at the image stamp.
    buf = node._tf_buffer
    T_base_link = make_T(np.eye(3), [0.2, 0.0, 0.5])
    T_link_cam = make_T(R_BODY_OPTICAL, [0.0, 0.0, 0.0])
    T_base_cam = T_base_link @ T_link_cam
    buf.set_transform_static(M.make_transform_stamped(T, T_base_link, "base_link", "camera_link", 0))
    buf.set_transform_static(M.make_transform_stamped(T, T_link_cam, "camera_link", CAM, 0))
    before = make_T(rotvec_to_matrix([0, 0, 0.2]), [1.0, 2.0, 0.0])
    after = make_T(rotvec_to_matrix([0, 0, 0.4]), [1.2, 2.0, 0.0])
    buf.set_transform(M.make_transform_stamped(T, before, "odom", "base_link", stamp(1) - 10_000_000))
    buf.set_transform(M.make_transform_stamped(T, after, "odom", "base_link", stamp(1) + 10_000_000))
    T_odom_base = make_T(rotvec_to_matrix([0, 0, 0.3]), [1.1, 2.0, 0.0])  # halfway: the image stamp
    feed(node, stamp(1))  # its transforms are there: submitted without waiting for the timer
    settle(node)
    assert recon.processed == [stamp(1)] and node._tf_timer.is_canceled()
    assert np.allclose(recon.frames[0].T_odom_cam, T_odom_base @ T_base_cam)
    # map is the body's first pose: T_map_recon = T_base_cam, so T_map_base(first) = identity.
    pose = M.pose_to_matrix(pub(node, "pose").messages[-1])
    assert np.allclose(pose, np.eye(4), atol=1e-9)
    tf = node._tf_pub.sent[-1]
    assert (tf.header.frame_id, tf.child_frame_id) == ("map", "odom")
    T_map_odom = M.transform_to_matrix(tf)
    assert np.allclose(T_map_odom @ T_odom_base, pose, atol=1e-9)  # map -> odom -> base = estimate
    static = node._tf_static_pub.sent[-1]
    assert np.allclose(M.transform_to_matrix(static), T_base_cam, atol=1e-9)


def test_time_jump_backwards_resets_cleanly(ros):
    node, recon = start(ros, overrides={"frames.time_jump_confirm_frames": 1})
    for i in range(5):
        feed(node, stamp(100 + i))
        settle(node)
    assert recon.resets == 0 and len(pub(node, "pose").messages) == 5
    feed(node, stamp(0))  # the bag looped
    settle(node)
    feed(node, stamp(1))
    settle(node)
    assert recon.resets == 1
    assert recon.processed[-2:] == [stamp(0), stamp(1)]  # frames after the jump are mapped
    assert node.counters()["time_jumps"] == 1
    assert any("jumped backwards" in m for m in node.get_logger().messages("warning"))
    assert node._tf_buffer.cleared == 1
    # The map restarted: the first pose after the jump is the origin again.
    assert np.allclose(M.pose_to_matrix(pub(node, "pose").messages[-2])[:3, 3], 0.0)
    empty = [m for m in pub(node, "map_cloud").messages if m.width * m.height == 0]
    assert empty, "an empty latched map is published so that RViz clears"


def test_one_late_frame_is_skipped_a_restart_resets(ros):
    """A live camera's single late stamp must not wipe the map; a sustained jump (a bag restart)
    resets it once the configured number of late messages arrived in a row."""
    node, recon = start(ros)  # default: 3 late messages of one stream in a row
    for i in range(3):
        feed(node, stamp(100 + i))
        settle(node)
    node.get_clock().set_ns(stamp(0))
    node.subscriptions["/image"].callback(image_msg(stamp(0)))  # one image 3.3 s in the past
    feed(node, stamp(103))
    settle(node)
    assert recon.resets == 0 and recon.processed[-1] == stamp(103)
    assert node.counters()["stamp_outliers"] == 1 and "time_jumps" not in node.counters()
    assert any("skipped a 'image' message" in m for m in node.get_logger().messages("warning"))
    for i in range(3):  # the stream really went back in time: reset on the third in a row
        feed(node, stamp(i))
        settle(node)
    assert recon.resets == 1 and node.counters()["time_jumps"] == 1
    assert recon.processed[-1] == stamp(2)


def test_bad_messages_are_counted_and_skipped(ros):
    node, recon = start(ros)
    feed(node, stamp(0))
    settle(node)
    # Wrong encoding on the colour topic.
    node.get_clock().set_ns(stamp(1))
    node.subscriptions["/camera_info"].callback(info_msg(stamp(1)))
    node.subscriptions["/image"].callback(image_msg(stamp(1), encoding="32FC1"))
    node.subscriptions["/camera_info"].callback(info_msg(stamp(1) + 25_000_000))
    settle(node)
    # Size change mid-stream (camera_info follows the new size, so it is the image size that is refused).
    feed(node, stamp(2), w=W * 2, h=H * 2)
    settle(node)
    # A truncated image.
    broken = image_msg(stamp(3))
    broken.data = broken.data[:10]
    node.subscriptions["/camera_info"].callback(info_msg(stamp(3)))
    node.subscriptions["/image"].callback(broken)
    node.subscriptions["/camera_info"].callback(info_msg(stamp(3) + 25_000_000))
    settle(node)
    # A message without a header.
    node.subscriptions["/image"].callback(object())
    feed(node, stamp(4))
    settle(node)
    assert recon.processed == [stamp(0), stamp(4)]
    c = node.counters()
    assert c["bad_messages"] == 4 and c.get("errors", 0) == 0
    warnings = " ".join(node.get_logger().messages("warning"))
    assert "32FC1" in warnings and "size changed" in warnings


# -- services -------------------------------------------------------------------------------------
def test_save_map_writes_atomically_and_returns_absolute_path(ros, tmp_path):
    from std_srvs.srv import Trigger
    node, recon = start(ros, overrides={"save.directory": str(tmp_path / "maps")})
    empty = node.services[f"{NS}/save_map"].call(Trigger.Request())
    assert not empty.success and "nothing saved" in empty.message
    for i in range(3):
        feed(node, stamp(i))
        settle(node)
    resp = node.services[f"{NS}/save_map"].call(Trigger.Request())
    assert resp.success
    out = Path(resp.message)
    assert out.is_absolute() and out.parent == (tmp_path / "maps").resolve()
    assert sorted(p.name for p in out.iterdir()) == ["map.ply", "trajectory.tum"]
    assert "element vertex 60" in (out / "map.ply").read_text()


def test_interrupted_save_leaves_no_folder(ros, tmp_path):
    """A save that fails half-way (disk full, Ctrl-C, ...) leaves no map_* folder and no litter."""
    from std_srvs.srv import Trigger
    node, recon = start(ros, overrides={"save.directory": str(tmp_path)})
    for i in range(3):
        feed(node, stamp(i))
        settle(node)
    real_snapshot = recon.save_snapshot

    def failing_snapshot():
        snap = real_snapshot()
        write = snap.write

        def write_then_fail(directory):
            write(directory)  # the files are written ...
            raise OSError("No space left on device")  # ... and then the save fails

        snap.write = write_then_fail
        return snap

    recon.save_snapshot = failing_snapshot
    resp = node.services[f"{NS}/save_map"].call(Trigger.Request())
    assert not resp.success and "No space left" in resp.message
    assert list(tmp_path.iterdir()) == []
    recon.save_snapshot = real_snapshot
    assert node.services[f"{NS}/save_map"].call(Trigger.Request()).success
    assert [p.name.startswith("map_") for p in tmp_path.iterdir()] == [True]


def test_frames_are_tracked_while_a_save_is_written(ros, tmp_path):
    """The worker only freezes the map; the files are written on the service's thread, so
    frames arriving during a long save are processed, not dropped."""
    from std_srvs.srv import Trigger
    node, recon = start(ros, overrides={"save.directory": str(tmp_path)})
    for i in range(2):
        feed(node, stamp(i))
        settle(node)
    real_snapshot, writing, release = recon.save_snapshot, threading.Event(), threading.Event()

    def slow_snapshot():
        snap = real_snapshot()
        write = snap.write

        def slow_write(directory):
            writing.set()
            assert release.wait(10.0)
            return write(directory)

        snap.write = slow_write
        return snap

    recon.save_snapshot = slow_snapshot
    answer = {}
    service = threading.Thread(target=lambda: answer.update(
        r=node.services[f"{NS}/save_map"].call(Trigger.Request())))
    service.start()
    assert writing.wait(10.0)
    for i in range(2, 5):
        feed(node, stamp(i))
        settle(node)
    assert recon.processed == [stamp(i) for i in range(5)]  # tracked during the save
    release.set()
    service.join(10.0)
    assert answer["r"].success
    assert "element vertex 40" in (Path(answer["r"].message) / "map.ply").read_text()  # the map of frame 2


def test_reset_and_pause_services(ros):
    from std_srvs.srv import SetBool, Trigger
    node, recon = start(ros)
    feed(node, stamp(0))
    settle(node)
    r = node.services[f"{NS}/set_paused"].call(SetBool.Request(data=True))
    assert r.success and r.message == "paused"
    feed(node, stamp(1))
    settle(node)
    assert recon.processed == [stamp(0)] and node.counters()["paused"] == 1
    node.services[f"{NS}/set_paused"].call(SetBool.Request(data=False))
    feed(node, stamp(2))
    settle(node)
    assert recon.processed == [stamp(0), stamp(2)]
    assert pub(node, "keyframe_poses").messages[-1].poses  # the refiner's input has keyframes
    r = node.services[f"{NS}/reset"].call(Trigger.Request())
    assert r.success and recon.resets == 1
    assert pub(node, "path").messages[-1].poses == []
    # the reset reaches recon_refiner: an empty keyframe path starts its new session
    assert pub(node, "keyframe_poses").messages[-1].poses == []
    # the reset service runs with the inputs (one owner of the input-side state), not beside them
    assert node.services[f"{NS}/reset"].callback_group is node.subscriptions["/image"].callback_group


def test_services_answer_when_not_configured(ros):
    node, _ = start(ros)
    node.trigger_deactivate()
    save = node._srv_save_map
    node.trigger_cleanup()
    from std_srvs.srv import Trigger
    resp = save(Trigger.Request(), Trigger.Response())
    assert not resp.success and "not configured" in resp.message


def test_corrected_path_re_anchors_keyframes(ros):
    node, recon = start(ros)
    for i in range(4):
        feed(node, stamp(i))
        settle(node)
    T_map_recon = make_T(R_BODY_OPTICAL, np.zeros(3))
    shift = make_T(np.eye(3), [0.0, 1.0, 0.0])  # the refiner moved every keyframe 1 m left
    corrected = [(stamp(i), shift @ T_map_recon @ camera_pose(i)) for i in (0, 2)]
    node.subscriptions["/corrected_path"].callback(M.make_path(T, corrected, "map", stamp(2)))
    settle(node)
    got = recon.corrections[-1]
    assert sorted(got) == [stamp(0), stamp(2)]
    for s, T_map in corrected:  # handed to the core in recon_world
        assert np.allclose(got[s], invert_T(T_map_recon) @ T_map, atol=1e-9)
    path = pub(node, "path").messages[-1]
    assert np.allclose(M.pose_to_matrix(path.poses[1]), corrected[1][1], atol=1e-9)
    assert node.counters()["corrections_applied"] == 1
    # the refiner's input keeps the frontend poses, so its corrections are never applied twice
    front = pub(node, "keyframe_poses").messages[-1]
    assert np.allclose(M.pose_to_matrix(front.poses[1]), T_map_recon @ camera_pose(2), atol=1e-9)


def test_refined_keyframes_replace_keyframe_depth(ros):
    node, recon = start(ros)
    for i in range(3):
        feed(node, stamp(i))
        settle(node)
    kf = recon.keyframes()[0]
    refined = kf.points_cam * np.float32(0.9)
    cloud = M.make_pointcloud2(T, refined, kf.stamp_ns, CAM, colors=kf.colors, confidence=kf.confidence)
    node.subscriptions["/refined_keyframes"].callback(cloud)
    settle(node)
    assert [s for s, _ in recon.refined] == [kf.stamp_ns]
    np.testing.assert_allclose(recon.refined[0][1], refined, rtol=1e-6)
    assert node.counters()["refined_keyframes_applied"] == 1
    # an unorganised cloud is counted and skipped, never a crash
    bad = M.make_pointcloud2(T, refined.reshape(-1, 3), kf.stamp_ns, CAM, colors=kf.colors.reshape(-1, 3),
                             confidence=kf.confidence.reshape(-1))
    before = node.counters().get("bad_messages", 0)
    node.subscriptions["/refined_keyframes"].callback(bad)
    settle(node)
    assert node.counters()["bad_messages"] == before + 1 and len(recon.refined) == 1


# -- diagnostics, shutdown ------------------------------------------------------------------------
def test_diagnostics_report_health(ros):
    node, recon = start(ros)
    status = node._diag.force_update()[0]
    assert status.level == 2 and "no matched input" in status.message
    for i in range(3):
        feed(node, stamp(i))
        settle(node)
    node.get_clock().set_ns(stamp(2) + 10_000_000)
    status = node._diag.force_update()[0]
    assert status.level == 0, status.message  # healthy: 3 frames at 30 Hz, fresh stamps
    # map points: those of the latest ~/map_cloud (published at its rate: after the first frame)
    assert status.values["map points"] == str(pub(node, "map_cloud").messages[-1].width) == "20"
    assert status.values["processed"] == "3"
    # an input rate below diagnostics.min_rate_hz is a warning, not OK
    from rclpy.parameter import Parameter
    assert node.set_parameters([Parameter(name="diagnostics.min_rate_hz", value=100.0)])[0].successful
    status = node._diag.force_update()[0]
    assert status.level == 1 and "rate" in status.message, status.message


def test_core_is_only_touched_by_the_worker(ros):
    """Diagnostics read the worker's statistics snapshot; they never call into the core from
    their own thread (where they could race with the frame being processed)."""
    node, recon = start(ros)
    callers = []
    stats = recon.stats

    def recording_stats():
        callers.append(threading.current_thread().name)
        return stats()

    recon.stats = recording_stats
    for i in range(3):
        feed(node, stamp(i))
        settle(node)
    node.get_clock().set_ns(stamp(2) + 10_000_000)
    status = node._diag.force_update()[0]
    assert status.values["map points"] == "20"  # the latest ~/map_cloud
    assert callers and set(callers) == {"recon_gpu"}, callers
    assert "input rate (Hz)" in status.values and "GPU memory (MB)" in status.values


def test_no_data_warning_names_topics_and_counts(ros):
    node, _ = start(ros)
    node.subscriptions["/image"].callback(image_msg(stamp(0)))  # an image, never its camera_info
    node.get_clock().set_ns(node._activated_ns + 6_000_000_000)
    node._housekeeping()
    msg = node.get_logger().messages("warning")[-1]
    assert "/image" in msg and "/camera_info" in msg and "image=1" in msg and "sensor_data" in msg


def test_autosave_on_shutdown(ros, tmp_path):
    node, recon = start(ros, overrides={"save.directory": str(tmp_path), "save.on_shutdown": True})
    for i in range(2):
        feed(node, stamp(i))
        settle(node)
    node.finish()
    saved = list(tmp_path.glob("map_*/map.ply"))
    assert len(saved) == 1
    node.finish()  # idempotent
    assert len(list(tmp_path.glob("map_*"))) == 1


def test_main_exits_cleanly_on_ctrl_c_with_a_complete_shutdown_save(ros, tmp_path, monkeypatch):
    """main(): Ctrl-C (twice, as terminal + launch send it) and SIGTERM only end the spin loop; the
    shutdown save completes, the context is shut down last, Python's handlers come back."""
    import os
    import signal

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    made = {}
    node_cls = ros.ReconNode

    def build():
        node = node_cls(core_cls=FakeCoreConfig, reconstructor_factory=FakeReconstructor,
                             parameter_overrides=[Parameter(name="save.directory", value=str(tmp_path)),
                                                  Parameter(name="save.on_shutdown", value=True)])
        made["node"] = node
        return node

    def tick(executor):
        node = made["node"]
        if executor.spins == 1:  # a few frames arrive
            for i in range(3):
                feed(node, stamp(i))
                settle(node)
        elif executor.spins == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the second one must not interrupt the save
            os.kill(os.getpid(), signal.SIGTERM)
        elif executor.spins > 3:
            raise AssertionError("the loop did not end after SIGINT")

    monkeypatch.setattr(ros, "ReconNode", lambda: build())
    monkeypatch.setattr(MultiThreadedExecutor, "on_spin_once", staticmethod(tick))
    before = signal.getsignal(signal.SIGINT)
    ros.main([])  # returns normally: no KeyboardInterrupt, no traceback
    assert signal.getsignal(signal.SIGINT) is before
    assert not rclpy.ok()
    saved = [p for p in tmp_path.iterdir()]
    assert len(saved) == 1 and saved[0].name.startswith("map_"), saved
    assert "element vertex 60" in (saved[0] / "map.ply").read_text()
    assert any("SIGINT: shutting down" in m for m in made["node"].get_logger().messages("info"))


def test_lifecycle_shutdown_ends_the_process_loop(ros, tmp_path):
    """After the lifecycle 'shutdown' transition the node asks main() to leave its loop; the
    shutdown save happens there (finish), after the transition has answered."""
    node, recon = start(ros, overrides={"save.directory": str(tmp_path), "save.on_shutdown": True})
    feed(node, stamp(0))
    settle(node)
    assert not node.shutdown_requested.is_set()
    node.trigger_shutdown()
    assert node.state_label == "finalized" and node.shutdown_requested.is_set()
    assert not node.subscriptions  # no more input after shutdown
    node.finish()  # what main() does when its loop ends
    assert len(list(tmp_path.glob("map_*/map.ply"))) == 1


def test_lost_tracking_is_visible_not_hidden_behind_a_held_pose(ros):
    """Frames the frontend cannot place publish no pose/TF (a held pose with a fresh stamp would
    hide the loss); diagnostics warn until tracking recovers."""
    node, recon = start(ros)
    recon.lost = {stamp(2), stamp(3)}
    for i in range(5):
        feed(node, stamp(i))
        settle(node)
    stamps = [M.stamp_to_ns(m.header.stamp) for m in pub(node, "pose").messages]
    assert stamps == [stamp(0), stamp(1), stamp(4)]
    assert [M.stamp_to_ns(t.header.stamp) for t in node._tf_pub.sent] == stamps
    assert node.counters()["tracking_lost"] == 2
    assert any("tracking lost (2 frame(s) in a row: test double" in m or "tracking lost (1 frame(s) in a row: test double" in m
               for m in node.get_logger().messages("warning"))
    states = [m.data for m in pub(node, "tracking_state").messages]
    assert states == ["tracking", "lost", "tracking"], states
    assert any("recovered after 2 lost frame(s)" in m for m in node.get_logger().messages("info"))
    recon.lost = {stamp(5)}
    feed(node, stamp(5))
    settle(node)
    node.get_clock().set_ns(stamp(5) + 10_000_000)
    status = node._diag.force_update()[0]
    assert status.level == 1 and "tracking lost for 1 frame" in status.message, status.message


def test_pauses_in_processing_reach_the_frontend(ros, tmp_path):
    """A refiner correction and a deactivate/activate each pause the worker; the core hears of
    it (notify_gap) so the tracker re-initialises instead of failing frame after frame. A save
    does not pause it (the worker only freezes the map; the files are written elsewhere)."""
    from std_srvs.srv import Trigger

    node, recon = start(ros, overrides={"save.directory": str(tmp_path)})
    for i in range(3):
        feed(node, stamp(i))
        settle(node)
    assert recon.gaps == 1  # the first frame after activation
    assert node.services[f"{NS}/save_map"].call(Trigger.Request()).success
    assert recon.gaps == 1
    T_map_recon = make_T(R_BODY_OPTICAL, np.zeros(3))
    node.subscriptions["/corrected_path"].callback(
        M.make_path(T, [(stamp(0), T_map_recon @ camera_pose(0))], "map", stamp(2)))
    settle(node)
    assert recon.gaps == 2
    assert node.trigger_deactivate() == 97 and node.trigger_activate() == 97
    feed(node, stamp(3))
    settle(node)
    assert recon.gaps == 3
    feed(node, stamp(4))
    settle(node)
    assert recon.gaps == 3  # steady frames are no gap


def test_mesh_and_occupancy_are_published_latched_in_map(ros, monkeypatch):
    """~/map_mesh (Marker TRIANGLE_LIST) and ~/occupancy (OccupancyGrid) come from the core's
    volume, transformed into ``map``, transient-local, at products_rate_hz."""
    from rclpy.qos import QoSDurabilityPolicy

    # only the rate is under test: a loaded machine's slow extraction must not start the
    # products thread's rest (test_map_extraction_keeps_to_its_share_of_the_cpu covers that)
    monkeypatch.setattr(ros, "MAP_REST_AFTER_S", 60.0)

    node, recon = start(ros, overrides={"publish.products_rate_hz": 5.0})
    slow = [2_000_000_000 + i * 300_000_000 for i in range(3)]  # further apart than 1/rate
    for s in slow:
        feed(node, s)
        settle(node)
    mesh_pub, grid_pub = pub(node, "map_mesh"), pub(node, "occupancy")
    assert mesh_pub.qos.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL
    assert grid_pub.qos.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL
    assert mesh_pub.messages and grid_pub.messages
    marker = mesh_pub.messages[-1]
    assert marker.type == 11 and marker.header.frame_id == "map"
    verts, faces, _, _ = recon.mesh()
    T_map_recon = make_T(R_BODY_OPTICAL, np.zeros(3))
    want = (T_map_recon[:3, :3] @ verts[faces.reshape(-1)].T).T
    got = np.array([[p.x, p.y, p.z] for p in marker.points])
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-5)
    data, res, _ = M.occupancy_grid_to_numpy(grid_pub.messages[-1])
    assert res == pytest.approx(0.1) and np.array_equal(data, recon.occupancy().data)
    # the rate holds them back between frames that are closer than 1/rate
    n = len(mesh_pub.messages)
    assert n == 3
    feed(node, slow[-1] + 33_000_000)
    settle(node)
    assert len(mesh_pub.messages) == n


def slow_map_extraction(recon, wait) -> list:
    """Make every map snapshot of ``recon`` call ``wait()`` before its cloud is extracted;
    returns the snapshots made."""
    snapshots = []
    make = recon.map_snapshot

    def slow_snapshot():
        snap = make()
        original = snap.fused_cloud

        def fused_cloud():
            wait()
            return original()

        snap.fused_cloud = fused_cloud
        snapshots.append(snap)
        return snap

    recon.map_snapshot = slow_snapshot
    return snapshots


def test_map_outputs_are_extracted_beside_the_worker(ros):
    """~/map_cloud, ~/map_mesh and ~/occupancy are extracted from a snapshot on their own
    thread: a slow extraction (here 0.5 s) never holds up the frames, and a snapshot that
    could not be published before the next one keeps what it was due to publish."""
    node, recon = start(ros, overrides={"publish.products_rate_hz": 5.0, "publish.map_cloud_rate_hz": 5.0})
    release = threading.Event()
    snapshots = slow_map_extraction(recon, lambda: release.wait(5.0))
    for i in range(4):
        feed(node, 2_000_000_000 + i * 300_000_000)
        assert node._worker.wait_idle(10.0)  # frames go on while the first extraction waits
    assert len(pub(node, "pose").messages) == 4
    assert not pub(node, "map_cloud").messages
    release.set()
    settle(node)
    assert {t for s in snapshots for t in s.threads} == {"recon_map_products"}
    clouds, meshes = pub(node, "map_cloud").messages, pub(node, "map_mesh").messages
    assert 1 <= len(clouds) < 4 and len(meshes) == len(clouds)  # waiting snapshots were replaced
    assert clouds[-1].width == 4 * 20  # the newest snapshot: every frame's points


def test_map_extraction_keeps_to_its_share_of_the_cpu(ros):
    """A slow ~/map_cloud extraction (0.2 s here) makes the next periodic one wait three times
    as long, whatever publish.map_cloud_rate_hz asks for; a forced one (a reset) does not wait."""
    from std_srvs.srv import Trigger

    node, recon = start(ros, overrides={"publish.map_cloud_rate_hz": 30.0, "publish.products_rate_hz": 0.0})
    slow_map_extraction(recon, lambda: time.sleep(0.2))
    clouds = pub(node, "map_cloud").messages
    feed(node, stamp(0))
    settle(node)
    assert len(clouds) == 1
    for i in (1, 2):  # due by the rate, but within the rest after the slow extraction
        feed(node, stamp(0) + i * 100_000_000)
        settle(node)
    assert len(clouds) == 1
    time.sleep(0.65)
    feed(node, stamp(0) + 300_000_000)
    settle(node)
    assert len(clouds) == 2
    assert node.services[f"{NS}/reset"].call(Trigger.Request()).success  # forced: published at once
    settle(node)
    assert len(clouds) == 3 and clouds[-1].width == 0


@dataclass
class ReplayCoreConfig(FakeCoreConfig):
    """FakeCoreConfig with the replay's output settings (what run_replay reads)."""

    output: OutputConfig = group(OutputConfig)


def test_replay_output_bag_carries_what_the_node_publishes(ros, tmp_path):
    """One pipeline: the same frames through recon_node (stand-in) and through ``recon-ros
    replay``'s loop (run_replay, output bag) give the same poses, TF, keyframe path, tracking
    states and map, in the same frames, with one lost frame in between."""
    from rosbags.rosbag2 import Reader

    from recon_ros.mapping.frame import Frame
    from recon_ros.pipeline.replay import run_replay

    n, lost = 6, {stamp(3)}
    node, recon = start(ros)
    recon.lost = set(lost)
    for i in range(n):
        feed(node, stamp(i))
        settle(node)
    node.get_clock().set_ns(stamp(n) + 5_000_000_000)
    node._worker.call(node._maybe_publish_map, True)  # the final map, as the replay writes it
    settle(node)

    replayed = FakeReconstructor(ReplayCoreConfig())
    replayed.lost = set(lost)
    frames = [Frame(stamp_ns=stamp(i), rgb=np.full((H, W, 3), 100, np.uint8), K=K, frame_id=CAM, index=i)
              for i in range(n)]
    run_replay(replayed, iter(frames), tmp_path / "out", progress=False)
    bag: dict = {}
    with Reader(tmp_path / "out" / "recon_bag") as reader:
        for conn, _, raw in reader.messages():
            bag.setdefault(conn.topic, []).append(T.typestore.deserialize_cdr(raw, conn.msgtype))

    def poses(msgs):
        return [(M.stamp_to_ns(m.header.stamp), m.header.frame_id, M.pose_to_matrix(m)) for m in msgs]

    node_poses, bag_poses = poses(pub(node, "pose").messages), poses(bag["/recon/pose"])
    assert [p[:2] for p in bag_poses] == [p[:2] for p in node_poses] and len(node_poses) == n - len(lost)
    for (_, _, a), (_, _, b) in zip(node_poses, bag_poses):
        np.testing.assert_allclose(b, a, atol=1e-9)
    node_tf = [(t.header.frame_id, t.child_frame_id, M.stamp_to_ns(t.header.stamp)) for t in node._tf_pub.sent]
    bag_tf = [(t.header.frame_id, t.child_frame_id, M.stamp_to_ns(t.header.stamp))
              for m in bag["/tf"] for t in m.transforms]
    assert bag_tf == node_tf
    (static,) = [t for m in bag["/tf_static"] for t in m.transforms]
    np.testing.assert_allclose(M.transform_to_matrix(static), M.transform_to_matrix(node._tf_static_pub.sent[0]))
    assert [m.data for m in bag["/recon/tracking_state"]] == [m.data for m in pub(node, "tracking_state").messages] \
        == ["tracking", "lost", "tracking"]
    node_path, bag_path = pub(node, "path").messages[-1], bag["/recon/path"][-1]
    assert [M.stamp_to_ns(p.header.stamp) for p in bag_path.poses] == \
        [M.stamp_to_ns(p.header.stamp) for p in node_path.poses]
    for a, b in zip(node_path.poses, bag_path.poses):
        np.testing.assert_allclose(M.pose_to_matrix(b), M.pose_to_matrix(a), atol=1e-9)
    node_map = M.pointcloud2_to_xyz(pub(node, "map_cloud").messages[-1])["points"].reshape(-1, 3)
    bag_map = M.pointcloud2_to_xyz(bag["/recon/map_cloud"][-1])["points"].reshape(-1, 3)
    assert len(node_map) == len(bag_map) > 0
    np.testing.assert_allclose(bag_map, node_map, atol=1e-6)
    assert bag["/recon/map_cloud"][-1].header.frame_id == pub(node, "map_cloud").messages[-1].header.frame_id
