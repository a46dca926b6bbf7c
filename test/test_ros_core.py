"""The pure-Python parts of the ROS layer (no rclpy needed): schema, worker, TF bookkeeping,
stamp monitoring, keyframe store, and the message conversions with the real rosbags message
classes (serialised to CDR and read back, as ROS 2 would)."""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
import yaml

from recon_ros import config as C
from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.geometry.camera import PixelMap
from recon_ros.geometry.transforms import make_T, rotvec_to_matrix, transform_points
from recon_ros.io import messages as M
from recon_ros.mapping.frame import Keyframe
from recon_ros.ros import convert, schema as S
from recon_ros.ros import tf as rtf
from recon_ros.ros.keyframe_store import KeyframeStore
from recon_ros.ros.stamps import ERROR, OK, WARN, HealthInputs, JumpDetector, StampMonitor, health_summary
from recon_ros.ros.worker import GpuWorker

from rclpy_standin.doubles import FakeCoreConfig

T = M.rosbags_types()


# -- schema ---------------------------------------------------------------------------------------
def test_node_schema_is_the_union_and_validates():
    sch = S.recon_node_schema(FakeCoreConfig)
    names = sch.names()
    assert "map.voxel_size_m" in names and "input.qos" in names and "frames.map_frame" in names
    assert len(names) == len(set(names))
    assert sch.get("input.qos") == "sensor_data"
    sch.set("map.voxel_size_m", "0.1")
    assert sch.core.map.voxel_size_m == 0.1
    with pytest.raises(UserInputError, match="did you mean"):
        sch.set("input.qoss", "reliable")
    # all-or-nothing run-time check on copies
    assert "cannot change" in sch.check_runtime_change({"input.qos": "reliable"})
    assert "above" in sch.check_runtime_change({"publish.map_cloud_rate_hz": 1.0, "map.voxel_size_m": 9.0})
    assert sch.ros.publish.map_cloud_rate_hz == 1.0 and sch.core.map.voxel_size_m == 0.1
    assert sch.check_runtime_change({"use_sim_time": True}) is None  # not ours


def test_schema_group_clash_is_refused():
    @dataclass
    class Clashing:
        input: S.InputConfig = C.group(S.InputConfig)

    with pytest.raises(ValueError, match="both"):
        S.NodeSchema(Clashing(), S.ReconNodeConfig())


def test_missing_core_class_is_a_clear_error():
    with pytest.raises(UserInputError, match="not available"):
        S.load_class("recon_ros.nonexistent:Cfg")


def test_schema_yaml_round_trip():
    sch = S.recon_node_schema(FakeCoreConfig)
    text = sch.dump_yaml(header="recon_node parameters")
    data = yaml.safe_load(text)
    params = data["/**"]["ros__parameters"]
    assert params["input"]["qos"] == "sensor_data" and params["map"]["voxel_size_m"] == 0.02
    flat = dict(C._flatten(params))
    assert sorted(flat) == sorted(sch.names())
    for spec in sch.specs():
        assert flat[spec.name] == spec.default


def test_every_ros_parameter_is_documented_and_sane():
    for cls in (S.ReconNodeConfig, S.RefinerNodeConfig):
        for spec in C.iter_params(cls):
            assert len(spec.doc) > 10, spec.name
            if spec.type in (int, float) and spec.min is not None:
                assert spec.min <= spec.default <= (spec.max if spec.max is not None else np.inf), spec.name
            if spec.choices:
                assert spec.default in spec.choices


def test_params_descriptors_from_schema():
    """params.py with the stand-in's rcl_interfaces records (a test double)."""
    from rclpy_standin import installed
    with installed():
        from recon_ros.ros import params
        from rcl_interfaces.msg import ParameterType
        sch = S.recon_node_schema(FakeCoreConfig)
        for spec in sch.specs():
            d = params.descriptor(spec)
            assert d.read_only == (not spec.dynamic)
            if spec.choices:
                assert all(str(c) in d.additional_constraints for c in spec.choices)
        d = params.descriptor(C.spec_of(S.ReconNodeConfig, "input.queue_size"))
        assert d.type == ParameterType.PARAMETER_INTEGER
        assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == (1, 100)
        d = params.descriptor(C.spec_of(S.ReconNodeConfig, "frames.tf_timeout_s"))
        assert d.dynamic_typing and d.floating_point_range[0].to_value == 30.0


