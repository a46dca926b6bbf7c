"""QoS profiles of recon_node and recon_refiner."""
from __future__ import annotations

from rclpy.qos import (QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy,
                       qos_profile_sensor_data, qos_profile_system_default)


def input_qos(name: str, depth: int) -> QoSProfile:
    """Subscription QoS by name: sensor_data | best_effort | reliable | system_default.

    ``sensor_data`` (best effort, volatile) accepts both best-effort camera drivers and reliable
    publishers, including replayed bags; ``reliable`` only matches reliable publishers.
    """
    if name == "sensor_data":
        base = qos_profile_sensor_data
        return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth,
                          reliability=base.reliability, durability=base.durability)
    if name == "best_effort":
        return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth,
                          reliability=QoSReliabilityPolicy.BEST_EFFORT,
                          durability=QoSDurabilityPolicy.VOLATILE)
    if name == "reliable":
        return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth,
                          reliability=QoSReliabilityPolicy.RELIABLE,
                          durability=QoSDurabilityPolicy.VOLATILE)
    if name == "system_default":
        base = qos_profile_system_default
        return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth,
                          reliability=base.reliability, durability=base.durability)
    raise ValueError(f"unknown QoS name {name!r}")


def latched(depth: int = 1) -> QoSProfile:
    """Reliable + transient-local: late subscribers (RViz started later) get the last message.

    Subscribers must ask for transient-local durability too to receive the stored message
    (rviz/recon.rviz does).
    """
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=QoSReliabilityPolicy.RELIABLE,
                      durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)


def stream(depth: int = 5) -> QoSProfile:
    """Reliable, volatile: per-frame outputs (pose, odometry, keyframes)."""
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=QoSReliabilityPolicy.RELIABLE,
                      durability=QoSDurabilityPolicy.VOLATILE)


def best_effort(depth: int = 1) -> QoSProfile:
    """Best effort, depth 1: large per-frame clouds and images nobody must wait for."""
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=QoSReliabilityPolicy.BEST_EFFORT,
                      durability=QoSDurabilityPolicy.VOLATILE)


def describe(profile: QoSProfile) -> str:
    """Short text for logs, e.g. 'best_effort/volatile depth 5'."""
    rel = getattr(profile.reliability, "name", str(profile.reliability)).lower()
    dur = getattr(profile.durability, "name", str(profile.durability)).lower()
    return f"{rel}/{dur} depth {profile.depth}"
