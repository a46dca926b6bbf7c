"""recon_node's input side, without rclpy: from input messages to frames for the worker.

:class:`FrameIntake` takes every input message (image, camera info, depth) with its stamp and
decides what becomes a frame:

* time: a stamp far behind its stream's newest is skipped as an outlier until
  ``frames.time_jump_confirm_frames`` such stamps came in a row; then it is a jump backwards
  (a bag restarted or looped): ``on_time_jump`` resets the map (and this intake), and the
  message that confirmed the jump starts the new session;
* matching: approximate-time matching of the image with its secondaries;
* pause (``~/set_paused``) and ``input.process_every_n``;
* TF: a frame that needs transforms (an odometry frame, or the camera mounting under a base
  frame, looked up once per session) waits for them without blocking, and is dropped and
  counted after ``frames.tf_timeout_s``.

Frames that pass go to ``submit`` (the worker's queue). One owner: recon_node calls every method
from its input callback group (mutually exclusive), except :attr:`FrameIntake.paused`, an event
any thread may set. The transforms come from ``lookup(target, source, stamp_ns or None)``, which
returns a 4x4 matrix or None without waiting (recon_node's tf2 buffer).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from recon_ros.ros import convert
from recon_ros.ros import tf as rtf
from recon_ros.ros.stamps import JumpDetector, StampMonitor

THROTTLE_S = 5.0

Lookup = Callable[[str, str, Optional[int]], Optional[np.ndarray]]


@dataclass
class PendingFrame:
    """Matched input messages of one frame, not yet decoded (decoding runs on the worker)."""

    index: int
    stamp_ns: int
    frame_id: str
    image: Any
    info: Any = None
    depth: Any = None
    T_odom_cam: Optional[np.ndarray] = None
    T_base_cam: Optional[np.ndarray] = None  # the camera mounting (from TF), when a base frame is set


class FrameIntake:
    """See the module docstring. ``config`` returns recon_node's current ROS config (parameters
    may change), ``count(key, n)`` counts, ``log`` is the node's logger."""

    def __init__(self, config: Callable[[], Any], lookup: Lookup, submit: Callable[[PendingFrame], None],
                 on_time_jump: Callable[[], None], count: Callable[[str, int], None], log: Any) -> None:
        self._config = config
        self._on_time_jump = on_time_jump
        self._lookup = lookup
        self._submit = submit
        self._count = count
        self._log = log
        f = config().frames
        self.stamps = StampMonitor()
        self._jumps = JumpDetector(tolerance_ns=int(f.time_jump_tolerance_s * 1e9),
                                   confirm=f.time_jump_confirm_frames)
        self._tf_queue: rtf.TfWaitQueue = rtf.TfWaitQueue(timeout_ns=int(f.tf_timeout_s * 1e9),
                                                          max_size=f.max_waiting_frames)
        self.matcher: Any = None  # set by start(): no matcher, no frames
        self.paused = threading.Event()
        self.last_match_ns = 0
        self._matched = 0
        self._T_base_cam: Optional[np.ndarray] = None  # the camera mounting, looked up once

    # -- session ------------------------------------------------------------------------------
    def start(self, matcher: Any) -> None:
        """Take input through ``matcher`` (activate): stamps are watched afresh."""
        self.matcher = matcher
        self.stamps.reset()
        self._jumps.reset()
        self.last_match_ns = 0

    def stop(self) -> None:
        """Take no more input (deactivate); frames waiting for TF are dropped."""
        self.matcher = None
        self._tf_queue.clear()

    def reset(self) -> None:
        """Forget the input history (the map is reset): stamps, partial matches, waiting frames
        and the frame count."""
        self.stamps.reset()
        self._jumps.reset()
        if self.matcher is not None:
            self.matcher.reset()
        self._tf_queue.clear()
        self._matched = 0

    @property
    def waiting(self) -> int:
        """Frames waiting for transforms."""
        return len(self._tf_queue)

    # -- messages -----------------------------------------------------------------------------
    def push(self, name: str, msg: Any, now_ns: int) -> None:
        """Take one input message of stream ``name`` (received at ``now_ns``)."""
        self._count(f"received_{name}", 1)
        if self.matcher is None:
            return
        try:
            stamp = convert.stamp_to_ns(msg.header.stamp)
        except (AttributeError, TypeError, ValueError):
            self._count("bad_messages", 1)
            return
        verdict = self._jumps.check(name, stamp)
        if verdict == "outlier":  # one late stamp (a live camera's hiccup) never wipes the map
            self._count("stamp_outliers", 1)
            self._log.warning(
                f"skipped a '{name}' message stamped {(self._jumps.last(name) - stamp) * 1e-9:.2f} s before "
                f"the previous one (a reset needs {self._config().frames.time_jump_confirm_frames} in a row)",
                throttle_duration_sec=THROTTLE_S)
            return
        if verdict == "jump":
            self._log.warning("input time jumped backwards (a bag restarted or looped?): resetting the map")
            self._count("time_jumps", 1)
            self._on_time_jump()
        for match in self.matcher.push(name, stamp, msg):
            self._on_matched(match.items, match.stamp_ns, now_ns)

    def _on_matched(self, match: dict, stamp: int, now_ns: int) -> None:
        image = match["image"]
        self.last_match_ns = now_ns
        self.stamps.observe(stamp, now_ns)
        self._count("matched", 1)
        if self.paused.is_set():
            self._count("paused", 1)
            return
        self._matched += 1
        if (self._matched - 1) % self._config().input.process_every_n:
            self._count("skipped_every_n", 1)
            return
        item = PendingFrame(index=self._matched - 1, stamp_ns=stamp, frame_id=str(image.header.frame_id),
                            image=image, info=match.get("camera_info"), depth=match.get("depth"))
        if not self._needs_tf():
            self._submit(item)
            return
        self._tf_queue.timeout_ns = int(self._config().frames.tf_timeout_s * 1e9)
        if self._tf_queue.push(item, stamp, now_ns) is not None:
            self._count("tf_queue_overflow", 1)
        self.poll_tf(now_ns)

    # -- transforms ---------------------------------------------------------------------------
    def _needs_tf(self) -> bool:
        f = self._config().frames
        return bool(f.odom_frame) or (bool(f.base_frame) and self._T_base_cam is None)

    def _transforms(self, item: PendingFrame, stamp_ns: int) -> Optional[dict]:
        f = self._config().frames
        out: dict = {}
        if f.base_frame and self._T_base_cam is None:
            T = self._lookup(f.base_frame, item.frame_id, None)
            if T is None:
                return None
            out["T_base_cam"] = T
        if f.odom_frame:
            T = self._lookup(f.odom_frame, item.frame_id, stamp_ns)
            if T is None:
                return None
            out["T_odom_cam"] = T
        return out

    def poll_tf(self, now_ns: int) -> bool:
        """Submit the waiting frames whose transforms arrived, drop (and count) those that waited
        too long; True while frames are left waiting."""
        if not len(self._tf_queue):
            return False
        ready, expired = self._tf_queue.poll(now_ns, self._transforms)
        if expired:
            self._count("tf_timeouts", len(expired))
            f = self._config().frames
            needed = [x for x in (f.odom_frame, f.base_frame) if x]
            self._log.warning(
                f"dropped {len(expired)} frame(s): no transform {' / '.join(needed)} <- "
                f"'{expired[-1].frame_id}' within {f.tf_timeout_s} s of the image stamp (is the "
                f"TF publisher running? use_sim_time consistent? raise frames.tf_timeout_s)",
                throttle_duration_sec=THROTTLE_S)
        for item, tfs in ready:
            if "T_base_cam" in tfs:
                self._T_base_cam = tfs["T_base_cam"]
            item.T_base_cam = self._T_base_cam
            item.T_odom_cam = tfs.get("T_odom_cam")
            self._submit(item)
        return bool(len(self._tf_queue))
