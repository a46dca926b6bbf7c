"""recon_node's input side (recon_ros.ros.intake.FrameIntake), driven directly: no rclpy.

Messages are real ROS 2 message classes (rosbags); the transforms come from a dict standing in
for the tf2 buffer, and the logger is a small recording double.
"""
from __future__ import annotations

import collections
from typing import Optional

import numpy as np

from recon_ros.io import messages as M
from recon_ros.ros import convert
from recon_ros.ros.intake import FrameIntake
from recon_ros.ros.schema import ReconNodeConfig

T = M.rosbags_types()
CAM = "cam_optical"


class RecordingLog:
    """Logger double: keeps (level, text)."""

    def __init__(self) -> None:
        self.lines: list = []

    def warning(self, text: str, **_: object) -> None:
        self.lines.append(("warning", text))


def stamp(i: int) -> int:
    return 5_000_000_000 + i * 50_000_000


def image(stamp_ns: int):
    return M.make_image(T, np.zeros((4, 6, 3), np.uint8), "rgb8", stamp_ns, CAM)


def make(cfg: Optional[ReconNodeConfig] = None, transforms: Optional[dict] = None):
    cfg = cfg or ReconNodeConfig()
    counts: collections.Counter = collections.Counter()
    submitted: list = []
    tf = transforms if transforms is not None else {}

    def lookup(target, source, stamp_ns):
        return tf.get((target, source))

    def on_time_jump():  # as recon_node does: reset the map, then the intake
        counts.update({"resets": 1})
        intake.reset()

    intake = FrameIntake(lambda: cfg, lookup, submitted.append, on_time_jump,
                         lambda k, n: counts.update({k: n}), RecordingLog())
    intake.start(convert.make_matcher([], 0.01, 10))
    return intake, cfg, counts, submitted, tf


def test_frames_pass_by_every_n_and_pause():
    intake, cfg, counts, submitted, _ = make()
    cfg.input.process_every_n = 2
    for i in range(5):
        intake.push("image", image(stamp(i)), stamp(i) + 1000)
    assert [f.stamp_ns for f in submitted] == [stamp(0), stamp(2), stamp(4)]
    assert [f.index for f in submitted] == [0, 2, 4] and submitted[0].frame_id == CAM
    intake.paused.set()
    intake.push("image", image(stamp(5)), stamp(5))
    assert len(submitted) == 3 and counts["paused"] == 1 and counts["matched"] == 6
    assert counts["received_image"] == 6 and counts["skipped_every_n"] == 2
    assert intake.last_match_ns == stamp(5)


def test_a_late_stamp_is_skipped_and_confirmed_ones_are_a_jump():
    cfg = ReconNodeConfig()
    cfg.frames.time_jump_tolerance_s = 1.0
    intake, _, counts, submitted, _ = make(cfg)
    intake.push("image", image(stamp(100)), 0)
    late = stamp(100) - 3_000_000_000
    confirm = cfg.frames.time_jump_confirm_frames
    assert confirm > 1
    for k in range(confirm - 1):
        intake.push("image", image(late + k), 0)
    assert counts["stamp_outliers"] == confirm - 1 and len(submitted) == 1 and counts["resets"] == 0
    assert any("skipped" in text for _, text in intake._log.lines)
    intake.push("image", image(late + confirm), 0)  # confirmed: the map is reset
    assert counts["time_jumps"] == 1 and counts["resets"] == 1
    assert [f.stamp_ns for f in submitted] == [stamp(100), late + confirm]  # the new session's first
    assert submitted[-1].index == 0


def test_frames_wait_for_transforms_then_pass_or_expire():
    cfg = ReconNodeConfig()
    cfg.frames.odom_frame, cfg.frames.base_frame, cfg.frames.tf_timeout_s = "odom", "base_link", 0.2
    intake, _, counts, submitted, tf = make(cfg)
    intake.push("image", image(stamp(0)), stamp(0))
    assert submitted == [] and intake.waiting == 1
    assert intake.poll_tf(stamp(0) + 100_000_000)  # still waiting
    assert not intake.poll_tf(stamp(0) + 300_000_000)  # past the timeout: dropped
    assert counts["tf_timeouts"] == 1 and intake.waiting == 0 and submitted == []
    mount, odom = np.eye(4), np.eye(4)
    mount[0, 3], odom[1, 3] = 0.1, 2.0
    tf[("base_link", CAM)], tf[("odom", CAM)] = mount, odom
    intake.push("image", image(stamp(1)), stamp(1))
    assert intake.waiting == 0 and len(submitted) == 1
    np.testing.assert_array_equal(submitted[0].T_base_cam, mount)
    np.testing.assert_array_equal(submitted[0].T_odom_cam, odom)
    intake.stop()
    intake.push("image", image(stamp(2)), stamp(2))
    assert len(submitted) == 1
