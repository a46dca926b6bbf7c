"""Helpers to drive a real ROS 2 run of the package from Python: spin a client node, call
services, ``ros2 launch recon_ros live.launch.py`` in its own process group, play a bag. Used
by test/test_ros_live.py and benchmarks/bench_live_ros.py; needs a sourced ROS 2 (rclpy)."""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

BAG_RATE = 0.2
DEPTH = "/camera/aligned_depth_to_color/image_raw"


def spin_until(node, cond, timeout: float, period: float = 0.1) -> bool:
    import rclpy
    executor = rclpy.executors.SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            executor.spin_once(timeout_sec=period)
        return cond()
    finally:
        executor.remove_node(node)


_CLIENTS: dict = {}


def call(node, srv_type, name, request=None, timeout=30.0, retry_s=None):
    """Call a service; (response, seconds from request to answer).

    Clients are kept per service: a new client must be discovered by the server again, and under
    load a response sent before that is lost. ``retry_s`` (idempotent services only) sends the
    request again when no answer came within that many seconds.
    """
    key = (id(node), name)
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = node.create_client(srv_type, name)
        assert spin_until(node, client.service_is_ready, timeout), f"service {name} not available"
    deadline = time.monotonic() + timeout
    while True:
        t0 = time.monotonic()
        future = client.call_async(request if request is not None else srv_type.Request())
        wait = min(retry_s or timeout, deadline - t0)
        if spin_until(node, future.done, wait):
            return future.result(), time.monotonic() - t0
        client.remove_pending_request(future)
        assert retry_s and time.monotonic() < deadline, f"service {name} did not answer in {timeout} s"


def start_stage(node, stage: str, timeout: float = 60.0):
    """Call ``/recon_refiner/<stage>`` until it starts. recon_node's path can list a keyframe
    before the refiner holds its cloud and info ("only N complete keyframe(s)"), and a
    scheduled run may be busy: both pass; anything else is the answer to check."""
    from std_srvs.srv import Trigger

    deadline = time.monotonic() + timeout
    while True:
        res, _ = call(node, Trigger, f"/recon_refiner/{stage}")
        waiting = "complete keyframe" in res.message or res.message.startswith("busy")
        if res.success or not waiting or time.monotonic() > deadline:
            return res
        spin_until(node, lambda: False, 1.0)


def cli(*args: str, timeout: float = 60.0) -> str:
    res = subprocess.run(["ros2", *args], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"ros2 {' '.join(args)} failed: {res.stdout}{res.stderr}"
    return res.stdout


class BagPlayer(threading.Thread):
    """Test helper standing in for ``ros2 bag play --clock`` where rosbag2 is not installed:
    publishes every message of the bag (raw CDR, so nothing is converted) at its recorded rate,
    with /clock, /tf_static latched."""

    def __init__(self, node, path: Path, rate: float = 1.0) -> None:
        super().__init__(name="bag_player", daemon=True)
        self.node, self.path, self.rate = node, path, rate
        self.stop = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.serialization import deserialize_message
        from rosgraph_msgs.msg import Clock
        from rosidl_runtime_py.utilities import get_message

        from recon_ros.io.bag_reader import open_bag_reader
        import rclpy
        player = rclpy.create_node("recon_ros_bag_player", context=self.node.context)
        reader = open_bag_reader(self.path)
        pubs: dict = {}
        clock = player.create_publisher(Clock, "/clock", 10)
        latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        try:
            t_bag0 = t_wall0 = None
            for conn, stamp, raw in reader.messages():
                if self.stop.is_set():
                    break
                cls = get_message(conn.msgtype)
                if conn.topic not in pubs:
                    pubs[conn.topic] = player.create_publisher(
                        cls, conn.topic, latched if conn.topic == "/tf_static" else 10)
                if t_bag0 is None:
                    t_bag0, t_wall0 = stamp, time.monotonic()
                delay = (stamp - t_bag0) * 1e-9 / self.rate - (time.monotonic() - t_wall0)
                if delay > 0:
                    self.stop.wait(delay)
                msg = Clock()
                msg.clock.sec, msg.clock.nanosec = divmod(int(stamp), 1_000_000_000)
                clock.publish(msg)
                pubs[conn.topic].publish(deserialize_message(bytes(raw), cls))
        finally:
            reader.close()
            self.done.set()
            player.destroy_node()


class Launch:
    """``ros2 launch recon_ros live.launch.py ...`` in its own process group, output to a file.
    ``bag`` None: nothing is played (a live camera publishes; wall-clock time)."""

    def __init__(self, node, bag: Optional[Path], tmp: Path, save_dir: Path, bag_rate: float = BAG_RATE,
                 extra_params: str = "", **args: str) -> None:
        params = tmp / "params.yaml"
        params.write_text(
            "/**:\n  ros__parameters:\n    frontend:\n      name: rgbd\n"
            f"    save:\n      directory: {save_dir}\n"
            "    schedule:\n      align_period_s: 0.0\n      refine_period_s: 0.0\n" + extra_params)
        self.log_path = tmp / "launch.log"
        argv = {"rviz": "false", "device": "cpu", "base_frame": "camera_link", "depth_topic": DEPTH,
                "params_file": str(params), "bag_delay": "3.0", "bag_rate": str(bag_rate), **args}
        self.player = None
        if bag is None:
            pass
        elif importlib.util.find_spec("rosbag2_py") is not None:
            argv["bag"] = str(bag)
        else:
            argv["use_sim_time"] = "true"
            self.player = BagPlayer(node, bag, rate=bag_rate)
        cmd = ["ros2", "launch", "recon_ros", "live.launch.py"] + [f"{k}:={v}" for k, v in argv.items()]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, start_new_session=True, stdout=self._log, stderr=subprocess.STDOUT)
        if self.player is not None:
            threading.Timer(float(argv["bag_delay"]), self.player.start).start()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def interrupt(self, timeout: float = 90.0) -> int:
        """SIGINT to the whole process group (a terminal's Ctrl-C); the launch's exit code."""
        if self.player is not None:
            self.player.stop.set()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"the launch did not end {timeout} s after Ctrl-C:\n{self.log()[-3000:]}")
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.player is not None:
            self.player.stop.set()
            if self.player.is_alive():
                self.player.join(10.0)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def assert_clean_exit(log: str, processes: tuple) -> None:
    for bad in ("Traceback", "FATAL", "terminate called", "KeyboardInterrupt", "context is invalid",
                "process has died"):
        assert bad not in log, f"'{bad}' in the launch output:\n{log[-4000:]}"
    for name in processes:
        assert re.search(rf"\[{name}-\d+\]: process has finished cleanly", log), \
            f"{name} did not exit cleanly:\n{log[-4000:]}"


def complete_maps(save_dir: Path) -> list[Path]:
    """The saved map folders; each must be complete (no partial folder anywhere)."""
    from recon_ros.io.ply import read_ply
    assert not [p for p in save_dir.iterdir() if not p.name.startswith("map_")], list(save_dir.iterdir())
    maps = sorted(save_dir.glob("map_*"))
    for m in maps:
        assert {"map.ply", "trajectory.tum"} <= {p.name for p in m.iterdir()}, list(m.iterdir())
        assert len(read_ply(m / "map.ply").points) > 0
        assert (m / "trajectory.tum").read_text().strip()
    return maps