# -- worker ---------------------------------------------------------------------------------------
def test_worker_latest_frame_wins_and_tasks_first():
    gate = threading.Event()
    seen = []

    def handle(x):
        if x == 0:
            gate.wait(5.0)
        seen.append(x)

    w = GpuWorker(handle)
    w.start()
    w.submit(0)
    deadline = time.monotonic() + 5
    while not w.stats().busy and time.monotonic() < deadline:
        time.sleep(0.001)
    assert w.submit(1) is False
    assert w.submit(2) is True  # replaced 1
    assert w.submit(3) is True  # replaced 2
    fut = w.call(lambda: seen.append("task") or 42)
    gate.set()
    assert fut.result(5.0) == 42
    assert w.wait_idle(5.0)
    assert seen == [0, "task", 3]
    st = w.stats()
    assert (st.submitted, st.processed, st.dropped) == (4, 2, 2)
    assert w.stop(5.0) and not w.running
    assert isinstance(w.call(lambda: 1).exception(1.0), RuntimeError)


def test_worker_survives_handler_errors():
    errors = []
    w = GpuWorker(lambda x: 1 / x, on_error=errors.append)
    w.start()
    for x in (0, 1):
        w.submit(x)
        assert w.wait_idle(5.0)
    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)
    st = w.stats()
    assert (st.processed, st.failed) == (1, 1)
    assert isinstance(w.call(lambda: 1 / 0).exception(5.0), ZeroDivisionError)
    w.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice levels are Linux's")
