"""recon_node: camera stream in, Spann3R reconstruction out (PointCloud2, poses, path, TF).

A lifecycle node. ``configure`` loads the model; ``activate`` subscribes; ``deactivate`` stops
listening; ``cleanup`` frees the GPU. With ``lifecycle.autostart`` (default) it configures and
activates itself.

Threads: subscription callbacks only match messages (approximate time) and queue them, never
decode or infer; frames wait (without blocking) for the TF they need (both in
:class:`~recon_ros.ros.intake.FrameIntake`, owned by the input group); one worker thread owns the
model and takes the newest frame when it is free (older ones are dropped and counted); services
hand their work to that thread. Everything (inputs, TF listener, services, timers, lifecycle and
parameter services) runs in the one MultiThreadedExecutor of ``main``: inputs, TF polling and the
reset service share a mutually exclusive group (they own the input-side state), the other services
a reentrant group, so a long save never blocks input, TF or the lifecycle services.

Ownership: the worker thread owns the core and the :class:`~recon_ros.pipeline.outputs.ResultPublisher`
(what has been published; it refuses other threads); it leaves a statistics snapshot
(``_stats_snapshot``) that diagnostics read. The products thread extracts and publishes frozen
map jobs. Parameter changes to a running node are applied on the worker thread, between frames.

The messages are those of ``recon-ros replay``'s output bag: one ResultPublisher builds both, with
this node's publishers (:class:`RosSink`) or a bag writer as its sink.

Shutdown (Ctrl-C, SIGTERM, lifecycle ``shutdown``): the spin loop ends, the shutdown save is
written to a temporary folder that is renamed only when complete, and the process exits 0.
"""
from __future__ import annotations

import collections
import datetime
import gc
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import rclpy
import tf2_ros
from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_updater import DiagnosticStatusWrapper, Updater
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import OccupancyGrid, Odometry, Path as PathMsg
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import Marker

from recon_ros.errors import UserInputError
from recon_ros.io import messages as M
from recon_ros.io.atomic import atomic_path
from recon_ros.io.frames import FrameDecoder
from recon_ros.pipeline.outputs import (MapCadence, MapJob, PublishOptions, ResultPublisher, TrackingChange,
                                       publish_map_job)
from recon_ros.ros import convert, params, qos
from recon_ros.ros import tf as rtf
from recon_ros.ros.intake import THROTTLE_S, FrameIntake, PendingFrame
from recon_ros.ros.schema import NodeSchema, ReconNodeConfig, recon_node_schema
from recon_ros.ros.spin import configure_process, init_rclpy, signals_request_shutdown, spin_until_shutdown
from recon_ros.ros.stamps import HealthInputs, free_gpu_memory, gpu_memory_mb, health_summary
from recon_ros.ros.worker import GpuWorker

TF_POLL_PERIOD_S = 0.01
HOUSEKEEPING_PERIOD_S = 1.0
# The products thread may be busy at most this share of the time: after a job that took d
# seconds (more than MAP_REST_AFTER_S; shorter ones cost little), the next periodic one waits
# d * (1 / MAP_DUTY - 1). Forced ones (save, reset, correction) do not wait.
MAP_DUTY = 0.25
MAP_REST_AFTER_S = 0.1


def default_reconstructor(cfg: Any) -> Any:
    """Build the core Reconstructor (imports torch and loads the model: seconds, GPU memory)."""
    from recon_ros.mapping.reconstructor import Reconstructor
    return Reconstructor(cfg)


class RosSink:
    """The :class:`~recon_ros.pipeline.outputs.Sink` of recon_node: its publishers and TF
    broadcasters (rclpy publishers may be used from any thread). Per-frame images and clouds
    are only built while enabled (``publish.*``, read at every frame) and subscribed."""

    ON_DEMAND = {"frame_cloud": "frame_cloud", "depth": "depth_image", "confidence": "confidence_image"}

    def __init__(self, types: Any, pubs: dict, publish: Callable[[], Any], tf_pub: Any = None,
                 tf_static_pub: Any = None) -> None:
        self.types = types
        self._pubs = pubs
        self._publish = publish
        self._tf = {"tf": tf_pub, "tf_static": tf_static_pub}

    def wants(self, key: str) -> bool:
        if key in self._tf:
            return self._tf[key] is not None
        pub = self._pubs.get(key)
        if pub is None:
            return False
        if key in self.ON_DEMAND:
            return bool(getattr(self._publish(), self.ON_DEMAND[key])) and pub.get_subscription_count() > 0
        return True

    def emit(self, key: str, msg: Any, stamp_ns: int) -> None:
        broadcaster = self._tf.get(key)
        if broadcaster is not None:
            broadcaster.sendTransform(msg)
        else:
            self._pubs[key].publish(msg)


