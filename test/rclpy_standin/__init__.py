"""Test double: an in-repo stand-in for the few rclpy / tf2_ros / diagnostic_updater calls the
nodes make, so their wiring (callbacks, parameters, services, timers, lifecycle transitions) can
be exercised on machines without ROS 2.

It checks only our own assumptions about those APIs; real behaviour (QoS matching, executors,
TF timing, launch) is verified with launch_testing where ROS 2 is installed. Message classes are
the real ones of the ``rosbags`` typestore (Humble), which share field names and CDR layout with
ROS 2. The modules under ``modules/`` become importable as ``rclpy``, ``tf2_ros``, ``sensor_msgs``
... only while :func:`installed` is active (tests use it through a fixture); nothing on the real
import path can see them.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

MODULES = Path(__file__).resolve().parent / "modules"
STANDIN_PACKAGES = ("rclpy", "rcl_interfaces", "tf2_ros", "diagnostic_updater", "std_srvs",
                    "sensor_msgs", "geometry_msgs", "nav_msgs", "std_msgs", "builtin_interfaces",
                    "tf2_msgs", "diagnostic_msgs", "_rosbags_msgs")
# Modules that import the stand-in at module level and must be re-imported each time.
DEPENDENT_PREFIXES = ("recon_ros.ros.recon_node", "recon_ros.ros.refiner_node", "recon_ros.ros.params",
                      "recon_ros.ros.qos")


def _purge() -> None:
    for name in list(sys.modules):
        top = name.split(".")[0]
        if top in STANDIN_PACKAGES or name.startswith(DEPENDENT_PREFIXES):
            del sys.modules[name]


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Make the stand-in importable under the ROS module names for the duration of the block."""
    for pkg in STANDIN_PACKAGES:
        if pkg in sys.modules and not str(getattr(sys.modules[pkg], "__file__", "")).startswith(str(MODULES)):
            raise RuntimeError(f"a real '{pkg}' is already imported; the stand-in must not shadow it")
    sys.path.insert(0, str(MODULES))
    _purge()
    try:
        yield
    finally:
        _purge()
        sys.path.remove(str(MODULES))
