"""The shared output pipeline (recon_ros.pipeline.outputs): tracking bookkeeping, thread
ownership, and what a sink is asked for."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from recon_ros.io import messages as M
from recon_ros.pipeline.outputs import NullSink, ResultPublisher, TrackingMonitor
from recon_ros.ros.schema import OutputFramesConfig


class RecordingSink:
    """A Sink (test double) that records every message it is given, for the keys in ``keys``."""

    def __init__(self, keys):
        self.types = M.rosbags_types()
        self.keys = set(keys)
        self.got: list = []

    def wants(self, key):
        return key in self.keys

    def emit(self, key, msg, stamp_ns):
        self.got.append((key, stamp_ns, msg))


def test_tracking_monitor_counts_states_and_losses():
    mon = TrackingMonitor()
    seq = ["tracking", "lost", "lost", "relocalized", "tracking", "lost"]
    changes = [mon.observe(state, 10 * i, reason="r") for i, state in enumerate(seq)]
    assert mon.frames == {"tracking": 2, "lost": 3, "relocalized": 1}
    assert mon.losses == [[10, 30], [50, None]]
    assert [(c.kind, c.streak) if c else None for c in changes] == [
        None, ("lost", 1), ("lost", 2), ("recovered", 2), None, ("lost", 1)]
    assert mon.state == "lost" and mon.lost_streak == 1


def test_result_publisher_belongs_to_one_thread():
    pub = ResultPublisher(NullSink(), OutputFramesConfig())
    frame = SimpleNamespace(frame_id="cam", extras={}, T_odom_cam=None, stamp_ns=1)
    pub.observe_input(frame)  # binds to this thread
    errors = []

    def other():
        try:
            pub.observe_input(frame)
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors and "one thread" in errors[0]


def test_lost_frames_publish_only_their_state_and_reset_republishes_it():
    sink = RecordingSink({"pose", "tf", "tf_static", "tracking_state"})
    pub = ResultPublisher(sink, OutputFramesConfig())
    recon = SimpleNamespace(keyframes=lambda frontend_poses=False: [])
    est = SimpleNamespace(stamp_ns=5, T_world_cam=np.eye(4), tracking_ok=True)
    ok = SimpleNamespace(estimates=[est], provisional=None, new_keyframes=[], keyframes_moved=False,
                         map_changed=True, tracking="tracking", skipped=None)
    lost = SimpleNamespace(estimates=[], provisional=None, new_keyframes=[], keyframes_moved=False,
                           map_changed=False, tracking="lost", tracking_reason="why", skipped=None)
    pub.publish_result(recon, ok, 5)
    change = pub.publish_result(recon, lost, 6)
    assert (change.kind, change.streak, change.reason) == ("lost", 1, "why")
    assert [(k, s) for k, s, _ in sink.got] == [("tracking_state", 5), ("tf_static", 5), ("pose", 5), ("tf", 5),
                                                ("tracking_state", 6)]
    assert [m.data for k, _, m in sink.got if k == "tracking_state"] == ["tracking", "lost"]
    assert pub.map_dirty
    pub.reset()
    assert pub.T_map_recon is None and not pub.map_dirty
    sink.got.clear()
    pub.publish_result(recon, ok, 7)
    assert [k for k, _, _ in sink.got] == ["tracking_state", "tf_static", "pose", "tf"]


@pytest.mark.parametrize("base_frame", ["", "base_link"])
def test_the_anchor_uses_the_mounting_only_with_a_base_frame(base_frame):
    from recon_ros.geometry.transforms import make_T, map_from_optical, rotvec_to_matrix
    mount = make_T(rotvec_to_matrix([-1.2, 0.0, -1.5]), [0.2, 0.0, 0.5])
    pub = ResultPublisher(NullSink(), OutputFramesConfig(base_frame=base_frame))
    pub.observe_input(SimpleNamespace(frame_id="cam", extras={"T_base_cam": mount}, T_odom_cam=None, stamp_ns=1))
    expected = mount if base_frame else map_from_optical()
    np.testing.assert_allclose(pub.anchor(1), expected, atol=1e-12)


def test_map_cadence_rates_rest_and_coalescing():
    """MapCadence: outputs due by their rates and only when changed; after a slow extraction
    the periodic ones rest (duty), forced ones do not; a waiting job is merged into the next."""
    from recon_ros.pipeline.outputs import MapCadence, MapJob

    now = [100.0]
    cad = MapCadence(duty=0.25, rest_after_s=0.1, clock=lambda: now[0])
    s = 1_000_000_000
    B = 100 * s
    assert cad.due(B, 1.0, 0.1, True, True, anchored=False) == (True, False)  # products need the anchor
    assert cad.due(B + s // 2, 1.0, 0.1, True, True, anchored=True) == (False, True)  # cloud not due yet
    assert cad.due(B + 2 * s, 1.0, 0.1, False, True, anchored=True) == (False, False)  # unchanged / not due
    assert cad.due(B + 2 * s, 1.0, 0.1, True, True, anchored=True) == (True, False)
    cad.ran(2.0)  # a slow extraction: the next periodic job waits 6 s
    assert cad.due(B + 5 * s, 1.0, 0.1, True, True, anchored=True) == (False, False)
    assert cad.due(B + 5 * s, 1.0, 0.1, False, False, anchored=True, force=True) == (True, True)
    now[0] += 6.5
    assert cad.due(B + 6 * s, 1.0, 0.1, True, False, anchored=True) == (True, False)
    cad.ran(0.05)  # a quick one: no rest
    assert cad.due(B + 7 * s, 1.0, 0.1, True, False, anchored=True) == (True, False)
    first = cad.hand_over(MapJob(None, 1, None, "map", cloud=False, products=True))
    second = cad.hand_over(MapJob(None, 2, None, "map", cloud=True, products=False))
    assert second.cloud and second.products  # the waiting job's products are kept
    cad.started(first)  # an older job being taken leaves the newest waiting
    third = cad.hand_over(MapJob(None, 3, None, "map", cloud=False, products=False))
    assert third.cloud and third.products
    cad.started(third)
    fourth = cad.hand_over(MapJob(None, 4, None, "map", cloud=False, products=False))
    assert not (fourth.cloud or fourth.products)
    cad.reset()
    assert cad.due(B + 7 * s, 1.0, 0.1, True, True, anchored=True) == (True, True)
