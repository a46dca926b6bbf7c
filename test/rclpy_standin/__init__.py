"""Test double: an in-repo stand-in for the few rclpy / tf2_ros / diagnostic_updater calls the
nodes make, so their wiring (callbacks, parameters, services, timers, lifecycle transitions) can
be exercised on machines without ROS 2.

It checks only our own assumptions about those APIs; real behaviour (QoS matching, executors,
TF timing, lifecycle and parameter services, signals, launch) is verified by the tests marked
``ros`` with a real ROS 2 sourced. Message classes are the real ones of the ``rosbags`` typestore,
which share field names and CDR layout with ROS 2. The modules under ``modules/`` become
importable as ``rclpy``, ``tf2_ros``, ``sensor_msgs`` ... only while :func:`installed` is active
(tests use it through a fixture); nothing on the real import path can see them. When a real ROS 2
is sourced, its modules are set aside for the duration of the block and put back afterwards, so
the stand-in tests and the real-ROS tests run in one pytest session in any order.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

MODULES = Path(__file__).resolve().parent / "modules"
STANDIN_PACKAGES = ("rclpy", "rcl_interfaces", "tf2_ros", "diagnostic_updater", "std_srvs",
                    "sensor_msgs", "geometry_msgs", "nav_msgs", "std_msgs", "builtin_interfaces",
                    "tf2_msgs", "diagnostic_msgs", "visualization_msgs", "_rosbags_msgs", "launch", "launch_ros",
                    "ament_index_python")
# Modules that import the stand-in at module level and must be re-imported each time.
DEPENDENT_PREFIXES = ("recon_ros.ros.recon_node", "recon_ros.ros.refiner_node", "recon_ros.ros.params",
                      "recon_ros.ros.qos", "recon_ros.ros.spin")


def _affected(name: str) -> bool:
    return name.split(".")[0] in STANDIN_PACKAGES or name.startswith(DEPENDENT_PREFIXES)


def real_rclpy_available() -> bool:
    """Whether a real rclpy (a sourced ROS 2) is importable outside the stand-in."""
    import importlib.util
    mod = sys.modules.get("rclpy")
    if mod is not None:
        return not str(getattr(mod, "__file__", "")).startswith(str(MODULES))
    if str(MODULES) in sys.path:
        return False
    spec = importlib.util.find_spec("rclpy")
    return spec is not None and not str(spec.origin or "").startswith(str(MODULES))


def _purge() -> None:
    for name in list(sys.modules):
        if _affected(name):
            del sys.modules[name]


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Make the stand-in importable under the ROS module names for the duration of the block.

    Real ROS modules already imported (and our modules bound to them) are set aside and restored
    on exit, never mixed with the stand-in.
    """
    stashed = {name: mod for name, mod in sys.modules.items() if _affected(name)}
    _purge()
    sys.path.insert(0, str(MODULES))
    try:
        yield
    finally:
        _purge()
        sys.path.remove(str(MODULES))
        sys.modules.update(stashed)