def test_worker_thread_nice_applies_to_its_thread_only():
    me = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = []
    w = GpuWorker(lambda x: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())), nice=5)
    w.start()
    w.submit(0)
    assert w.wait_idle(5.0) and w.stop(5.0)
    assert seen == [min(19, me + 5)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == me  # the caller's is unchanged


# -- frames ---------------------------------------------------------------------------------------
def _random_pose(rng):
    return make_T(rotvec_to_matrix(rng.normal(size=3)), rng.normal(size=3))


def test_map_to_odom_composes_to_the_estimate():
    rng = np.random.default_rng(0)
    for _ in range(5):
        T_map_base, T_odom_base = _random_pose(rng), _random_pose(rng)
        T_map_odom = rtf.map_to_odom(T_map_base, T_odom_base)
        assert np.allclose(T_map_odom @ T_odom_base, T_map_base, atol=1e-9)


def test_map_anchor_and_body_pose():
    # Without a mounting: optical axes -> z-up, so the optical z axis (forward) is map +x.
    T = rtf.map_from_recon(None)
    assert np.allclose(transform_points(T, np.array([0, 0, 1.0])), [1, 0, 0])
    assert np.allclose(transform_points(T, np.array([0, 1.0, 0])), [0, 0, -1])  # optical y is down
    rng = np.random.default_rng(1)
    T_base_cam = _random_pose(rng)
    T_map_recon = rtf.map_from_recon(T_base_cam)
    T_map_cam0 = rtf.pose_in_map(T_map_recon, np.eye(4))
    assert np.allclose(rtf.body_pose(T_map_cam0, T_base_cam), np.eye(4), atol=1e-9)  # map = first body pose
    T_map_cam = _random_pose(rng)
    assert np.allclose(rtf.recon_from_map(T_map_recon, rtf.pose_in_map(T_map_recon, T_map_cam)), T_map_cam)


def test_rigid_strips_scale_and_correction():
    R = rotvec_to_matrix([0.1, -0.2, 0.3])
    sim = make_T(R, [1, 2, 3], scale=2.5)
    r = rtf.rigid(sim)
    assert np.allclose(r[:3, :3], R) and np.allclose(r[:3, 3], [1, 2, 3])
    C_ = make_T(np.eye(3), [0, 0, 1], scale=2.0)
    pose = make_T(np.eye(3), [1, 0, 0])
    assert np.allclose(rtf.apply_correction(C_, pose)[:3, 3], [2, 0, 1])


def test_plan_never_reparents_the_camera_when_a_base_is_set():
    assert rtf.plan_tf("map", "odom", "base_link", "cam") == rtf.TfPlan("map", "odom", True)
    assert rtf.plan_tf("map", "", "base_link", "cam") == rtf.TfPlan("map", "base_link", False)
    assert rtf.plan_tf("map", "", "", "cam") == rtf.TfPlan("map", "cam", False)


def test_tf_wait_queue():
    q = rtf.TfWaitQueue(timeout_ns=100, max_size=2)
    available = set()
    look = lambda item, stamp: ("tf", item) if item in available else None  # noqa: E731
    assert q.push("a", 1, now_ns=0) is None
    assert q.push("b", 2, now_ns=50) is None
    assert q.push("c", 3, now_ns=60) == "a"  # bounded: oldest dropped
    available.add("c")
    ready, expired = q.poll(120, look)
    assert ready == [("c", ("tf", "c"))] and expired == []
    ready, expired = q.poll(151, look)
    assert ready == [] and expired == ["b"] and len(q) == 0


# -- stamps ---------------------------------------------------------------------------------------
def test_jump_detector_per_stream_and_once_per_restart():
    j = JumpDetector(tolerance_ns=10)
    assert not any(j.observe(s, t) for s, t in [("image", 100), ("info", 100), ("image", 200), ("info", 195)])
    assert not j.observe("image", 195)  # within tolerance
    assert j.observe("info", 5)  # the bag restarted
    assert not j.observe("image", 5)  # same restart: not reported twice
    assert j.jumps == 1


def test_stamp_monitor_rate_and_delay():
    m = StampMonitor(window=10)
    for i in range(11):
        m.observe(stamp_ns=i * 100_000_000, now_ns=i * 100_000_000 + 20_000_000)
    assert np.isclose(m.rate_hz(), 10.0) and np.isclose(m.delay_s(), 0.02)


def _health(**kw):
    base = dict(active=True, paused=False, rate_hz=10.0, delay_s=0.05, since_last_s=0.1, counters={"dropped": 3},
                inference_ms=50.0, map_points=100, scale=1.0, gpu_memory_mb=None, min_rate_hz=1.0,
                max_delay_s=0.5, no_data_warn_s=5.0)
    base.update(kw)
    return HealthInputs(**base)


def test_health_summary_levels():
    level, msg, values = health_summary(_health())
    assert level == OK and values["dropped"] == "3" and values["GPU memory (MB)"] == "n/a"
    assert health_summary(_health(since_last_s=None))[0] == ERROR
    assert health_summary(_health(since_last_s=9.0))[0] == ERROR
    level, msg, _ = health_summary(_health(delay_s=3.0))
    assert level == WARN and "use_sim_time" in msg
    assert health_summary(_health(rate_hz=0.5))[0] == WARN
    assert health_summary(_health(active=False))[0] == WARN
    assert health_summary(_health(paused=True, since_last_s=None))[0] == OK


# -- conversions with real message classes -----------------------------------------------------
def _cdr_round_trip(msg):
    store = T.typestore
    return store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


def _keyframe(stamp=123_000_000_456):
    h, w = 3, 4
    pts = np.random.default_rng(2).normal(size=(h, w, 3)).astype(np.float32)
    valid = np.ones((h, w), bool)
    valid[0, 0] = False
    K = np.array([[5.0, 0, 1.5], [0, 5.0, 1.0], [0, 0, 1]])
    return Keyframe(id=0, stamp_ns=stamp, rgb=np.zeros((h, w, 3), np.uint8), points_cam=pts,
                    confidence=np.arange(h * w, dtype=np.float32).reshape(h, w),
                    colors=np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3), K=K, K_image=K,
                    pixel_map=PixelMap.identity(w, h), T_world_cam=np.eye(4), valid=valid)


