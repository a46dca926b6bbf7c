"""What the reconstruction publishes, built once for recon_node and the replay's output bag.

:class:`ResultPublisher` turns the core's step results (estimates, keyframes, tracking state, map
changes) into the messages of recon_node's interface (docs/ros.md) in the configured frames and
hands each to a :class:`Sink` under a topic key (:data:`TOPIC_KEYS`). The node's sink publishes
on its topics and broadcasts TF; the replay's sink (:class:`recon_ros.io.outputs.BagSink`)
writes the topics it records into a rosbag2. So the output bag carries exactly what the node
would have published for the same frames.

Ownership: a ResultPublisher belongs to the one thread that processes results (the node's
worker, the replay loop); it binds to the first thread that uses it and refuses others.
:meth:`ResultPublisher.map_job` freezes what a map publication needs, and
:func:`publish_map_job` (no publisher state) extracts and emits it on any thread.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import numpy as np

from recon_ros.geometry.transforms import invert_T, transform_points
from recon_ros.io import messages as M
from recon_ros.ros import convert
from recon_ros.ros import tf as rtf

log = logging.getLogger(__name__)

CAMERA_FRAME = "recon_camera"  # the camera frame of inputs whose frames carry no frame id
ODOM_HISTORY = 64  # odometry poses kept by stamp, for estimates that come out a few frames late

#: Topic keys a sink receives, with what each carries (recon_node's topic in brackets).
TOPIC_KEYS = {
    "pose": "geometry_msgs/PoseStamped of the body (or camera) in map (~/pose)",
    "odom": "nav_msgs/Odometry of the same pose (~/odom)",
    "tf": "geometry_msgs/TransformStamped map -> odom / base / camera (TF)",
    "tf_static": "geometry_msgs/TransformStamped map -> recon_frame (static TF)",
    "frame_cloud": "sensor_msgs/PointCloud2 of a frame's pointmap in map (~/frame_cloud)",
    "depth": "sensor_msgs/Image 32FC1 depth of a frame (~/depth)",
    "confidence": "sensor_msgs/Image 32FC1 confidence of a frame (~/confidence)",
    "keyframes": "sensor_msgs/PointCloud2, organised, of a new keyframe in its camera frame (~/keyframes)",
    "keyframe_info": "sensor_msgs/CameraInfo of that keyframe (~/keyframe_info)",
    "path": "nav_msgs/Path of the keyframes, corrected (~/path)",
    "keyframe_poses": "nav_msgs/Path of the keyframes' frontend poses (~/keyframe_poses)",
    "tracking_state": "std_msgs/String tracking / relocalized / lost (~/tracking_state)",
    "map_cloud": "sensor_msgs/PointCloud2 of the fused map in map (~/map_cloud)",
    "map_mesh": "visualization_msgs/Marker TRIANGLE_LIST, serialized (~/map_mesh)",
    "occupancy": "nav_msgs/OccupancyGrid cut from the map (~/occupancy)",
}


class Sink(Protocol):
    """Where a :class:`ResultPublisher`'s messages go."""

    types: Any  # the MessageTypes messages are built from (rclpy's, or a rosbags typestore's)

    def wants(self, key: str) -> bool:
        """Whether messages of ``key`` are worth building now (configured, and someone listens)."""

    def emit(self, key: str, msg: Any, stamp_ns: int) -> None:
        """Deliver one message (``map_mesh``: serialized bytes) stamped ``stamp_ns``."""


class NullSink:
    """A :class:`Sink` that wants nothing (a run without outputs still tracks its state)."""

    types = None

    def wants(self, key: str) -> bool:
        return False

    def emit(self, key: str, msg: Any, stamp_ns: int) -> None:
        raise AssertionError(f"NullSink wants no {key!r} messages")


@dataclass(frozen=True)
class PublishOptions:
    """The output options of recon_node's ``publish.*`` that shape messages."""

    frame_cloud_min_confidence: float = 1.5
    provisional_pose: bool = False
    path_max_length: int = 10000

    @classmethod
    def of(cls, publish: Any) -> "PublishOptions":
        """From a :class:`recon_ros.ros.schema.PublishConfig` (read at every use: some are dynamic)."""
        return cls(float(publish.frame_cloud_min_confidence), bool(publish.provisional_pose),
                   int(publish.path_max_length))


@dataclass
class TrackingChange:
    """A change worth a log line: ``lost`` (with the streak so far) or ``recovered`` (after it)."""

    kind: str
    streak: int
    reason: str = ""


