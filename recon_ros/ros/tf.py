"""Frame bookkeeping for the nodes, pure numpy: which transform to publish and how to compose it.

Frames (REP-103/105): ``map`` is z-up; ``recon_world`` is the first camera's optical frame, in
which the core reports poses (metric once a scale is known). ``T_map_recon`` places it: the
camera's mounting in the body frame when a base frame is known (so ``map`` starts at the body's
first pose), otherwise the optical -> z-up rotation alone.

What is published never gives a second parent to a frame the robot already owns:
* with odometry: ``map -> odom``, chosen so that ``map -> odom -> base`` equals our estimate;
* without odometry: ``map -> base_frame`` (or ``map -> camera frame`` when no base is set).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, TypeVar

import numpy as np

from recon_ros.geometry.transforms import invert_T, map_from_optical, rigid_part

T = TypeVar("T")


def rigid(T_: np.ndarray) -> np.ndarray:
    """The rigid part of a rigid or Sim(3) 4x4 transform (see geometry.transforms.rigid_part)."""
    return rigid_part(T_)


def map_from_recon(T_base_cam0: Optional[np.ndarray]) -> np.ndarray:
    """``T_map_recon``: where the reconstruction's world sits in ``map``.

    ``T_base_cam0`` is the camera's mounting in the body frame at the first frame (from TF), so
    that ``map`` coincides with the body's first pose; without it ``map`` is the first camera's
    position with z up (optical -> body rotation).
    """
    if T_base_cam0 is None:
        return map_from_optical()
    return rigid(T_base_cam0)


@dataclass(frozen=True)
class TfPlan:
    """The one dynamic transform recon_node publishes: ``parent -> child``."""

    parent: str
    child: str
    via_odom: bool  # True: child is the odometry frame (the transform is the correction)


def plan_tf(map_frame: str, odom_frame: str, base_frame: str, camera_frame: str) -> TfPlan:
    """Choose the published transform from the configured frames (see module docstring)."""
    if odom_frame:
        return TfPlan(map_frame, odom_frame, True)
    return TfPlan(map_frame, base_frame or camera_frame, False)


@dataclass(frozen=True)
class EstimateOutputs:
    """What one camera pose becomes in ROS (recon_node's topics and the replay's output bag)."""

    T_map_base: np.ndarray  # ~/pose and ~/odom: the body (or camera) pose in map
    child: str  # the child frame of ~/odom
    tf: Optional[tuple[str, str, np.ndarray]]  # the dynamic transform; None while odometry is missing


def estimate_outputs(frames: Any, T_map_recon: np.ndarray, T_recon_cam: np.ndarray, camera_frame: str,
                     T_base_cam: Optional[np.ndarray] = None, T_odom_cam: Optional[np.ndarray] = None
                     ) -> EstimateOutputs:
    """Pose and TF of a camera pose ``T_recon_cam`` for the frames config ``frames``
    (map_frame, odom_frame, base_frame): ``T_base_cam`` is the camera mounting (used when a
    base frame is set), ``T_odom_cam`` the odometry pose of the camera at that stamp (needed
    when an odom frame is set)."""
    base = T_base_cam if frames.base_frame else None
    T_map_base = body_pose(pose_in_map(T_map_recon, T_recon_cam), base)
    plan = plan_tf(frames.map_frame, frames.odom_frame, frames.base_frame, camera_frame)
    tf: Optional[tuple[str, str, np.ndarray]] = (plan.parent, plan.child, T_map_base)
    if plan.via_odom:
        tf = None if T_odom_cam is None else (
            plan.parent, plan.child, map_to_odom(T_map_base, body_pose(T_odom_cam, base)))
    return EstimateOutputs(T_map_base, frames.base_frame or camera_frame, tf)


def pose_in_map(T_map_recon: np.ndarray, T_recon_cam: np.ndarray) -> np.ndarray:
    """Camera pose in ``map`` (rigid) from the core's pose in ``recon_world``."""
    return rigid(np.asarray(T_map_recon) @ np.asarray(T_recon_cam))


def body_pose(T_map_cam: np.ndarray, T_base_cam: Optional[np.ndarray]) -> np.ndarray:
    """Pose of the body in ``map`` given the camera pose and the mounting (identity if None)."""
    if T_base_cam is None:
        return np.asarray(T_map_cam, dtype=np.float64)
    return T_map_cam @ invert_T(rigid(T_base_cam))


def map_to_odom(T_map_base: np.ndarray, T_odom_base: np.ndarray) -> np.ndarray:
    """``T_map_odom`` such that ``T_map_odom @ T_odom_base == T_map_base``."""
    return rigid(T_map_base @ invert_T(rigid(T_odom_base)))


def recon_from_map(T_map_recon: np.ndarray, T_map_cam: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pose_in_map`: a map-frame camera pose expressed in ``recon_world``."""
    return invert_T(T_map_recon) @ np.asarray(T_map_cam, dtype=np.float64)


def apply_correction(C: np.ndarray, T_world_cam: np.ndarray) -> np.ndarray:
    """Corrected camera pose: the correction ``C`` (world -> corrected world, rigid or Sim(3))
    applied to the pose; returned rigid (a pose message carries no scale)."""
    return rigid(np.asarray(C, dtype=np.float64) @ np.asarray(T_world_cam, dtype=np.float64))


@dataclass
class _Waiting(Generic[T]):
    item: T
    stamp_ns: int
    since_ns: int


@dataclass
class TfWaitQueue(Generic[T]):
    """Frames waiting until the transforms they need exist (checked without blocking).

    ``poll(now_ns, lookup)`` calls ``lookup(item, stamp_ns)``, which returns a result (e.g. the
    transforms) or None when not available yet; ready items come back in arrival order with their
    results; items that waited longer than ``timeout_ns`` are returned as expired. The queue is
    bounded: pushing onto a full queue drops the oldest (returned by ``push``).
    """

    timeout_ns: int
    max_size: int
    _items: deque = field(default_factory=deque)

    def push(self, item: T, stamp_ns: int, now_ns: int) -> Optional[T]:
        dropped = None
        if len(self._items) >= self.max_size:
            dropped = self._items.popleft().item
        self._items.append(_Waiting(item, stamp_ns, now_ns))
        return dropped

    def poll(self, now_ns: int, lookup: Callable[[T, int], Any]) -> tuple[list, list]:
        ready: list = []
        expired: list = []
        keep: deque = deque()
        for w in self._items:
            result = lookup(w.item, w.stamp_ns)
            if result is not None:
                ready.append((w.item, result))
            elif now_ns - w.since_ns > self.timeout_ns:
                expired.append(w.item)
            else:
                keep.append(w)
        self._items = keep
        return ready, expired

    def clear(self) -> int:
        n = len(self._items)
        self._items.clear()
        return n

    def __len__(self) -> int:
        return len(self._items)
