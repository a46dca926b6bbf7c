"""End to end under a real ROS 2 (marked ``ros``: runs only where ROS 2 is installed and the
package is built and sourced, e.g. ``colcon build && source install/setup.bash && pytest -m ros``).

``ros2 launch recon_ros live.launch.py`` with the rgbd frontend on a ``recon-ros synth`` bag:

* mapping: the map cloud grows, TF ``map -> camera_link`` exists, ``/diagnostics`` publishes at
  its period, ``~/save_map`` writes a complete map;
* parameters of both nodes through ``ros2 param list/describe/set/get``;
* the refiner: ``~/align`` succeeds and its corrected path is applied by recon_node (its ``~/path``
  equals the corrected poses); after ``~/reset`` the next align runs on the new map's keyframes only;
* Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while mapping and while a
  refine runs: both nodes exit cleanly, no traceback, the shutdown save is complete;
* lifecycle: configure -> activate -> deactivate -> activate -> cleanup -> configure -> activate ->
  shutdown, each answered within 2 s; the process exits after shutdown with a complete map;
* a saved map (``recon-ros replay`` of the bag's first half) loaded with ``map.load_path`` in
  ``mapping.mode: localization``: the camera is located in it, poses come out, and the map
  folder is byte-identical afterwards.

The bag is played by ``ros2 bag play`` (the launch file's ``bag:=``) when rosbag2 is installed,
otherwise by :class:`ros_harness.BagPlayer` (a test helper: it publishes the bag's messages and
/clock with rclpy) with ``use_sim_time:=true``.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from recon_ros.io import messages as M

from ros_harness import Launch, assert_clean_exit, call, cli, complete_maps, spin_until, start_stage

pytestmark = pytest.mark.ros

BAG_FRAMES, BAG_FPS = 200, 8.0  # a 25 s bag, played at ros_harness.BAG_RATE (slowly: the test needs time while it plays)
TRANSITION_LIMIT_S = 2.0


def _rclpy():
    try:
        import rclpy  # noqa: F401
        from std_srvs.srv import Trigger  # noqa: F401
    except ImportError:
        pytest.fail("marked ros but rclpy / std_srvs are not importable: source a ROS 2 installation")
    import rclpy
    return rclpy


@pytest.fixture(scope="module")
def node():
    rclpy = _rclpy()
    context = rclpy.Context()
    rclpy.init(context=context)
    n = rclpy.create_node("recon_ros_live_test", context=context)
    yield n
    n.destroy_node()
    rclpy.shutdown(context=context)


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    from recon_ros.cli import main
    path = tmp_path_factory.mktemp("bag") / "scene"
    assert main(["-q", "synth", str(path), "--no-progress", "--synth.n_frames", str(BAG_FRAMES),
                 "--synth.fps", str(BAG_FPS)]) == 0
    return path


def path_poses(msg) -> dict:
    from recon_ros.io.messages import pose_to_matrix, stamp_to_ns
    return {stamp_to_ns(p.header.stamp): pose_to_matrix(p) for p in msg.poses}


def test_live_mapping_params_refiner_reset_and_ctrl_c(node, bag, tmp_path):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Path as PathMsg
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from std_srvs.srv import Trigger
    from tf2_ros import Buffer, TransformListener

    save_dir = tmp_path / "maps"
    run = Launch(node, bag, tmp_path, save_dir, refiner="true")
    try:
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        sizes, diags, paths, corrected = [], [], [], []
        node.create_subscription(PointCloud2, "/recon_node/map_cloud", lambda m: sizes.append(m.width * m.height), latched)
        node.create_subscription(PathMsg, "/recon_node/path", paths.append, latched)
        node.create_subscription(PathMsg, "/recon_refiner/corrected_path", corrected.append, latched)
        node.create_subscription(DiagnosticArray, "/diagnostics",
                                 lambda m: diags.extend((M.stamp_to_ns(m.header.stamp), s) for s in m.status
                                                        if "recon_node" in s.name), 10)
        tf_buffer = Buffer()
        TransformListener(tf_buffer, node)

        # mapping
        # the volume emits a surface once voxels have enough readings: the first cloud may be empty
        grew = lambda: len([s for s in sizes if s > 0]) >= 2 and sizes[-1] > min(s for s in sizes if s > 0)  # noqa: E731
        assert spin_until(node, grew, 120), \
            f"map cloud did not grow: {sizes}\n{run.log()[-3000:]}"
        assert tf_buffer.can_transform("map", "camera_link", rclpy.time.Time()), "no TF map -> camera_link"
        # /diagnostics at its period (1 s of ROS time: sim time, the bag's clock, here)
        n0 = len(diags)
        assert spin_until(node, lambda: len(diags) >= n0 + 4, 60), f"/diagnostics: {len(diags) - n0} new"
        gaps = np.diff([t for t, _ in diags[n0:]]) * 1e-9
        assert 0.5 <= float(np.median(gaps)) <= 1.5, gaps
        status = diags[-1][1]
        level = ord(status.level) if isinstance(status.level, bytes) else int(status.level)  # a ROS byte
        assert level <= 1, (level, status.message)  # mapping: never ERROR
        assert int({v.key: v.value for v in status.values}["map points"]) > 0

        # parameters, both nodes, through the ros2 CLI
        for name in ("/recon_node", "/recon_refiner"):
            listed = cli("param", "list", name)
            assert "use_sim_time" in listed and ("publish.map_cloud_rate_hz" in listed or name == "/recon_refiner")
        assert "largest rate" in cli("param", "describe", "/recon_node", "publish.map_cloud_rate_hz")
        assert "successful" in cli("param", "set", "/recon_node", "publish.map_cloud_rate_hz", "2")
        assert "Double value is: 2.0" in cli("param", "get", "/recon_node", "publish.map_cloud_rate_hz")
        refused = subprocess.run(["ros2", "param", "set", "/recon_node", "input.qos", "reliable"],
                                 capture_output=True, text=True, timeout=60)
        refused = refused.stdout + refused.stderr
        assert "unconfigured" in refused, refused
        assert "keyframes kept" in cli("param", "describe", "/recon_refiner", "input.max_keyframes")
        assert "successful" in cli("param", "set", "/recon_refiner", "schedule.min_keyframes", "4")
        assert "Integer value is: 4" in cli("param", "get", "/recon_refiner", "schedule.min_keyframes")

        # save
        res, _ = call(node, Trigger, "/recon_node/save_map")
        assert res.success, res.message
        saved = Path(res.message)
        assert saved.is_absolute() and saved.parent == save_dir.resolve(), res.message
        assert complete_maps(save_dir) == [saved]

        # the refiner's correction is applied by recon_node
        assert spin_until(node, lambda: paths and len(paths[-1].poses) >= 4, 60), "fewer than 4 keyframes"
        res = start_stage(node, "align")
        assert res.success and "align started on" in res.message, res.message
        assert spin_until(node, lambda: corrected, 120), f"no corrected path\n{run.log()[-3000:]}"
        fixed = path_poses(corrected[-1])

        def applied() -> bool:
            mine = path_poses(paths[-1]) if paths else {}
            common = set(mine) & set(fixed)
            return len(common) == len(fixed) and all(np.allclose(mine[s], fixed[s], atol=1e-4) for s in common)

        assert spin_until(node, applied, 30), "recon_node's ~/path does not carry the corrected poses"
        # (0 moved is right when the alignment found the frontend poses already consistent)
        assert spin_until(node, lambda: re.search(r"re-anchored \d+ keyframe", run.log()), 30), run.log()[-3000:]

        # reset: the next align sees the new map's keyframes only
        before = len(paths[-1].poses)
        res, _ = call(node, Trigger, "/recon_node/reset")
        assert res.success, res.message
        assert spin_until(node, lambda: len(paths[-1].poses) == 0, 10)
        assert spin_until(node, lambda: len(paths[-1].poses) >= 4, 90), "no new keyframes after the reset"
        res = start_stage(node, "align")
        found = re.search(r"started on (\d+) keyframes", res.message)
        assert found, f"{res.message}\n{run.log()[-3000:]}"
        started = int(found.group(1))
        # the old map's keyframes (>= 4) would show: at most the new ones (+2 in flight) are used
        assert res.success and started <= len(paths[-1].poses) + 2, (res.message, before, len(paths[-1].poses))
        assert spin_until(node, lambda: "align: " in run.log().split("map reset (requested)")[-1], 120)

        # diagnostics kept coming through saves, corrections and the reset
        n0 = len(diags)
        assert spin_until(node, lambda: len(diags) >= n0 + 2, 30), "/diagnostics stopped"

        # Ctrl-C while mapping and while a refine runs
        res, _ = call(node, Trigger, "/recon_refiner/refine")
        assert res.success, res.message
        busy, _ = call(node, Trigger, "/recon_refiner/refine")
        assert not busy.success and "busy" in busy.message, busy.message  # it is running now
        assert run.player is None or not run.player.done.is_set(), "the bag ended before Ctrl-C: make it longer"
        run.interrupt()
        log = run.log()
        assert_clean_exit(log, ("recon_node", "recon_refiner"))
        maps = complete_maps(save_dir)
        assert len(maps) == 2, maps  # the explicit save and the shutdown save
        assert "map saved on shutdown" in log
    finally:
        run.kill()


def test_lifecycle_transitions_and_exit_after_shutdown(node, bag, tmp_path):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    save_dir = tmp_path / "maps"
    run = Launch(node, bag, tmp_path, save_dir, autostart="false", bag_delay="1.0")
    try:
        sizes = []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(PointCloud2, "/recon_node/map_cloud", lambda m: sizes.append(m.width * m.height),
                                 latched)
        res, _ = call(node, GetState, "/recon_node/get_state", timeout=90, retry_s=5.0)
        assert res.current_state.label == "unconfigured"
        assert "unconfigured" in cli("lifecycle", "get", "/recon_node")
        steps = [("configure", "inactive"), ("activate", "active"), ("deactivate", "inactive"),
                 ("activate", "active"), ("deactivate", "inactive"), ("cleanup", "unconfigured"),
                 ("configure", "inactive"), ("activate", "active"), ("shutdown", "finalized")]
        ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP,
               "shutdown": Transition.TRANSITION_ACTIVE_SHUTDOWN}
        times = {}
        for i, (transition, label) in enumerate(steps):
            if transition == "shutdown":  # there must be a map to save
                assert spin_until(node, lambda: sizes and sizes[-1] > 0, 90), f"no map\n{run.log()[-3000:]}"
            req = ChangeState.Request()
            req.transition.id = ids[transition]
            res, dt = call(node, ChangeState, "/recon_node/change_state", req)
            assert res.success, f"{transition} failed\n{run.log()[-3000:]}"
            times[f"{i}:{transition}"] = round(dt, 3)
            if transition != "shutdown":
                state, _ = call(node, GetState, "/recon_node/get_state")
                assert state.current_state.label == label
        assert max(times.values()) < TRANSITION_LIMIT_S, times
        # the process exits after shutdown, with a complete saved map
        assert spin_until(node, lambda: "[recon_node-1]: process has finished cleanly" in run.log(), 60), \
            run.log()[-3000:]
        assert len(complete_maps(save_dir)) == 1
        run.interrupt()
        assert_clean_exit(run.log(), ("recon_node",))
        print("lifecycle transition times (s):", times)
    finally:
        run.kill()


def test_live_localization_in_a_saved_map(node, bag, tmp_path):
    import hashlib

    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from recon_ros.cli import main

    saved = tmp_path / "saved"
    assert main(["-q", "replay", str(bag), "--frontend", "rgbd", "--out", str(saved), "--no-progress",
                 "--no-bag", "--max-frames", str(BAG_FRAMES // 2)]) == 0

    def digest() -> dict:
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(saved.rglob("*")) if p.is_file()}

    before = digest()
    extra = f"    map:\n      load_path: {saved}\n    mapping:\n      mode: localization\n"
    run = Launch(node, bag, tmp_path, tmp_path / "maps", bag_rate=0.5, extra_params=extra)
    try:
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        poses, states = [], []
        node.create_subscription(PoseStamped, "/recon_node/pose", poses.append, 10)
        node.create_subscription(String, "/recon_node/tracking_state", lambda m: states.append(m.data), latched)
        assert spin_until(node, lambda: len(poses) >= 10, 150), f"{len(poses)} poses\n{run.log()[-3000:]}"
        assert f"loaded the map at {saved} (localization only)" in run.log(), run.log()[-3000:]
        assert "relocalized" in states, states
        assert run.interrupt() == 0
        assert_clean_exit(run.log(), ("recon_node",))
        assert digest() == before
    finally:
        run.kill()