@dataclass
class TrackingMonitor:
    """Frames per tracking state, losses as [first lost stamp, recovery stamp or None], and the
    current streak of lost frames."""

    state: str = ""
    lost_streak: int = 0
    frames: dict = field(default_factory=dict)
    losses: list = field(default_factory=list)

    def observe(self, state: str, stamp_ns: int, reason: str = "") -> Optional[TrackingChange]:
        """Count one processed frame in ``state``; the change to log, if any."""
        self.state = state
        self.frames[state] = self.frames.get(state, 0) + 1
        open_loss = bool(self.losses) and self.losses[-1][1] is None
        if state == "lost":
            if not open_loss:
                self.losses.append([int(stamp_ns), None])
            self.lost_streak += 1
            return TrackingChange("lost", self.lost_streak, reason)
        if open_loss:
            self.losses[-1][1] = int(stamp_ns)
        if self.lost_streak:
            streak, self.lost_streak = self.lost_streak, 0
            return TrackingChange("recovered", streak)
        return None


class MapCadence:
    """When the map outputs are due, for a caller that extracts them on a thread of their own
    (recon_node's products thread).

    The thread that processes frames asks :meth:`due` after each frame and hands the job over
    with :meth:`hand_over`; a job not yet started is merged into the newer one. The extracting
    thread calls :meth:`started` and :meth:`ran`: after a periodic job that took ``d`` seconds
    (more than ``rest_after_s``; shorter ones cost little) the next periodic one waits
    ``d * (1 / duty - 1)``, so that extraction keeps to ``duty`` of the time. Forced jobs (a
    save, a reset, a correction) never wait. Both sides' state is under one lock."""

    def __init__(self, duty: float = 0.25, rest_after_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.duty, self.rest_after_s, self._clock = duty, rest_after_s, clock
        self._lock = threading.Lock()
        self._last_cloud_ns = 0
        self._last_products_ns = 0
        self._rest_until = 0.0
        self._waiting: Optional[MapJob] = None

    def reset(self) -> None:
        """A new map: both outputs are due at the next frame."""
        with self._lock:
            self._last_cloud_ns = self._last_products_ns = 0

    def due(self, now_ns: int, cloud_rate_hz: float, products_rate_hz: float, map_dirty: bool,
            products_dirty: bool, anchored: bool, force: bool = False) -> tuple[bool, bool]:
        """(cloud, products) to publish now, by the rates, what changed and the rest; counted
        as published when due. Products need the anchor (a first estimate)."""
        def at_rate(rate: float, last: int) -> bool:
            return rate > 0 and (now_ns - last >= 1e9 / rate or now_ns < last)

        with self._lock:
            cloud = force or (map_dirty and at_rate(cloud_rate_hz, self._last_cloud_ns))
            products = anchored and (force or (products_dirty and at_rate(products_rate_hz, self._last_products_ns)))
            if not (cloud or products) or (not force and self._clock() < self._rest_until):
                return False, False
            if cloud:
                self._last_cloud_ns = now_ns
            if products:
                self._last_products_ns = now_ns
            return cloud, products

    def hand_over(self, job: "MapJob") -> "MapJob":
        """The job to submit: ``job``, also publishing what a job still waiting was to publish."""
        with self._lock:
            waiting = self._waiting
            if waiting is not None:
                job.cloud |= waiting.cloud
                job.products |= waiting.products
            self._waiting = job
        return job

    def started(self, job: "MapJob") -> None:
        """The extracting thread took ``job``: it is no longer waiting."""
        with self._lock:
            if self._waiting is job:
                self._waiting = None

    def ran(self, seconds: float) -> None:
        """The extracting thread finished a job that took ``seconds``."""
        if seconds > self.rest_after_s:
            with self._lock:
                self._rest_until = self._clock() + seconds * (1.0 / self.duty - 1.0)


@dataclass
class MapJob:
    """One map publication, frozen: ``source`` has ``fused_cloud()``, ``mesh()`` and
    ``occupancy(T)`` (a :class:`~recon_ros.mapping.reconstructor.MapSnapshot`, or the
    Reconstructor itself where nothing else runs beside it)."""

    source: Any
    stamp_ns: int
    T_map_recon: Optional[np.ndarray]
    map_frame: str
    cloud: bool
    products: bool


def publish_map_job(job: MapJob, sink: Sink) -> int:
    """Extract and emit one :class:`MapJob` (any thread: it reads nothing else); the number of
    points in the map cloud (0 when none was emitted)."""
    t, frame, points = sink.types, job.map_frame, 0
    T = job.T_map_recon
    if job.cloud and sink.wants("map_cloud"):
        xyz, rgb, conf = job.source.fused_cloud()
        xyz = np.asarray(xyz, dtype=np.float32)
        if T is not None and len(xyz):
            xyz = transform_points(T, xyz)
        sink.emit("map_cloud", convert.cloud(t, xyz, rgb, conf, job.stamp_ns, frame), job.stamp_ns)
        points = int(len(xyz))
    if job.products and T is not None:
        if sink.wants("map_mesh"):
            verts, faces, colors, _ = job.source.mesh()
            verts = transform_points(T, np.asarray(verts, dtype=np.float32))
            sink.emit("map_mesh", convert.mesh_marker(t, verts, faces, colors, job.stamp_ns, frame), job.stamp_ns)
        if sink.wants("occupancy"):
            grid = job.source.occupancy(T)
            sink.emit("occupancy", convert.occupancy_grid(t, grid, job.stamp_ns, frame), job.stamp_ns)
    return points


class ResultPublisher:
    """Messages of the core's results in the configured frames (see the module docstring).

    ``frames``: an :class:`~recon_ros.ros.schema.OutputFramesConfig` (map, recon, odom and base
    frames); ``options``: a callable returning the current :class:`PublishOptions` (the node's
    are dynamic parameters). ``clock_ns`` stamps what has no stamp of its own (a path after a
    reset).
    """

    def __init__(self, sink: Sink, frames: Any, options: Any = None, clock_ns: Any = None) -> None:
        self.sink = sink
        self.types = sink.types
        self.frames = frames
        self._options = options or PublishOptions
        self._clock_ns = clock_ns
        self._owner: Optional[int] = None
        self.tracking = TrackingMonitor()
        self.T_map_recon: Optional[np.ndarray] = None  # fixed at the first estimate after a reset
        self.T_base_cam: Optional[np.ndarray] = None  # the camera mounting (when a base frame is set)
        self.camera_frame = CAMERA_FRAME
        self.map_dirty = False  # the fused map changed since the last map job
        self.products_dirty = False  # ... since the last mesh/occupancy job
        self._odom_by_stamp: "collections.OrderedDict[int, np.ndarray]" = collections.OrderedDict()
        self.last_stamp = 0  # of the newest estimate published
        self._posed: Any = None  # the step result whose pose went out, its products not yet
        # PoseStamped messages of the last ~/path and ~/keyframe_poses by (stamp, pose): a new
        # keyframe rebuilds only what changed
        self._path_poses: dict[str, dict] = {"path": {}, "keyframe_poses": {}}

    # -- ownership ---------------------------------------------------------------------------
    def _own(self) -> None:
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
        elif self._owner != me:
            raise RuntimeError("a ResultPublisher is used by one thread only (the one that processes results)")

    def options(self) -> PublishOptions:
        return self._options()

    # -- input side --------------------------------------------------------------------------
    def observe_input(self, frame: Any) -> None:
        """Note what a frame about to be processed tells the outputs: its camera frame, the
        camera mounting (``frame.extras['T_base_cam']``) and the odometry at its stamp."""
        self._own()
        self.camera_frame = str(frame.frame_id or CAMERA_FRAME)
        mount = (frame.extras or {}).get("T_base_cam")
        if mount is not None:
            self.T_base_cam = np.asarray(mount, dtype=np.float64)
        if frame.T_odom_cam is not None:
            self._odom_by_stamp[int(frame.stamp_ns)] = np.asarray(frame.T_odom_cam, dtype=np.float64)
            while len(self._odom_by_stamp) > ODOM_HISTORY:
                self._odom_by_stamp.popitem(last=False)

    def reset(self) -> None:
        """A new map: the anchor is fixed again at the next estimate, the tracking state is
        published again; the camera mounting is kept."""
        self._own()
        self.tracking = TrackingMonitor()
        self.T_map_recon = None
        self.map_dirty = self.products_dirty = False
        self._odom_by_stamp.clear()
        self._posed = None
        self._path_poses = {"path": {}, "keyframe_poses": {}}

    # -- results -----------------------------------------------------------------------------
    def publish_pose(self, result: Any, stamp_ns: Optional[int] = None) -> Optional[TrackingChange]:
        """What a step publishes as soon as its pose is known (``Reconstructor.estimate``):
        pose, odometry, TF and the tracking state. Lost frames publish no pose: a held pose
        never goes out with a fresh stamp. ``stamp_ns`` is the processed frame's (it dates
        the tracking state). Returns the tracking change to log, if any."""
        self._own()
        self._posed = result
        change = self._note_tracking(result, stamp_ns)
        opts = self.options()
        for est in result.estimates:
            if getattr(est, "tracking_ok", True):
                self.publish_estimate(est, final=True, opts=opts)
        prov = result.provisional
        if prov is not None and opts.provisional_pose and getattr(prov, "tracking_ok", True):
            self.publish_estimate(prov, final=False, opts=opts)
        return change

    def publish_result(self, recon: Any, result: Any, stamp_ns: Optional[int] = None) -> Optional[TrackingChange]:
        """Everything one step result publishes except the map (see :meth:`map_job`): what
        :meth:`publish_pose` publishes (unless it already did for this result), then the frame
        products, keyframes and the keyframe paths. Returns the tracking change to log, if
        :meth:`publish_pose` did not return it already."""
        self._own()
        change = None
        if self._posed is not result:
            change = self.publish_pose(result, stamp_ns)
        self._posed = None
        opts = self.options()
        for est in result.estimates:
            if getattr(est, "tracking_ok", True):
                self.publish_frame_products(est, opts)
        for kf in result.new_keyframes:
            if self.sink.wants("keyframes"):
                self.sink.emit("keyframe_info", convert.keyframe_info(self.types, kf, self.camera_frame), kf.stamp_ns)
                self.sink.emit("keyframes", convert.keyframe_cloud(self.types, kf, self.camera_frame), kf.stamp_ns)
        if result.new_keyframes or result.keyframes_moved:  # the refiner reads poses from the path
            self.publish_path(recon)
        if result.map_changed:
            self.map_dirty = self.products_dirty = True
        return change

    def _note_tracking(self, result: Any, stamp_ns: Optional[int]) -> Optional[TrackingChange]:
        if getattr(result, "skipped", None):
            return None  # a skipped frame says nothing about tracking
        if stamp_ns is None:
            stamp_ns = result.estimates[-1].stamp_ns if result.estimates else self.last_stamp
        stamp = int(stamp_ns)
        state = str(getattr(result, "tracking", "tracking"))
        before = self.tracking.state
        change = self.tracking.observe(state, stamp, str(getattr(result, "tracking_reason", "")))
        if state != before and self.sink.wants("tracking_state"):
            self.sink.emit("tracking_state", self.types["std_msgs/msg/String"](data=state), stamp)
        return change

    def anchor(self, stamp_ns: int) -> np.ndarray:
        """``T_map_recon``, fixed (and emitted as static TF) at the first estimate after a reset."""
        self._own()
        if self.T_map_recon is None:
            f = self.frames
            if f.base_frame and self.T_base_cam is None:
                log.warning("no mounting of the camera in %s (no TF from the input): the map starts "
                            "at the camera's first pose", f.base_frame)
            self.T_map_recon = rtf.map_from_recon(self.T_base_cam if f.base_frame else None)
            if self.sink.wants("tf_static"):
                self.sink.emit("tf_static", M.make_transform_stamped(
                    self.types, self.T_map_recon, f.map_frame, f.recon_frame, stamp_ns), stamp_ns)
        return self.T_map_recon

    def publish_estimate(self, est: Any, final: bool, opts: Optional[PublishOptions] = None) -> None:
        """Pose, odometry and TF of an estimate: of the final ones, or of the provisional one with
        ``provisional_pose`` (its frame products: :meth:`publish_frame_products`)."""
        self._own()
        opts = opts or self.options()
        f, t, sink = self.frames, self.types, self.sink
        stamp = int(est.stamp_ns)
        self.last_stamp = stamp
        T_map_recon = self.anchor(stamp)
        if final != opts.provisional_pose:
            o = rtf.estimate_outputs(f, T_map_recon, est.T_world_cam, self.camera_frame, self.T_base_cam,
                                     self._odom_by_stamp.get(stamp))
            if sink.wants("pose"):
                sink.emit("pose", M.make_pose_stamped(t, o.T_map_base, f.map_frame, stamp), stamp)
            if sink.wants("odom"):
                sink.emit("odom", M.make_odometry(t, o.T_map_base, f.map_frame, o.child, stamp), stamp)
            if o.tf is not None and sink.wants("tf"):
                sink.emit("tf", M.make_transform_stamped(t, o.tf[2], o.tf[0], o.tf[1], stamp), stamp)

    def publish_frame_products(self, est: Any, opts: Optional[PublishOptions] = None) -> None:
        """A final estimate's frame cloud, depth and confidence images (those enabled and wanted)."""
        self._own()
        opts = opts or self.options()
        f, t, sink = self.frames, self.types, self.sink
        stamp = int(est.stamp_ns)
        T_map_recon = self.anchor(stamp)
        if sink.wants("frame_cloud"):
            ok = est.valid_mask() & (est.confidence >= opts.frame_cloud_min_confidence)
            xyz = transform_points(T_map_recon, est.points[ok].astype(np.float32))
            sink.emit("frame_cloud", convert.cloud(t, xyz, est.colors[ok], est.confidence[ok], stamp, f.map_frame),
                      stamp)
        if sink.wants("depth"):
            pts_cam = transform_points(invert_T(est.T_world_cam), est.points)
            depth = np.where(est.valid_mask(), pts_cam[..., 2], np.nan).astype(np.float32)
            sink.emit("depth", M.make_image(t, depth, "32FC1", stamp, self.camera_frame), stamp)
        if sink.wants("confidence"):
            sink.emit("confidence", M.make_image(t, np.asarray(est.confidence, dtype=np.float32), "32FC1",
                                                 stamp, self.camera_frame), stamp)

    def keyframe_poses(self, recon: Any, frontend: bool = False) -> list:
        """(stamp, pose in map) of the newest ``path_max_length`` keyframes: corrected poses, or
        the frontend's (``frontend``: what recon_refiner aligns)."""
        self._own()
        kfs = recon.keyframes(frontend_poses=True) if frontend else recon.keyframes()
        kfs = kfs[-self.options().path_max_length:]
        if not kfs:
            return []
        T_map_recon = self.anchor(kfs[-1].stamp_ns)
        return [(kf.stamp_ns, rtf.pose_in_map(T_map_recon, kf.T_world_cam)) for kf in kfs]

    def publish_path(self, recon: Any) -> None:
        """~/path (corrected keyframe poses) and ~/keyframe_poses (frontend poses); empty after a
        reset, which starts a new session in recon_refiner."""
        self._own()
        poses = self.keyframe_poses(recon)
        stamp = poses[-1][0] if poses else self._now_ns()
        if self.sink.wants("path"):
            self.sink.emit("path", self._path_msg("path", poses, stamp), stamp)
        if self.sink.wants("keyframe_poses"):
            front = self.keyframe_poses(recon, frontend=True)
            self.sink.emit("keyframe_poses", self._path_msg("keyframe_poses", front, stamp), stamp)

    def _path_msg(self, key: str, poses: list, stamp_ns: int) -> Any:
        """A path message of ``poses`` that reuses the PoseStamped of unchanged poses."""
        t, frame = self.types, self.frames.map_frame
        old, new = self._path_poses[key], {}

        def pose_msg(s: int, T: np.ndarray) -> Any:
            k = (int(s), np.asarray(T, dtype=np.float64).tobytes())
            msg = old.get(k)
            new[k] = msg if msg is not None else M.make_pose_stamped(t, T, frame, s)
            return new[k]

        msg = M.make_path(t, poses, frame, stamp_ns, pose_msg)
        self._path_poses[key] = new
        return msg

    def _now_ns(self) -> int:
        return int(self._clock_ns()) if self._clock_ns is not None else self.last_stamp

    # -- the map -----------------------------------------------------------------------------
    def map_job(self, source: Any, stamp_ns: int, cloud: bool, products: bool) -> MapJob:
        """Freeze a map publication (``source``: a snapshot of the map, see :class:`MapJob`);
        clears the dirty flags of what it publishes. Products need the anchor (a first estimate)."""
        self._own()
        if cloud:
            self.map_dirty = False
        if products:
            self.products_dirty = False
        T = None if self.T_map_recon is None else self.T_map_recon.copy()
        return MapJob(source, int(stamp_ns), T, self.frames.map_frame, cloud, products and T is not None)

    def recon_pose(self, T_map_cam: np.ndarray) -> Optional[np.ndarray]:
        """A map-frame camera pose (the refiner's corrected path) in ``recon_world``; None before
        the anchor is fixed."""
        self._own()
        if self.T_map_recon is None:
            return None
        return rtf.recon_from_map(self.T_map_recon, T_map_cam)