def test_keyframe_messages_survive_cdr_and_rebuild_in_the_store():
    kf = _keyframe()
    cloud = _cdr_round_trip(convert.keyframe_cloud(T, kf, "cam"))
    info = _cdr_round_trip(convert.keyframe_info(T, kf, "cam"))
    assert (cloud.height, cloud.width, cloud.point_step) == (3, 4, 20)
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb", "confidence"]
    assert (info.width, info.height) == (4, 3) and np.allclose(info.k.reshape(3, 3), kf.K)
    store = KeyframeStore(max_keyframes=10)
    xyz, rgb, conf = convert.cloud_arrays(cloud)
    store.add_cloud(convert.stamp_to_ns(cloud.header.stamp), cloud.header.frame_id, xyz, rgb, conf)
    store.add_info(convert.stamp_to_ns(info.header.stamp), convert.K_from_camera_info(info))
    assert store.keyframes() == []  # no pose yet
    pose = make_T(rotvec_to_matrix([0, 0.2, 0]), [1, 2, 3])
    path = _cdr_round_trip(convert.path(T, [(kf.stamp_ns, pose)], kf.stamp_ns, "map"))
    store.set_poses(convert.path_poses(path))
    (got,) = store.keyframes()
    assert got.stamp_ns == kf.stamp_ns and np.allclose(got.T_world_cam, pose)
    assert np.array_equal(got.valid, kf.valid)
    assert np.allclose(got.points_cam[kf.valid], kf.points_cam[kf.valid])
    assert np.array_equal(got.colors, kf.colors) and np.allclose(got.confidence, kf.confidence)
    assert np.allclose(got.K, kf.K)


def test_keyframe_store_is_bounded():
    store = KeyframeStore(max_keyframes=2)
    for s in (1, 2, 3):
        store.add_info(s, np.eye(3))
    assert len(store) == 2


def test_unorganised_cloud_is_refused_as_keyframe():
    msg = convert.cloud(T, np.zeros((5, 3)), np.zeros((5, 3), np.uint8), np.zeros(5), 1, "cam")
    with pytest.raises(DataFormatError, match="organised"):
        convert.cloud_arrays(msg)


def test_pose_odometry_transform_messages_survive_cdr():
    rng = np.random.default_rng(3)
    Tm = _random_pose(rng)
    ps = _cdr_round_trip(convert.pose_stamped(T, Tm, 42, "map"))
    assert np.allclose(M.pose_to_matrix(ps), Tm) and convert.stamp_to_ns(ps.header.stamp) == 42
    od = _cdr_round_trip(convert.odometry(T, Tm, 42, "map", "base_link"))
    assert od.child_frame_id == "base_link" and np.allclose(M.pose_to_matrix(od.pose), Tm)
    assert np.all(np.diag(od.pose.covariance.reshape(6, 6)) > 0)  # never a false zero covariance
    tf = _cdr_round_trip(convert.transform_stamped(T, Tm, 42, "map", "odom"))
    assert np.allclose(convert.transform_to_matrix(tf), Tm)