class ReconNode(LifecycleNode):
    """The reconstruction node; see the module docstring and docs/ros.md."""

    def __init__(self, node_name: str = "recon_node", *, core_cls: Optional[type] = None,
                 reconstructor_factory: Optional[Callable[[Any], Any]] = None, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._msg = convert.rclpy_types()
        self._schema: NodeSchema = recon_node_schema(core_cls)
        params.declare_all(self, self._schema, lifecycle=True)
        params.add_callbacks(self, self._schema, self._on_params_applied, static_allowed=self._unconfigured,
                             apply=self._apply_params)
        self._factory = reconstructor_factory or default_reconstructor
        self._recon: Any = None
        self._worker: Optional[GpuWorker] = None
        # extracts ~/map_cloud, ~/map_mesh and ~/occupancy from snapshots, beside the worker
        self._map_worker: Optional[GpuWorker] = None
        self._published_points = 0  # of the latest ~/map_cloud (written by the products thread)
        # Names never shadow rclpy's own Node/LifecycleNode attributes (_timers, _services, ...):
        # test_ros_attributes checks that.
        self._pubs: dict[str, Any] = {}
        self._subs: list = []
        self._input_timers: list = []
        self._tf_timer: Any = None  # in _input_timers; runs while frames wait for TF
        self._service_handles: list = []
        self._tf_buffer: Any = None
        self._tf_listener: Any = None
        self._tf_pub: Any = None
        self._tf_static_pub: Any = None
        self._intake: Optional[FrameIntake] = None  # the input group's (made at configure)
        # the worker's (made at configure): the frame decoder (the session's image size), what
        # has been published, the map's publication times
        self._decoder = FrameDecoder()
        self._out: Optional[ResultPublisher] = None
        self._map_cadence = MapCadence(MAP_DUTY, MAP_REST_AFTER_S)  # the worker's and the products thread's
        self._stats_snapshot: dict = {}  # written by the worker, read by diagnostics
        # set by activate (executor thread), taken by the worker before its next frame: the
        # frontend then treats that frame as following a pause in processing
        self._gap_pending = threading.Event()
        self._counts: collections.Counter = collections.Counter()
        self._count_lock = threading.Lock()
        self._active = False
        self._activated_ns = 0
        self._timings: dict = {}
        self._last_autosave_ns = 0
        self._finished = False
        self.shutdown_requested = threading.Event()  # main() leaves its spin loop when set
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._service_group = ReentrantCallbackGroup()
        self._diag = Updater(self, period=self.ros.diagnostics.period_s)
        self._diag.setHardwareID("recon_ros")
        self._diag.add("recon_node", self._diagnose)

    # -- configuration -----------------------------------------------------------------------
    @property
    def ros(self) -> ReconNodeConfig:
        return self._schema.ros

    @property
    def autostart(self) -> bool:
        return bool(self.get_parameter("lifecycle.autostart").value)

    def _unconfigured(self) -> bool:
        """Read-only parameters may change while there is no model (they take effect at configure)."""
        return self._recon is None

    def _apply_params(self, fn: Callable[[], dict]) -> dict:
        """Apply checked parameter changes on the worker thread (the config's reader) if it runs."""
        worker = self._worker
        if worker is None or not worker.running:
            return fn()
        return worker.call(fn).result(self.ros.save.timeout_s)

    def _on_params_applied(self, applied: dict) -> None:
        self.get_logger().info("parameters changed: " + ", ".join(f"{k}={v!r}" for k, v in applied.items()))

    def _count(self, key: str, n: int = 1) -> None:
        with self._count_lock:
            self._counts[key] += n

    def counters(self) -> dict:
        """Every counter (received, matched, dropped, bad messages, TF timeouts, ...)."""
        with self._count_lock:
            out = dict(self._counts)
        if self._worker is not None:
            st = self._worker.stats()
            out.update(dropped_busy=st.dropped, processed=st.processed, failed=st.failed)
        matcher = self._intake.matcher if self._intake is not None else None
        if matcher is not None:
            out.update(convert.matcher_counts(matcher))
        return out

    # -- lifecycle ---------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        log = self.get_logger()
        try:
            params.read_all(self, self._schema)
        except UserInputError as exc:
            log.error(f"bad parameter: {exc}")
            return TransitionCallbackReturn.FAILURE
        try:
            self._recon = self._factory(self._schema.core)
        except Exception as exc:  # model files, CUDA, ...: report and stay unconfigured
            log.error(f"could not build the reconstructor: {exc}")
            self._release_model()
            return TransitionCallbackReturn.FAILURE
        r = self.ros
        self._intake = FrameIntake(lambda: self.ros, self._lookup, self._submit,
                                   lambda: self._request_reset("time jumped backwards"), self._count, log)
        self._create_publishers()
        self._create_services()
        self._tf_buffer = tf2_ros.Buffer()
        # no spin thread: the listener's subscriptions run in this node's executor (a spin thread
        # would move the node into the listener's own single-threaded executor)
        self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self, spin_thread=False)
        if r.frames.publish_tf:
            self._tf_pub = tf2_ros.TransformBroadcaster(self)
            self._tf_static_pub = tf2_ros.StaticTransformBroadcaster(self)
        sink = RosSink(self._msg, self._pubs, lambda: self.ros.publish, self._tf_pub, self._tf_static_pub)
        self._out = ResultPublisher(sink, r.frames, lambda: PublishOptions.of(self.ros.publish), self._now_ns)
        self._map_cadence = MapCadence(MAP_DUTY, MAP_REST_AFTER_S)
        self._decoder = FrameDecoder(undistort=r.input.undistort)
        self._worker = GpuWorker(self._process, name="recon_gpu", on_error=self._on_worker_error)
        self._worker.start()
        self._map_worker = GpuWorker(self._publish_map_job, name="recon_map_products",
                                     on_error=self._on_map_worker_error, nice=r.process.map_thread_nice)
        self._map_worker.start()
        log.info("configured: model ready")
        if self._recon.loaded_from is not None:
            log.info(f"loaded the map at {self._recon.loaded_from} "
                     f"({'localization only' if self._recon.localizing else 'continuing it'}); "
                     "the first frames are located in it")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        r = self.ros.input
        compressed = r.image_transport == "compressed"
        secondaries = (["camera_info"] if r.use_camera_info else []) + (["depth"] if r.use_depth else [])
        names = ["image"] + secondaries
        profile = qos.input_qos(r.qos, r.queue_size)
        image_topic = "image/compressed" if compressed else "image"
        image_type = CompressedImage if compressed else Image
        self._subs = [self.create_subscription(image_type, image_topic, lambda m: self._on_input("image", m),
                                               profile, callback_group=self._input_group)]
        if r.use_camera_info:
            self._subs.append(self.create_subscription(CameraInfo, "camera_info",
                                                       lambda m: self._on_input("camera_info", m),
                                                       profile, callback_group=self._input_group))
        if r.use_depth:
            self._subs.append(self.create_subscription(Image, "depth", lambda m: self._on_input("depth", m),
                                                       profile, callback_group=self._input_group))
        if r.corrected_path_topic:
            self._subs.append(self.create_subscription(PathMsg, r.corrected_path_topic, self._on_corrected_path,
                                                       qos.latched(), callback_group=self._input_group))
        if r.refined_keyframes_topic:
            self._subs.append(self.create_subscription(PointCloud2, r.refined_keyframes_topic,
                                                       self._on_refined_keyframe, qos.stream(50),
                                                       callback_group=self._input_group))
        # polls TF only while frames wait for it (a timer firing 100 times a second costs the
        # executor's thread a share of the CPU that tracking needs)
        self._tf_timer = self.create_timer(TF_POLL_PERIOD_S, self._poll_tf, callback_group=self._input_group)
        self._tf_timer.cancel()
        self._input_timers = [self._tf_timer, self._housekeeping_timer()]
        self._intake.start(convert.make_matcher(secondaries, r.sync_slop_s, r.queue_size))
        self._activated_ns = self._now_ns()
        self._gap_pending.set()  # frames were not processed while inactive
        self._active = True
        f = self.ros.frames
        plan = rtf.plan_tf(f.map_frame, f.odom_frame, f.base_frame, "<camera frame of the images>")
        topics = ", ".join(f"{s.topic_name}" for s in self._subs)
        self.get_logger().info(
            f"active: subscribed {topics} with QoS {qos.describe(profile)} ({r.qos}); matching "
            f"{'+'.join(names)} with slop {r.sync_slop_s} s; publishing TF "
            f"{plan.parent} -> {plan.child if f.publish_tf else '(off)'}; static {f.map_frame} -> "
            f"{f.recon_frame}")
        return TransitionCallbackReturn.SUCCESS

    def _housekeeping_timer(self) -> Any:
        return self.create_timer(HOUSEKEEPING_PERIOD_S, self._housekeeping, callback_group=self._input_group)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        self._destroy_inputs()
        if self._worker is not None:
            self._worker.clear_pending()
        self.get_logger().info("inactive: not listening (activate to resume)")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        if not self._teardown():
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info("cleaned up: model released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        # stop listening now and answer at once; main() leaves its loop and saves (finish())
        # before the process exits, so a large map does not hold up the transition
        self._active = False
        self._destroy_inputs()
        self.shutdown_requested.set()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        return TransitionCallbackReturn.SUCCESS if self._teardown() else TransitionCallbackReturn.ERROR

    def finish(self) -> None:
        """Save on shutdown (if configured and there is a map) and release everything; idempotent.

        The save is complete or absent: it is written to a temporary folder renamed at the end.
        """
        if self._finished:
            return
        self._finished = True
        self._active = False
        self._destroy_inputs()
        if self._recon is not None and self.ros.save.on_shutdown and self._worker is not None:
            self._worker.clear_pending()
            try:
                saved = self._save()
                if saved is not None:
                    self.get_logger().info(f"map saved on shutdown to {saved[0]} ({saved[2]} points)")
            except Exception as exc:
                self.get_logger().error(f"saving the map on shutdown failed: {exc}")
        self._teardown()

    def _destroy_inputs(self) -> None:
        for s in self._subs:
            self.destroy_subscription(s)
        for t in self._input_timers:
            self.destroy_timer(t)
        self._subs, self._input_timers, self._tf_timer = [], [], None
        if self._intake is not None:
            self._intake.stop()

    def _teardown(self) -> bool:
        """Stop the worker and release publishers, services, TF and the model.

        False (nothing released) when the worker did not stop: it may still use all of it.
        """
        self._active = False
        self._destroy_inputs()
        if self._worker is not None:
            if not self._worker.stop(timeout=30.0):
                self.get_logger().error("the GPU worker did not stop within 30 s; keeping the model")
                return False
            self._worker = None
        if self._map_worker is not None:
            if not self._map_worker.stop(timeout=30.0):
                self.get_logger().error("the map products thread did not stop within 30 s")
                return False
            self._map_worker = None
        for p in self._pubs.values():
            self.destroy_publisher(p)
        for s in self._service_handles:
            self.destroy_service(s)
        self._pubs, self._service_handles = {}, []
        if self._tf_listener is not None:
            self._tf_listener.unregister()
        for broadcaster in (self._tf_pub, self._tf_static_pub):
            pub = getattr(broadcaster, "pub_tf", None)  # tf2_ros keeps its publisher there
            if pub is not None:
                self.destroy_publisher(pub)
        self._tf_listener = self._tf_buffer = self._tf_pub = self._tf_static_pub = None
        self._out = None
        self._stats_snapshot = {}
        self._release_model()
        return True

    def _release_model(self) -> None:
        self._recon = None
        gc.collect()
        free_gpu_memory()

    def _create_publishers(self) -> None:
        r = self.ros.publish
        mk = self.create_publisher
        self._pubs = {
            "map_cloud": mk(PointCloud2, "~/map_cloud", qos.latched()),
            "frame_cloud": mk(PointCloud2, "~/frame_cloud", qos.best_effort()),
            "pose": mk(PoseStamped, "~/pose", qos.stream(10)),
            "odom": mk(Odometry, "~/odom", qos.stream(10)),
            "path": mk(PathMsg, "~/path", qos.latched()),
            "tracking_state": mk(String, "~/tracking_state", qos.latched()),
            "map_mesh": mk(Marker, "~/map_mesh", qos.latched()),
            "occupancy": mk(OccupancyGrid, "~/occupancy", qos.latched()),
            "depth": mk(Image, "~/depth", qos.best_effort()),
            "confidence": mk(Image, "~/confidence", qos.best_effort()),
        }
        if r.keyframes:
            self._pubs["keyframes"] = mk(PointCloud2, "~/keyframes", qos.stream(50))
            self._pubs["keyframe_info"] = mk(CameraInfo, "~/keyframe_info", qos.stream(50))
            # the keyframes' frontend poses (without refiner corrections): recon_refiner's input
            self._pubs["keyframe_poses"] = mk(PathMsg, "~/keyframe_poses", qos.latched())

    def _create_services(self) -> None:
        g = self._service_group
        self._service_handles = [
            self.create_service(Trigger, "~/save_map", self._srv_save_map, callback_group=g),
            # reset changes input-side state: it runs in the input group, never beside _on_input
            self.create_service(Trigger, "~/reset", self._srv_reset, callback_group=self._input_group),
            self.create_service(SetBool, "~/set_paused", self._srv_set_paused, callback_group=g),
        ]

    # -- input (executor threads, one mutually exclusive group) ------------------------------
    def _now_ns(self) -> int:
        return int(self.get_clock().now().nanoseconds)

    def _on_input(self, name: str, msg: Any) -> None:
        intake = self._intake
        if intake is None or not self._active:
            self._count(f"received_{name}")
            return
        intake.push(name, msg, self._now_ns())
        self._tf_polling(intake.waiting > 0)

    def _submit(self, item: PendingFrame) -> None:
        if self._worker is not None:
            self._worker.submit(item)

    def _lookup(self, target: str, source: str, stamp_ns: Optional[int]) -> Optional[np.ndarray]:
        """Transform source -> target at a stamp (None: latest), without waiting; None if unknown."""
        when = Time() if stamp_ns is None else Time(nanoseconds=stamp_ns)
        try:
            tf_msg = self._tf_buffer.lookup_transform(target, source, when)
        except (tf2_ros.TransformException, AttributeError):  # AttributeError: torn down meanwhile
            return None
        return convert.transform_to_matrix(tf_msg)

    def _poll_tf(self) -> None:
        """The TF poll timer (input group): frames whose transforms arrived go to the worker."""
        intake = self._intake
        self._tf_polling(intake is not None and intake.poll_tf(self._now_ns()))

    def _tf_polling(self, on: bool) -> None:
        """Run the TF poll timer only while frames wait for transforms."""
        timer = self._tf_timer
        if timer is None:
            return
        if not on:
            timer.cancel()
        elif timer.is_canceled():
            timer.reset()

    def _request_reset(self, reason: str) -> Any:
        """Reset input-side state now (input group) and the map on the worker; the worker's Future."""
        if self._intake is not None:
            self._intake.reset()
        if self._tf_buffer is not None:
            self._tf_buffer.clear()
        if self._worker is not None:
            self._worker.clear_pending()
            return self._worker.call(self._do_reset, reason)
        return None

    def _housekeeping(self) -> None:
        if not self._active:
            return
        r = self.ros
        now = self._now_ns()
        if now <= 0:  # sim time before the first /clock message: nothing can be late yet
            return
        if self._activated_ns <= 0:
            self._activated_ns = now  # activated before /clock started: count from its first tick
        last = self._intake.last_match_ns or self._activated_ns
        if not self._intake.paused.is_set() and now - last > r.diagnostics.no_data_warn_s * 1e9:
            self._warn_no_data()
        if self._worker is None:
            return
        if r.save.autosave_period_s > 0 and self._map_worker is not None:
            if self._last_autosave_ns == 0:
                self._last_autosave_ns = now
            elif now - self._last_autosave_ns >= r.save.autosave_period_s * 1e9:
                self._last_autosave_ns = now
                # written on the map products thread: neither tracking nor this timer waits for it
                self._map_worker.call(self._autosave)
        if self._out.map_dirty:
            self._worker.call(self._maybe_publish_map)

    def _warn_no_data(self) -> None:
        c = self.counters()
        r = self.ros.input
        topics = ", ".join(s.topic_name for s in self._subs)
        received = ", ".join(f"{k[len('received_'):]}={v}" for k, v in sorted(c.items()) if k.startswith("received_"))
        unmatched = ", ".join(f"{k[len('sync_'):]}={v}" for k, v in sorted(c.items())
                              if k.startswith("sync_") and k != "sync_matched")
        self.get_logger().warning(
            f"no matched frame for {self.ros.diagnostics.no_data_warn_s:g} s. Subscribed: {topics} "
            f"(QoS {r.qos}, transport {r.image_transport}, approximate-time slop {r.sync_slop_s} s). "
            f"Received: {received or 'nothing'}; unmatched: {unmatched or 'none'}. Check the topic "
            f"remappings, that stamps are set and close, and the QoS (ros2 topic info -v).",
            throttle_duration_sec=THROTTLE_S)

    def _on_corrected_path(self, msg: Any) -> None:
        if self._worker is None or not self._active:
            return
        poses = convert.path_poses(msg)
        if poses:
            self._worker.call(self._apply_corrections, poses)

    def _on_refined_keyframe(self, msg: Any) -> None:
        if self._worker is None or not self._active:
            return
        try:
            xyz, _, _ = convert.cloud_arrays(msg)
        except UserInputError as exc:
            self._count("bad_messages")
            self.get_logger().warning(f"skipped a refined keyframe: {exc}", throttle_duration_sec=5.0)
            return
        self._worker.call(self._apply_refined_depth, convert.stamp_to_ns(msg.header.stamp), xyz)

    def _apply_refined_depth(self, stamp_ns: int, points_cam: np.ndarray) -> None:
        if self._recon is None:
            return
        try:
            done = self._recon.replace_depth_at(stamp_ns, points_cam)
        except UserInputError as exc:
            self._count("bad_messages")
            self.get_logger().warning(f"refined keyframe not applied: {exc}", throttle_duration_sec=5.0)
            return
        if done:
            self._count("refined_keyframes_applied")
            self._out.map_dirty = self._out.products_dirty = True
            self._maybe_publish_map()
            self._refresh_stats()
        else:
            self._count("refined_keyframes_unknown")
            self.get_logger().warning(
                f"refined keyframe stamped {stamp_ns} not applied: no such keyframe in the map (reset or "
                f"evicted)", throttle_duration_sec=THROTTLE_S)

    # -- services (reentrant group; the work runs on the worker thread) ----------------------
    def _run_on_worker(self, fn: Callable, *args: Any) -> Any:
        if self._worker is None or self._recon is None:
            raise RuntimeError("the node is not configured (ros2 lifecycle set <node> configure)")
        return self._worker.call(fn, *args).result(self.ros.save.timeout_s)

    def _srv_save_map(self, request: Any, response: Any) -> Any:
        try:
            saved = self._save()
            if saved is None:
                response.success, response.message = False, "no frame mapped yet: nothing saved"
            else:
                directory, files, points = saved
                response.success = True
                response.message = str(directory)
                self.get_logger().info(f"saved {points} points to {directory} ({', '.join(files)})")
        except Exception as exc:
            response.success, response.message = False, f"save failed: {exc}"
        return response

    def _srv_reset(self, request: Any, response: Any) -> Any:
        try:
            if self._worker is None or self._recon is None:
                raise RuntimeError("the node is not configured (ros2 lifecycle set <node> configure)")
            self._request_reset("requested").result(self.ros.save.timeout_s)
            response.success, response.message = True, "map reset"
        except Exception as exc:
            response.success, response.message = False, f"reset failed: {exc}"
        return response

    def _srv_set_paused(self, request: Any, response: Any) -> Any:
        intake = self._intake
        if intake is None:
            response.success, response.message = False, "the node is not configured"
            return response
        if request.data:
            intake.paused.set()
            if self._worker is not None:
                self._worker.clear_pending()
        else:
            intake.paused.clear()
        response.success = True
        response.message = "paused" if request.data else "resumed"
        self.get_logger().info(response.message)
        return response

    # -- the worker thread -------------------------------------------------------------------
    def _on_worker_error(self, exc: BaseException) -> None:
        if isinstance(exc, UserInputError):
            self._count("bad_messages")
            self.get_logger().warning(f"skipped a frame: {exc}", throttle_duration_sec=THROTTLE_S)
        else:
            self._count("errors")
            self.get_logger().error(f"processing a frame failed: {type(exc).__name__}: {exc}",
                                    throttle_duration_sec=THROTTLE_S)

    def _process(self, item: PendingFrame) -> None:
        model = M.camera_info_to_model(item.info) if item.info is not None else None
        frame = self._decoder.decode(item.image, model, item.depth, item.index)
        frame.T_odom_cam = item.T_odom_cam
        if item.T_base_cam is not None:
            frame.extras["T_base_cam"] = item.T_base_cam
        self._out.observe_input(frame)
        if self._gap_pending.is_set():
            self._gap_pending.clear()
            self._recon.notify_gap()
        result = self._recon.estimate(frame)
        self._log_tracking(self._out.publish_pose(result, frame.stamp_ns))  # the pose does not wait for the map
        self._recon.finish(result)
        self._timings = dict(result.timings_ms)
        self._out.publish_result(self._recon, result, frame.stamp_ns)
        self._maybe_publish_map()
        self._refresh_stats()

    def _refresh_stats(self) -> None:
        """Leave a snapshot of the core's statistics for diagnostics (worker thread only)."""
        if self._recon is not None:
            self._stats_snapshot = {**self._recon.stats(), "lost_streak": self._out.tracking.lost_streak}

    def _log_tracking(self, change: Optional[TrackingChange]) -> None:
        """Count and log losses (the publisher withholds their poses and publishes ~/tracking_state)."""
        if change is None:
            return
        if change.kind == "lost":
            self._count("tracking_lost")
            self.get_logger().warning(
                f"tracking lost ({change.streak} frame(s) in a row{': ' + change.reason if change.reason else ''}): "
                f"no pose or TF published and nothing fused until the frontend finds the camera again",
                throttle_duration_sec=THROTTLE_S)
        else:
            self.get_logger().info(f"tracking recovered after {change.streak} lost frame(s) "
                                   f"({self._out.tracking.state})")

    def _maybe_publish_map(self, force: bool = False) -> None:
        """When due (``MapCadence``), snapshot the volume (worker thread: it owns the core) and
        hand it to the products thread: ~/map_cloud at publish.map_cloud_rate_hz, ~/map_mesh
        and ~/occupancy at publish.products_rate_hz (both at once when ``force``). Extraction
        takes seconds on large maps; it never holds up the frames."""
        if self._recon is None or self._map_worker is None:
            return
        now, out, pub = self._now_ns(), self._out, self.ros.publish
        cloud, products = self._map_cadence.due(now, pub.map_cloud_rate_hz, pub.products_rate_hz, out.map_dirty,
                                                out.products_dirty, out.T_map_recon is not None, force)
        if cloud or products:
            job = out.map_job(self._recon.map_snapshot(), now, cloud, products)
            self._map_worker.submit(self._map_cadence.hand_over(job))

    def _publish_map_job(self, job: MapJob) -> None:
        """Extract and publish the map outputs of one snapshot (products thread)."""
        self._map_cadence.started(job)
        t0 = time.monotonic()
        try:
            self._extract_and_publish(job)
        finally:
            self._map_cadence.ran(time.monotonic() - t0)

    def _extract_and_publish(self, job: MapJob) -> None:
        points = publish_map_job(job, self._out.sink)  # the sink is immutable: any thread
        if job.cloud:
            self._published_points = points

    def _on_map_worker_error(self, exc: BaseException) -> None:
        self._count("map_publish_errors")
        self.get_logger().error(f"publishing the map failed: {exc!r}", throttle_duration_sec=THROTTLE_S)

    def _do_reset(self, reason: str) -> None:
        self._recon.reset()
        self._out.reset()
        self._map_cadence.reset()
        self._decoder.reset()
        self._maybe_publish_map(force=True)  # an empty latched cloud clears RViz
        # an empty ~/keyframe_poses starts a new session in recon_refiner (it drops its keyframes)
        self._out.publish_path(self._recon)
        self._refresh_stats()
        self.get_logger().info(f"map reset ({reason})")

    def _apply_corrections(self, poses_map: dict) -> None:
        if self._recon is None or self._out.T_map_recon is None:
            return
        poses = {s: self._out.recon_pose(T) for s, T in poses_map.items()}
        n = self._recon.apply_corrections(poses)
        self._recon.notify_gap()  # frames arriving meanwhile were dropped; the track may need to widen
        self._count("corrections_applied")
        self._refresh_stats()
        self.get_logger().info(f"re-anchored {n} keyframe(s) from the refiner's corrected path")
        if n:
            self._out.map_dirty = True
            self._out.publish_path(self._recon)
            self._maybe_publish_map(force=True)

    def _save(self) -> Optional[tuple]:
        """Write the map folder (map.ply, mesh, occupancy, trajectories, keyframes/, state/) into
        a new time-stamped folder; (abs dir, files, points). None when no frame was mapped yet.

        The worker freezes the map between two frames (:meth:`Reconstructor.save_snapshot`: a
        copy of the volume, the keyframes and the poses); the files are written on the calling
        thread while the worker goes on tracking. The folder is written under a hidden temporary
        name and renamed when complete, so a ``map_*`` folder is always a complete map (an
        interrupted save leaves none).
        """
        if self._worker is not None and self._worker.on_thread():
            raise RuntimeError("a save waits for the worker: start it from another thread")
        snap = self._run_on_worker(self._save_snapshot)
        if snap is None:
            return None
        root = Path(os.path.expanduser(self.ros.save.directory)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        directory = root / f"map_{stamp}"
        with atomic_path(directory) as partial:
            files = snap.write(partial)
        return directory, sorted(Path(p).name for p in files.values()), int(snap.surface.last_point_count)

    def _save_snapshot(self) -> Any:
        """What a save writes, frozen (worker thread); None before the first frame."""
        if self._recon is None or not self._recon.stats().get("frames"):
            return None
        return self._recon.save_snapshot()

    def _autosave(self) -> None:
        try:
            saved = self._save()
            if saved is not None:
                self.get_logger().info(f"autosaved the map to {saved[0]}")
        except Exception as exc:
            self.get_logger().error(f"autosave failed: {exc}")

    # -- diagnostics -------------------------------------------------------------------------
    def _diagnose(self, stat: DiagnosticStatusWrapper) -> DiagnosticStatusWrapper:
        d = self.ros.diagnostics
        intake = self._intake
        last = (intake.last_match_ns if intake is not None else 0) or None
        stats = self._stats_snapshot  # left by the worker: the core is never touched from here
        worker_ms = self._worker.stats().mean_ms if self._worker is not None else 0.0
        h = HealthInputs(
            active=self._active, paused=intake is not None and intake.paused.is_set(),
            rate_hz=intake.stamps.rate_hz() if intake is not None else 0.0,
            delay_s=intake.stamps.delay_s() if intake is not None else 0.0,
            since_last_s=None if last is None else (self._now_ns() - last) * 1e-9,
            counters=self.counters(), inference_ms=float(self._timings.get("total", worker_ms)),
            map_points=self._published_points, scale=float(stats.get("scale", 1.0)),
            gpu_memory_mb=gpu_memory_mb(), min_rate_hz=d.min_rate_hz, max_delay_s=d.max_stamp_delay_s,
            no_data_warn_s=d.no_data_warn_s, lost_streak=int(stats.get("lost_streak", 0)))
        level, message, values = health_summary(h)
        # DiagnosticStatus.level is a ROS byte: rclpy wants bytes (an int is mis-serialised)
        stat.summary(bytes([level]) if isinstance(DiagnosticStatus.OK, bytes) else level, message)
        for k, v in values.items():
            stat.add(k, v)
        return stat


def main(args: Optional[list] = None) -> None:
    """Entry point of ``ros2 run recon_ros recon_node``."""
    init_rclpy(args)
    node = ReconNode()
    configure_process(node)
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    with signals_request_shutdown(node):
        try:
            if node.autostart:
                node.trigger_configure()
                if node._recon is not None and not node.shutdown_requested.is_set():
                    node.trigger_activate()
            spin_until_shutdown(node, executor)
        finally:
            node.finish()
            executor.shutdown(timeout_sec=5.0)
            node.destroy_node()
            rclpy.try_shutdown()


if __name__ == "__main__":
    main()
