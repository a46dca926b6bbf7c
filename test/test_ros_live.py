"""End to end under real ROS 2 (marked ``ros``: runs only where ROS 2 is installed and the
package is built and sourced, e.g. ``colcon build && source install/setup.bash && pytest -m ros``).

``ros2 launch recon_ros live.launch.py bag:=<synthetic bag>`` with the rgbd frontend: the map
cloud must grow, TF map -> camera_link must exist, ``~/save_map`` must write a valid PLY, and the
refiner's services must answer.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros


def _ros():
    try:
        import rclpy  # noqa: F401
        from std_srvs.srv import Trigger  # noqa: F401
    except ImportError:
        pytest.fail("marked ros but rclpy / std_srvs are not importable: source a ROS 2 installation")
    return rclpy


def _call(node, srv_type, name, timeout=30.0):
    import rclpy
    client = node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
    future = client.call_async(srv_type.Request())
    rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
    assert future.done(), f"service {name} did not answer"
    return future.result()


def test_live_launch_on_a_synthetic_bag(tmp_path):
    rclpy = _ros()
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2
    from std_srvs.srv import Trigger
    from tf2_ros import Buffer, TransformListener

    from recon_ros.cli import main
    from recon_ros.io.ply import read_ply

    bag = tmp_path / "scene"
    assert main(["-q", "synth", str(bag), "--no-progress", "--synth.n_frames", "90"]) == 0
    params = tmp_path / "params.yaml"
    save_dir = tmp_path / "maps"
    params.write_text(
        "/**:\n  ros__parameters:\n    frontend:\n      name: rgbd\n"
        f"    save:\n      directory: {save_dir}\n")
    cmd = ["ros2", "launch", "recon_ros", "live.launch.py", f"bag:={bag}", "rviz:=false", "refiner:=true",
           f"params_file:={params}", "device:=cpu", "base_frame:=camera_link", "bag_delay:=3.0",
           "depth_topic:=/camera/aligned_depth_to_color/image_raw"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    rclpy.init()
    node = rclpy.create_node("recon_ros_live_test")
    try:
        sizes = []
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(PointCloud2, "/recon_node/map_cloud", lambda m: sizes.append(m.width * m.height), qos)
        tf_buffer = Buffer()
        TransformListener(tf_buffer, node)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (len(sizes) >= 2 and sizes[-1] > sizes[0] > 0):
            rclpy.spin_once(node, timeout_sec=0.5)
        assert len(sizes) >= 2 and sizes[-1] > sizes[0] > 0, f"map cloud did not grow: {sizes}"
        assert tf_buffer.can_transform("map", "camera_link", rclpy.time.Time()), "no TF map -> camera_link"

        res = _call(node, Trigger, "/recon_node/save_map")
        assert res.success, res.message
        saved = Path(res.message)  # the absolute folder the map was written to
        assert saved.is_absolute() and saved.is_relative_to(save_dir), res.message
        assert len(read_ply(saved / "map.ply").points) > 0
        for service in ("/recon_refiner/align", "/recon_refiner/refine"):
            res = _call(node, Trigger, service)
            assert res.message, f"{service} gave no answer text"
    finally:
        node.destroy_node()
        rclpy.shutdown()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