def test_frame_decoder_reads_messages_as_node_and_bag_reader_do():
    """recon_node and the bag reader decode matched messages with one FrameDecoder: colour in any
    encoding or compressed, depth, intrinsics (scaled for a CameraInfo of another resolution of
    the same aspect), undistortion, one image size per session; what gives no frame says why."""
    from recon_ros.io.frames import FrameDecoder, FrameSkip

    rgb = np.random.default_rng(4).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    K = np.array([[7.0, 0, 3.5], [0, 7.0, 2.5], [0, 0, 1]])
    img = _cdr_round_trip(M.make_image(T, rgb[..., ::-1].copy(), "bgr8", 77, "cam"))
    info = _cdr_round_trip(M.make_camera_info(T, K, 8, 6, 77, "cam"))
    depth = _cdr_round_trip(M.make_depth_image(T, np.full((6, 8), 1.25, np.float32), 77, "cam"))
    dec = FrameDecoder()
    f = dec.decode(img, M.camera_info_to_model(info), depth, index=3)
    assert np.array_equal(f.rgb, rgb) and np.allclose(f.K, K) and np.allclose(f.depth, 1.25)
    assert (f.stamp_ns, f.frame_id, f.index) == (77, "cam", 3)
    png = M.make_compressed_image(T, rgb, 77, "cam", fmt="png")
    assert np.array_equal(dec.decode(png).rgb, rgb)
    # the CameraInfo of the full-resolution stream for a half-resolution image: K scaled
    half = FrameDecoder().decode(img, M.camera_info_to_model(M.make_camera_info(T, 2 * K, 16, 12, 77, "cam")))
    np.testing.assert_allclose(half.K[:2, :2], K[:2, :2])
    with pytest.raises(FrameSkip, match="camera_info is for") as err:
        dec.decode(img, M.camera_info_to_model(M.make_camera_info(T, K, 16, 6, 77, "cam")))
    assert err.value.reason == "camera_info_size_mismatch"
    with pytest.raises(FrameSkip, match="depth encoding"):
        dec.decode(depth)
    big = M.make_image(T, np.zeros((12, 16, 3), np.uint8), "rgb8", 78, "cam")
    with pytest.raises(FrameSkip, match="size changed") as err:
        dec.decode(big)
    assert err.value.reason == "image_size_changed"
    dec.reset()
    assert dec.decode(big).width == 16
    # distortion: removed from image and depth, K kept
    model = M.camera_info_to_model(info)
    model.D = np.array([0.3, -0.1, 0.0, 0.0, 0.0])
    raw = FrameDecoder(undistort=False).decode(img, model)
    und = FrameDecoder().decode(img, model, depth)
    assert np.array_equal(raw.rgb, rgb) and not np.array_equal(und.rgb, rgb) and np.allclose(und.K, K)


def test_matcher_pairs_image_with_nearest_info():
    m = convert.make_matcher(["camera_info"], slop_s=0.01, queue_size=5)
    assert m.push("image", 100_000_000, "img") == []
    (match,) = m.push("camera_info", 103_000_000, "info")
    assert match.items == {"image": "img", "camera_info": "info"}
    assert m.push("image", 200_000_000, "img2") == []
    assert m.push("camera_info", 250_000_000, "far") == []  # 50 ms away: beyond the slop
    counts = convert.matcher_counts(m)
    assert counts["sync_matched"] == 1 and counts["sync_unmatched_images"] == 1


def test_configure_process_sets_torch_threads_and_nice():
    """The executables' process settings, applied in a child process (they change the whole
    process): recon_refiner's defaults put it below recon_node."""
    import subprocess
    import sys
    from pathlib import Path

    defaults = S.refiner_node_schema(FakeCoreConfig)
    threads, nice = defaults.get("process.cpu_threads"), defaults.get("process.nice")
    assert (threads, nice) == (1, 10)
    assert S.recon_node_schema(FakeCoreConfig).get("process.nice") == 0
    code = f"""
import os, sys, types
sys.path.insert(0, {str(Path(__file__).parent)!r})
from rclpy_standin import installed
with installed():
    from recon_ros.ros.spin import configure_process

    class ParameterNode:  # test double: the two parameters and a logger
        def get_parameter(self, name):
            return types.SimpleNamespace(value={{"process.cpu_threads": {threads}, "process.nice": {nice}}}[name])

        def get_logger(self):
            return types.SimpleNamespace(info=print)

    import torch
    torch.set_num_threads(2)
    configure_process(ParameterNode())
    print("RESULT", os.nice(0), torch.get_num_threads())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import os
    assert f"RESULT {max(10, os.nice(0))} 1" in out.stdout, out.stdout  # never lowered (a niced test run)
    assert "process: 1 torch CPU thread(s)" in out.stdout, out.stdout
