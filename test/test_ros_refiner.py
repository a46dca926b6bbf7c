"""recon_refiner wiring, exercised WITHOUT ROS 2 through the in-repo rclpy stand-in.

Keyframe messages are the ones recon_node publishes (built by the same conversions from
FakeReconstructor keyframes, a test double); FakeRefiner (a test double of the refine stages)
returns a known correction, so the corrected path can be checked independently.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from recon_ros.io import messages as M

from rclpy_standin import installed
from rclpy_standin.doubles import (FakeCoreConfig, FakeRefiner, FakeResidentMemory, camera_pose,
                                   grid_points_cam)

T = M.rosbags_types()
NS = "/recon_refiner"
CAM = "cam_optical"
K = np.array([[10.0, 0, 2.0], [0, 10.0, 1.5], [0, 0, 1]])


@pytest.fixture
def ros():
    with installed():
        import recon_ros.ros.refiner_node as refiner_node
        yield refiner_node


def make(ros, factory=None, overrides=None, core_cls=FakeCoreConfig, **fake):
    from rclpy.parameter import Parameter
    made = {}

    def build(cfg):
        made["r"] = FakeRefiner(cfg, **fake)
        return made["r"]

    node = ros.RefinerNode(core_cls=core_cls, refiner_factory=factory or build,
                           parameter_overrides=[Parameter(name=k, value=v) for k, v in (overrides or {}).items()])
    return node, made.get("r")


def send_keyframes(node, n, first=0, side=None):
    """Publish keyframes ``first`` .. ``first + n - 1`` to the node (``side``: a square grid of
    that many points a side instead of the small test grid)."""
    from recon_ros.ros import convert
    from recon_ros.mapping.frame import Keyframe
    from recon_ros.geometry.camera import PixelMap
    pts = grid_points_cam()
    if side is not None:
        pts = np.resize(pts, (side, side, 3))
    h, w = pts.shape[:2]
    poses = []
    for i in range(first, first + n):
        s = 1_000_000_000 + i * 100_000_000
        kf = Keyframe(id=i, stamp_ns=s, rgb=np.zeros((h, w, 3), np.uint8), points_cam=pts,
                      confidence=np.full((h, w), 2.0, np.float32), colors=np.full((h, w, 3), 9, np.uint8),
                      K=K, K_image=K, pixel_map=PixelMap.identity(w, h), T_world_cam=camera_pose(i),
                      valid=np.ones((h, w), bool))
        node.subscriptions["/keyframes"].callback(convert.keyframe_cloud(T, kf, CAM))
        node.subscriptions["/keyframe_info"].callback(convert.keyframe_info(T, kf, CAM))
        poses.append((s, camera_pose(i)))
    node.subscriptions["/path"].callback(M.make_path(T, poses, "map", poses[-1][0]))
    return poses


def test_interface(ros):
    node, _ = make(ros)
    assert set(node.subscriptions) == {"/keyframes", "/keyframe_info", "/path"}
    assert {f"{NS}/corrected_path", f"{NS}/refined_keyframes"} <= set(node.publishers)
    assert {f"{NS}/align", f"{NS}/refine"} <= set(node.services)
    from rclpy.qos import QoSDurabilityPolicy
    assert node.publishers[f"{NS}/corrected_path"].qos.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL


def test_align_publishes_corrected_path(ros):
    node, refiner = make(ros)
    poses = send_keyframes(node, 4)
    resp = node.services[f"{NS}/align"].call()
    assert resp.success and "4 keyframes" in resp.message
    assert node.wait(10.0)
    out = node.publishers[f"{NS}/corrected_path"].messages[-1]
    assert out.header.frame_id == "map"
    assert [M.stamp_to_ns(p.header.stamp) for p in out.poses] == [s for s, _ in poses]
    for p, (_, T0) in zip(out.poses, poses):
        assert np.allclose(M.pose_to_matrix(p), refiner.C @ T0, atol=1e-9)


def test_refine_publishes_refined_keyframes(ros):
    node, refiner = make(ros)
    send_keyframes(node, 3)
    assert node.services[f"{NS}/refine"].call().success
    assert node.wait(10.0)
    msgs = node.publishers[f"{NS}/refined_keyframes"].messages
    assert len(msgs) == 3 and msgs[0].header.frame_id == CAM and msgs[0].height == 4
    z = M.pointcloud2_to_xyz(msgs[0])["points"][..., 2]
    assert np.allclose(z, grid_points_cam()[..., 2] + refiner.depth_offset_m)
    assert refiner.calls == ["refine", "transients"]


def test_refine_publishes_transients_as_invalid_points(ros):
    """The node runs the same refine stage as replay --refine: transient pixels (here the fake
    stage's first column) go out as NaN points, which recon_node drops from the keyframe."""
    node, refiner = make(ros, drop_first_column=True)
    send_keyframes(node, 3)
    assert node.services[f"{NS}/refine"].call().success and node.wait(10.0)
    msgs = node.publishers[f"{NS}/refined_keyframes"].messages
    assert len(msgs) == 3
    z = M.pointcloud2_to_xyz(msgs[0])["points"][..., 2]
    assert np.isnan(z[:, 0]).all()
    assert np.allclose(z[:, 1:], grid_points_cam()[:, 1:, 2] + refiner.depth_offset_m)
    assert "transient" in node.last_result["refine"]


@pytest.mark.parametrize("frontend,fixed", [("rgbd", True), ("spann3r", False)])
def test_metric_frontend_keeps_keyframe_scales(ros, frontend, fixed):
    """As in replay --refine, alignment behind a metric frontend keeps every keyframe's scale."""
    from recon_ros.refine.schema import RefineConfig
    got = {}

    def build(cfg):
        got["cfg"] = cfg
        return FakeRefiner(cfg)

    node, _ = make(ros, factory=build, core_cls=RefineConfig, overrides={"frontend.name": frontend})
    assert not node.unavailable
    assert got["cfg"].align.fix_scale is fixed


def test_busy_and_too_few_keyframes(ros):
    gate = threading.Event()
    node, refiner = make(ros, factory=lambda cfg: FakeRefiner(cfg, gate=gate))
    send_keyframes(node, 2)
    resp = node.services[f"{NS}/align"].call()
    assert not resp.success and "needs 3" in resp.message
    send_keyframes(node, 3)
    assert node.services[f"{NS}/align"].call().success
    busy = node.services[f"{NS}/refine"].call()
    assert not busy.success and "busy" in busy.message and "align" in busy.message
    gate.set()
    assert node.wait(10.0)
    assert node.services[f"{NS}/refine"].call().success
    assert node.wait(10.0)


def test_not_configured_reports_instead_of_faking(ros):
    def broken(cfg):
        raise ImportError("recon_ros.refine.stages is not installed")

    node, _ = make(ros, factory=broken)
    send_keyframes(node, 5)
    for name in ("align", "refine"):
        resp = node.services[f"{NS}/{name}"].call()
        assert not resp.success and "not configured" in resp.message and "not installed" in resp.message
    node._on_schedule()
    assert not node.publishers[f"{NS}/corrected_path"].messages
    assert any("not configured" in m for m in node.get_logger().messages("error"))


def test_timer_runs_stages_periodically(ros):
    """The schedule follows the node's ROS clock (sim time when a bag plays): nothing before the
    first /clock, the first period starts at the first tick, then align every period."""
    node, refiner = make(ros, overrides={"schedule.align_period_s": 2.0, "schedule.refine_period_s": 0.0})
    send_keyframes(node, 3)
    clock = node.get_clock()
    clock.set_ns(0)  # sim time before /clock: nothing is due
    node.timers[0].fire()
    clock.set_ns(100_000_000_000)
    node.timers[0].fire()  # starts the periods
    clock.set_ns(101_000_000_000)
    node.timers[0].fire()
    assert node.wait(10.0) and refiner.calls == []
    clock.set_ns(102_000_000_000)
    node.timers[0].fire()
    assert node.wait(10.0)
    assert refiner.calls == ["align"]
    assert node.publishers[f"{NS}/corrected_path"].messages


# -- sessions and memory --------------------------------------------------------------------------
def test_reset_starts_a_new_session(ros):
    """recon_node's empty keyframe path (its reset, also on a time jump) drops every kept keyframe:
    the next align runs on the new session's keyframes only, and the stages forget the old ones."""
    node, refiner = make(ros)
    send_keyframes(node, 6)
    assert node.services[f"{NS}/align"].call().success and node.wait(10.0)
    assert refiner.cached == set(range(6))
    node.subscriptions["/path"].callback(M.make_path(T, [], "map", 5_000_000_000))  # the reset
    assert len(node._store) == 0
    assert any("dropped 6 keyframe(s)" in m for m in node.get_logger().messages("info"))
    send_keyframes(node, 3)  # the new session (new stamps would do as well)
    resp = node.services[f"{NS}/align"].call()
    assert resp.success and "on 3 keyframes" in resp.message, resp.message
    assert node.wait(10.0)
    assert refiner.cached == {6, 7, 8}  # the old session's caches were forgotten
    out = node.publishers[f"{NS}/corrected_path"].messages[-1]
    assert len(out.poses) == 3


def test_result_of_a_stage_started_before_a_reset_is_discarded(ros):
    gate = threading.Event()
    node, refiner = make(ros, factory=lambda cfg: FakeRefiner(cfg, gate=gate))
    send_keyframes(node, 4)
    assert node.services[f"{NS}/align"].call().success  # held by the gate
    node.subscriptions["/path"].callback(M.make_path(T, [], "map", 5_000_000_000))
    gate.set()
    assert node.wait(10.0)
    assert not node.publishers[f"{NS}/corrected_path"].messages
    assert node.counts["stale_results"] == 1 and "discarded" in node.last_result["align"]


MiB = 2 ** 20


def make_capped(ros, cap_mib, reserve_mib, base_mib, kf_mib, stage_kf_mib=0, **fake):
    """A refiner under a resident-memory cap, its RSS probed by FakeResidentMemory: the process
    holds ``base_mib`` plus what its keyframe store holds (each test keyframe counted as
    ``kf_mib`` through the stages' per-keyframe cache estimate); a stage needs ``stage_kf_mib``
    per keyframe beside its reserve."""
    holder = {}
    def held():  # what the store holds; a stage's per-keyframe share is held back, not resident
        store = holder["node"]._store if "node" in holder else None
        return store.nbytes() - stage_kf_mib * MiB * len(store) if store is not None else 0

    probe = FakeResidentMemory(base_mib * MiB, held)
    made = {}

    def build(cfg):
        made["r"] = FakeRefiner(cfg, **fake)
        return made["r"]

    from rclpy.parameter import Parameter
    node = ros.RefinerNode(core_cls=FakeCoreConfig, refiner_factory=build, memory_probe=probe,
                           parameter_overrides=[Parameter(name="input.max_memory_mb", value=float(cap_mib)),
                                                Parameter(name="input.stage_reserve_mb", value=float(reserve_mib)),
                                                Parameter(name="input.stage_mb_per_keyframe",
                                                          value=float(stage_kf_mib))])
    holder["node"] = node
    node._store.extra_bytes_per_keyframe = (kf_mib + stage_kf_mib) * MiB
    return node, made["r"], probe


def test_memory_cap_bounds_the_store_by_the_resident_set(ros):
    # 300 MiB cap - 100 MiB held back for a stage - 120 MiB resident = 80 MiB for keyframes
    node, refiner, _ = make_capped(ros, cap_mib=300, reserve_mib=100, base_mib=120, kf_mib=10)
    assert node._store.max_bytes == 80 * MiB
    send_keyframes(node, 12)
    assert len(node._store) == 7 and node._store.evicted == 5  # 7 x (10 MiB + 452 B) <= 80 MiB
    assert node.services[f"{NS}/align"].call().success and node.wait(10.0)
    assert refiner.forgets[0] == sorted(node._store.ids())  # forgotten before the stage ran
    assert refiner.cached == set(range(5, 12))


def test_memory_cap_learns_a_stages_working_memory(ros):
    # a stage that needs 150 MiB: afterwards 150 MiB are held back, and the keyframes shrink
    # so that resident + working memory stay under the cap
    holder = {}
    node, refiner, probe = make_capped(ros, cap_mib=301, reserve_mib=50, base_mib=100, kf_mib=10,
                                       during_stage=lambda: holder["probe"].hold_working(150 * MiB))
    holder["probe"] = probe
    send_keyframes(node, 15)
    assert len(node._store) == 15  # 150 MiB of keyframes fit beside 100 MiB and a 50 MiB reserve
    assert node.services[f"{NS}/align"].call().success and node.wait(10.0)
    assert node._memory.reserve >= 150 * MiB
    assert probe() + node._memory.reserve <= 301 * MiB
    assert len(node._store) == 5 and sorted(refiner.cached) == sorted(node._store.ids())
    assert node._memory.peak_rss >= (100 + 150 + 150) * MiB  # the stage's peak was seen


def test_keyframes_kept_leave_room_for_a_stage_on_each_of_them(ros):
    # 300 MiB cap - 100 MiB reserve - 120 MiB resident = 80 MiB: 10 MiB per keyframe and 10 MiB
    # of a stage's working memory per keyframe it runs on
    node, refiner, _ = make_capped(ros, cap_mib=300, reserve_mib=100, base_mib=120, kf_mib=10, stage_kf_mib=10)
    send_keyframes(node, 12)
    assert len(node._store) == 3  # 3 x 20 MiB (+ arrays) <= 80 MiB < 4 x 20 MiB
    for rnd in range(3):  # the budget re-measured around each stage stays the same
        assert node.services[f"{NS}/align"].call().success and node.wait(10.0)
        assert len(refiner.calls) == rnd + 1 and node.counts["skipped_for_memory"] == 0
        send_keyframes(node, 6, first=12 + 6 * rnd)
        assert len(node._store) == 3


def test_keyframes_arriving_during_a_stage_are_not_charged_to_it(ros):
    # the stage itself needs 20 MiB; meanwhile 10 keyframes of about 4.8 MiB arrive: the store
    # grows by about 48 MiB, which is the store's, so the 50 MiB reserve is not raised
    holder = {}

    def stage():
        send_keyframes(holder["node"], 10, first=5, side=512)
        holder["probe"].hold_working(20 * MiB)

    node, refiner, probe = make_capped(ros, cap_mib=800, reserve_mib=50, base_mib=100, kf_mib=0,
                                       during_stage=stage)
    holder["node"], holder["probe"] = node, probe
    send_keyframes(node, 5, side=512)
    grown_before = node._store.array_bytes()
    assert node.services[f"{NS}/align"].call().success and node.wait(20.0)
    assert len(node._store) == 15 and node._store.array_bytes() > grown_before + 45 * MiB
    assert node._memory.peak_rss >= 100 * MiB + node._store.array_bytes()
    assert node._memory.reserve == 50 * MiB


def test_stage_skipped_when_the_process_alone_fills_the_cap(ros):
    node, refiner, probe = make_capped(ros, cap_mib=300, reserve_mib=100, base_mib=150, kf_mib=1)
    send_keyframes(node, 4)
    assert len(node._store) == 4
    probe.base = 290 * MiB  # the process grew after the keyframes were taken
    assert node.services[f"{NS}/align"].call().success and node.wait(10.0)
    assert refiner.calls == [] and node.counts["skipped_for_memory"] == 1
    assert "skipped" in node.last_result["align"]
    assert not node.publishers[f"{NS}/corrected_path"].messages


def test_no_memory_cap_keeps_max_keyframes(ros):
    node, _ = make(ros, overrides={"input.max_memory_mb": 0.0, "input.max_keyframes": 6})
    assert node._store.max_bytes is None
    send_keyframes(node, 9)
    assert len(node._store) == 6
