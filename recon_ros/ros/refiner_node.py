"""recon_refiner: background global alignment and depth refinement of recon_node's keyframes.

Subscribes ``keyframes`` (organised PointCloud2), ``keyframe_info`` (CameraInfo) and ``path``
(nav_msgs/Path of the keyframes' frontend camera poses); remap them to recon_node's
``~/keyframes``, ``~/keyframe_info`` and ``~/keyframe_poses`` (not ``~/path``, which already
carries the corrections). It needs only these topics, so it can run on another machine.

``~/align`` and ``~/refine`` (std_srvs/Trigger) start the stage in a background thread and answer
at once; a call while a stage runs answers that it is busy. A timer starts them periodically
(``schedule.*_period_s``). Results: ``~/corrected_path`` (reliable, transient-local; recon_node
re-anchors its map from it) and ``~/refined_keyframes`` (organised PointCloud2 per keyframe).
When the refine stages cannot be built, the services answer "not configured" with the reason and
nothing is published: no correction is ever made up.

Sessions and memory: an empty ``path`` (recon_node publishes one when it resets its map, also on a
time jump) starts a new session: the kept keyframes are dropped, a running stage's result is
discarded, and the stages forget their caches. The store is bounded by ``input.max_keyframes`` and
by ``input.max_memory_mb``, a cap on the process's resident memory (:mod:`recon_ros.ros.memory`):
the keyframes kept are what fits beside the process and a running stage's working memory, both
measured around every stage. Dropped keyframes are forgotten by the stages (``Refiner.forget``)
on the stage thread, which owns the refiner, before and after every stage; a stage that would
not fit even with the fewest keyframes is skipped, logged and counted.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable, Optional

import numpy as np
import rclpy
from nav_msgs.msg import Path as PathMsg
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, PointCloud2
from std_srvs.srv import Trigger

from recon_ros.errors import UserInputError
from recon_ros.ros import convert, params, qos
from recon_ros.ros.memory import MIB, MemoryCap, PeakSampler, release_free_memory, rss_bytes
from recon_ros.ros import tf as rtf
from recon_ros.ros.keyframe_store import KeyframeStore
from recon_ros.ros.schema import NodeSchema, RefinerNodeConfig, refiner_node_schema
from recon_ros.refine.schedule import StageSchedule
from recon_ros.ros.spin import configure_process, init_rclpy, signals_request_shutdown, spin_until_shutdown

SCHEDULE_PERIOD_S = 1.0
SHUTDOWN_WAIT_S = 3.0  # how long the process waits for a running stage when asked to exit
SIFT_DESCRIPTOR_BYTES = 128 * 4 + 32  # one cached feature: descriptor + keypoint


def cache_bytes_per_keyframe(core: Any) -> int:
    """Estimated bytes the refine stages cache per keyframe (SIFT features; edges are smaller)."""
    matching = getattr(core, "matching", None)
    return int(getattr(matching, "max_features", 2000)) * SIFT_DESCRIPTOR_BYTES


def default_refiner(cfg: Any) -> Any:
    """Build the refine stages (imports torch)."""
    from recon_ros.refine.stages import Refiner
    return Refiner(cfg)


def stages_config(core: Any, frontend: str) -> Any:
    """The refine stages' config for recon_node's frontend (see
    :func:`recon_ros.refine.periodic.align_config`)."""
    from dataclasses import replace

    from recon_ros.mapping.schema import METRIC_FRONTENDS
    from recon_ros.refine.periodic import align_config
    align = getattr(core, "align", None)
    if align is None:  # a core config without alignment settings
        return core
    return replace(core, align=align_config(align, frontend in METRIC_FRONTENDS))


class RefinerNode(Node):
    """The background refinement node; see the module docstring."""

    def __init__(self, node_name: str = "recon_refiner", *, core_cls: Optional[type] = None,
                 refiner_factory: Optional[Callable[[Any], Any]] = None,
                 memory_probe: Callable[[], int] = rss_bytes, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._msg = convert.rclpy_types()
        log = self.get_logger()
        self._schema: Optional[NodeSchema] = None
        self._refiner: Any = None
        self.unavailable = ""  # why the stages are not available ("" when they are)
        try:
            self._schema = refiner_node_schema(core_cls)
        except UserInputError as exc:
            # Without the core config there are no core parameters; keep the ROS ones.
            self._schema = NodeSchema(None, RefinerNodeConfig())
            self.unavailable = str(exc)
        params.declare_all(self, self._schema)
        params.add_callbacks(self, self._schema, lambda applied: None)
        try:
            params.read_all(self, self._schema)
        except UserInputError as exc:
            self.unavailable = f"bad parameter: {exc}"
        if not self.unavailable:
            try:
                core = stages_config(self._schema.core, self.ros.frontend.name)
                self._refiner = (refiner_factory or default_refiner)(core)
            except Exception as exc:  # missing stage, model weights, CUDA ...
                self.unavailable = f"{type(exc).__name__}: {exc}"
        if self.unavailable:
            log.error(f"refine stages not configured ({self.unavailable}); ~/align and ~/refine "
                      f"will answer with this reason")
        r = self.ros
        self._memory = MemoryCap(int(r.input.max_memory_mb * MIB), int(r.input.stage_reserve_mb * MIB),
                                 memory_probe, int(r.input.stage_mb_per_keyframe * MIB))
        self._memory.measure()
        # every kept keyframe is charged what the stages cache for it and what a stage needs for it
        self._store = KeyframeStore(r.input.max_keyframes, self._memory.store_budget(0),
                                    cache_bytes_per_keyframe(self._schema.core) + self._memory.per_keyframe)
        if self._memory.enabled and self._memory.headroom() < 64 * MIB:
            log.warning(f"input.max_memory_mb {r.input.max_memory_mb:.0f} leaves "
                        f"{self._memory.headroom() / MIB:.0f} MiB for keyframes beside the node "
                        f"({self._memory.last_rss / MIB:.0f} MiB resident) and a stage's working "
                        f"memory ({self._memory.reserve / MIB:.0f} MiB): few keyframes will be kept")
        self._store_lock = threading.Lock()
        self._job_lock = threading.Lock()
        self.busy: Optional[str] = None  # name of the running stage
        self._thread: Optional[threading.Thread] = None
        self._schedule = StageSchedule(self.ros.schedule)
        self.last_result: dict[str, str] = {}
        self.counts: dict[str, int] = {"stale_results": 0, "refined_published": 0,
                                       "skipped_for_memory": 0}
        self.shutdown_requested = threading.Event()  # main() leaves its spin loop when set
        group = MutuallyExclusiveCallbackGroup()
        sgroup = ReentrantCallbackGroup()
        in_qos = qos.input_qos(r.input.qos, r.input.queue_size)
        self._subs = [
            self.create_subscription(PointCloud2, "keyframes", self._on_cloud, in_qos, callback_group=group),
            self.create_subscription(CameraInfo, "keyframe_info", self._on_info, in_qos, callback_group=group),
            self.create_subscription(PathMsg, "path", self._on_path, qos.latched(), callback_group=group),
        ]
        self._pub_path = self.create_publisher(PathMsg, "~/corrected_path", qos.latched())
        self._pub_refined = self.create_publisher(PointCloud2, "~/refined_keyframes", qos.stream(50))
        # names never shadow rclpy's own Node attributes (_services, _timers, ...)
        self._service_handles = [
            self.create_service(Trigger, "~/align", self._srv_align, callback_group=sgroup),
            self.create_service(Trigger, "~/refine", self._srv_refine, callback_group=sgroup),
        ]
        self._schedule_timer = self.create_timer(SCHEDULE_PERIOD_S, self._on_schedule, callback_group=group)

    @property
    def ros(self) -> RefinerNodeConfig:
        return self._schema.ros

    # -- inputs ------------------------------------------------------------------------------
    def _on_cloud(self, msg: Any) -> None:
        try:
            xyz, rgb, conf = convert.cloud_arrays(msg)
            with self._store_lock:
                self._store.add_cloud(convert.stamp_to_ns(msg.header.stamp), str(msg.header.frame_id),
                                      xyz, rgb, conf)
        except UserInputError as exc:
            self.get_logger().warning(f"skipped a keyframe cloud: {exc}", throttle_duration_sec=5.0)

    def _on_info(self, msg: Any) -> None:
        try:
            K = convert.K_from_camera_info(msg)
            with self._store_lock:
                self._store.add_info(convert.stamp_to_ns(msg.header.stamp), K)
        except UserInputError as exc:
            self.get_logger().warning(f"skipped a keyframe_info: {exc}", throttle_duration_sec=5.0)

    def _on_path(self, msg: Any) -> None:
        poses = convert.path_poses(msg)
        with self._store_lock:
            if poses:
                self._store.set_poses(poses)
                return
            had = len(self._store)
            self._store.clear()
        self.get_logger().info(f"recon_node started a new map: dropped {had} keyframe(s)")

    # -- starting stages ---------------------------------------------------------------------
    def start(self, stage: str) -> tuple[bool, str]:
        """Start ``align`` or ``refine`` in the background; (started, message)."""
        if self._refiner is None:
            return False, f"not configured: {self.unavailable}"
        with self._store_lock:
            keyframes = self._store.keyframes()
            session = self._store.session
            evicted = self._store.evicted
        need = self.ros.schedule.min_keyframes
        if len(keyframes) < need:
            capped = (f" (input.max_memory_mb {self._memory.cap / MIB:.0f} keeps no more)"
                      if self._memory.enabled and evicted else "")
            return False, f"only {len(keyframes)} complete keyframe(s){capped}; {stage} needs {need}"
        with self._job_lock:
            if self.busy is not None:
                return False, f"busy: {self.busy} is running"
            self.busy = stage
        self._schedule.ran(stage, self._now_ns())
        target = self._run_align if stage == "align" else self._run_refine
        self._thread = threading.Thread(target=self._run, args=(stage, target, keyframes, session),
                                        name=f"recon_{stage}", daemon=True)
        self._thread.start()
        return True, f"{stage} started on {len(keyframes)} keyframes"

    def wait(self, timeout: float = 30.0) -> bool:
        """Wait for the running stage (tests, shutdown); False if still running."""
        t = self._thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def _current(self, session: int) -> bool:
        """Whether results of a stage started in ``session`` may still be published."""
        with self._store_lock:
            current = self._store.session == session
        if not current:
            self.counts["stale_results"] += 1
        return current and not self.shutdown_requested.is_set()

    def _forget_dropped(self) -> None:
        """Let the stages drop what they cached for keyframes no longer kept (stage thread only)."""
        with self._store_lock:
            keep = self._store.ids()
        self._refiner.forget(keep)

    def _store_bytes(self) -> int:
        """Bytes of the stored keyframe arrays (keyframes arrive while a stage runs)."""
        with self._store_lock:
            return self._store.array_bytes()

    def _fit_memory(self) -> tuple[int, int]:
        """Measure the resident set with dropped keyframes forgotten and free memory given back,
        and bound the store to what fits under the cap (stage thread). (resident, dropped)."""
        self._forget_dropped()
        release_free_memory()
        rss = self._memory.measure()
        with self._store_lock:
            dropped = self._store.set_budget(self._memory.store_budget(self._store.nbytes(), len(self._store)))
        if dropped:
            self._forget_dropped()
            release_free_memory()
            rss = self._memory.measure()
        return rss, dropped

    def _run(self, stage: str, target: Callable, keyframes: list, session: int) -> None:
        t0 = time.perf_counter()
        try:
            before, dropped = self._fit_memory()
            if dropped:
                with self._store_lock:
                    kept = set(self._store.ids())
                keyframes = [kf for kf in keyframes if kf.id in kept]
                self.get_logger().info(f"memory cap: dropped the {dropped} oldest keyframe(s) "
                                       f"({before / MIB:.0f} MiB resident, cap "
                                       f"{self._memory.cap / MIB:.0f} MiB)")
            if self._memory.enabled and (len(keyframes) < self.ros.schedule.min_keyframes
                                         or self._memory.headroom(len(keyframes)) < 0):
                self.counts["skipped_for_memory"] += 1
                msg = (f"skipped: {before / MIB:.0f} MiB resident leaves no room for the stage "
                       f"({(self._memory.reserve + self._memory.per_keyframe * len(keyframes)) / MIB:.0f} "
                       f"MiB on {len(keyframes)} keyframes) under input.max_memory_mb "
                       f"{self._memory.cap / MIB:.0f}")
                self.last_result[stage] = msg
                self.get_logger().warning(f"{stage} {msg}")
                return
            store_before = self._store_bytes()
            with PeakSampler(self._memory.probe) as peak:
                msg = target(keyframes, session)
            self._memory.learn(before, peak.peak, len(keyframes), self._store_bytes() - store_before)
            self.last_result[stage] = msg
            self.get_logger().info(f"{stage}: {msg} ({(time.perf_counter() - t0):.1f} s; resident "
                                   f"{before / MIB:.0f} -> peak {peak.peak / MIB:.0f} MiB)")
        except Exception as exc:  # a failed stage is reported, the node keeps running
            self.last_result[stage] = f"failed: {exc}"
            if not self.shutdown_requested.is_set():
                self.get_logger().error(f"{stage} failed: {type(exc).__name__}: {exc}")
        finally:
            try:
                self._fit_memory()
            finally:
                with self._job_lock:
                    self.busy = None

    def _run_align(self, keyframes: list, session: int) -> str:
        from recon_ros.refine.periodic import align_keyframes
        result = align_keyframes(self._refiner, keyframes)
        corrections = result.corrections
        by_id = {kf.id: kf for kf in keyframes}
        poses = [(by_id[i].stamp_ns, rtf.apply_correction(C, by_id[i].T_world_cam))
                 for i, C in corrections.items() if i in by_id]
        poses.sort(key=lambda p: p[0])
        if not poses:
            return "no corrections"
        if not self._current(session):
            return "result discarded: recon_node started a new map (or shutdown) meanwhile"
        self._pub_path.publish(convert.path(self._msg, poses, poses[-1][0], self.ros.schedule.map_frame))
        return f"published corrected poses of {len(poses)} keyframes"

    def _run_refine(self, keyframes: list, session: int) -> str:
        from recon_ros.refine.periodic import refine_keyframes
        updates = refine_keyframes(self._refiner, keyframes)
        if not self._current(session):
            return "result discarded: recon_node started a new map (or shutdown) meanwhile"
        by_id = {kf.id: kf for kf in keyframes}
        replaced = dropped = 0
        for u in updates.values():
            kf = by_id[u.kf_id]
            # invalid pixels (transients among them) go out as NaN: recon_node drops them
            pts = np.where(u.valid[..., None], u.points_cam, np.nan).astype(np.float32)
            with self._store_lock:
                frame_id = self._store.frame_id(kf.stamp_ns)
            self._pub_refined.publish(convert.cloud(self._msg, pts, kf.colors,
                                                    np.asarray(kf.confidence, np.float32), kf.stamp_ns, frame_id))
            replaced += u.replaced_px
            dropped += u.dropped_px
        self.counts["refined_published"] += len(updates)
        return (f"published {len(updates)} of {len(keyframes)} keyframes ({replaced} pixels of refined "
                f"depth, {dropped} transient pixels dropped); the others were unchanged")

    # -- services and schedule ---------------------------------------------------------------
    def _srv_align(self, request: Any, response: Any) -> Any:
        response.success, response.message = self.start("align")
        return response

    def _srv_refine(self, request: Any, response: Any) -> Any:
        response.success, response.message = self.start("refine")
        return response

    def _now_ns(self) -> int:
        return int(self.get_clock().now().nanoseconds)

    def _on_schedule(self) -> None:
        now = self._now_ns()
        if self._refiner is None or self.busy is not None or now <= 0:  # sim time before /clock
            return
        for stage in self._schedule.due(now)[:1]:  # one stage runs at a time
            ok, msg = self.start(stage)
            self._schedule.ran(stage, now)  # started or not, the next try is a period later
            if not ok:
                self.get_logger().debug(f"scheduled {stage} not started: {msg}")


def main(args: Optional[list] = None) -> None:
    """Entry point of ``ros2 run recon_ros recon_refiner``."""
    init_rclpy(args)
    node = RefinerNode()
    configure_process(node)
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    with signals_request_shutdown(node):
        try:
            spin_until_shutdown(node, executor)
        finally:
            node.shutdown_requested.set()  # a running stage publishes nothing more
            finished = node.wait(timeout=SHUTDOWN_WAIT_S)
            executor.shutdown(timeout_sec=5.0)
            node.destroy_node()
            rclpy.try_shutdown()
    if not finished:
        # A stage still computing (torch, OpenCV threads) cannot be interrupted; letting the
        # interpreter finalise under it aborts the process. Nothing of it is kept: leave now.
        node.get_logger().info(f"left the running {node.busy or 'stage'} unfinished")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
