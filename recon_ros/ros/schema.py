"""ROS-side parameter groups of the two nodes, and their composition with the core config.

Pure Python (no rclpy): the nodes declare their ROS parameters from these dataclasses, the shipped
YAML is generated from them, and the tests check both against each other.

A node's full schema is the union of two config trees with disjoint top-level groups: the core
config (model, mapping, ...; owned by the core and handed to the ``Reconstructor`` or ``Refiner``
as is) and the ROS config below (topics, QoS, frames, publishing, diagnostics, saving). Parameter
names are the flat dotted names of both, e.g. ``map.voxel_size_m`` (core) or ``input.qos`` (ROS).
"""
from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from recon_ros import config as C
from recon_ros.config import ParamSpec, group, param
from recon_ros.errors import UserInputError
from recon_ros.mapping.schema import FRONTENDS
from recon_ros.refine.schema import ScheduleConfig

QOS_CHOICES = ("sensor_data", "best_effort", "reliable", "system_default")

# Where the core config classes live. One place to change if the core moves them.
CORE_CONFIG_CLASS = "recon_ros.mapping.reconstructor:ReconConfig"
REFINE_CONFIG_CLASS = "recon_ros.refine.stages:RefineConfig"


@dataclass
class InputConfig:
    """Camera input: subscriptions (remap 'image', 'camera_info', 'depth' in launch), QoS, matching."""

    image_transport: str = param("raw", "colour stream type: 'raw' subscribes sensor_msgs/Image on "
                                 "'image', 'compressed' subscribes CompressedImage on "
                                 "'image/compressed'", choices=("raw", "compressed"))
    use_camera_info: bool = param(True, "match each image with a CameraInfo on 'camera_info' and use "
                                  "its intrinsics (false: the model estimates the focal length)")
    use_depth: bool = param(False, "also match an aligned depth image on 'depth' (16UC1 mm or 32FC1 m), "
                            "used for metric scale")
    undistort: bool = param(True, "remove the lens distortion camera_info describes (plumb_bob, "
                            "rational_polynomial) from image and depth, as recon-ros replay does; "
                            "the intrinsics then describe the undistorted image")
    qos: str = param("sensor_data", "QoS of the input subscriptions: 'sensor_data' (best effort, "
                     "matches camera drivers and bag replay), 'reliable', 'best_effort', "
                     "'system_default'", choices=QOS_CHOICES)
    queue_size: int = param(5, "depth of each input subscription and of the matcher queues", min=1, max=100)
    sync_slop_s: float = param(0.02, "approximate-time matching: largest stamp difference between "
                               "the image and its camera_info/depth", min=0.0, max=1.0)
    process_every_n: int = param(1, "process only every n-th matched frame (lighter GPU load)",
                                 min=1, max=1000, dynamic=True)
    corrected_path_topic: str = param("corrected_path", "topic of the refiner's corrected keyframe "
                                      "path (nav_msgs/Path); empty: do not re-anchor")
    refined_keyframes_topic: str = param("refined_keyframes", "topic of the refiner's refined keyframe "
                                         "pointmaps (organised PointCloud2 in the keyframe camera frame, "
                                         "stamped like the keyframe); empty: keep the frontend depth")


@dataclass
class OutputFramesConfig:
    """TF frames of the outputs (REP-103/105); recon-ros replay writes its output bag with them."""

    map_frame: str = param("map", "fixed frame of every output")
    recon_frame: str = param("recon_world", "frame of the reconstruction (the first camera's optical "
                             "frame); a static map -> recon_frame transform places it")
    odom_frame: str = param("", "odometry frame; when set, map -> odom is published (the correction) "
                            "and odometry from TF is used as a prior. Empty: no odometry")
    base_frame: str = param("", "robot body frame whose pose is published (map -> base_frame, or "
                            "odom-corrected). Empty: the camera frame of the image header; set it "
                            "(e.g. base_link, camera_link) whenever the camera frame already has a "
                            "parent in TF")


@dataclass
class FramesConfig(OutputFramesConfig):
    """TF frames (REP-103/105)."""

    publish_tf: bool = param(True, "publish TF (map -> odom or map -> base/camera, static map -> "
                             "recon_frame)")
    tf_timeout_s: float = param(0.5, "how long a frame waits for the transforms it needs before it "
                                "is dropped (counted)", min=0.0, max=30.0, dynamic=True)
    max_waiting_frames: int = param(30, "frames kept while waiting for TF (oldest dropped first)",
                                    min=1, max=1000)
    time_jump_tolerance_s: float = param(0.5, "an input stamp older than the last one by more than "
                                         "this (a bag restarting) resets the map with a warning",
                                         min=0.0, max=3600.0)
    time_jump_confirm_frames: int = param(3, "messages of one stream in a row that must be older than "
                                          "the last one before the map is reset (fewer are skipped "
                                          "and counted: a live camera's late frame never wipes the map)",
                                          min=1, max=1000)


@dataclass
class PublishConfig:
    """Output topics and their rates."""

    map_cloud_rate_hz: float = param(1.0, "largest rate of ~/map_cloud (reliable, transient-local); "
                                     "lower while extracting the map takes more than a quarter of "
                                     "the time; 0: only on save/reset", min=0.0, max=30.0, dynamic=True)
    products_rate_hz: float = param(0.1, "largest rate of ~/map_mesh (Marker TRIANGLE_LIST) and "
                                    "~/occupancy (OccupancyGrid), both transient-local; they are "
                                    "extracted from the volume on the worker thread (about a second "
                                    "for a room), so keep it low; 0: only after a save or reset",
                                    min=0.0, max=5.0, dynamic=True)
    frame_cloud: bool = param(True, "publish ~/frame_cloud (only built while someone subscribes)",
                              dynamic=True)
    frame_cloud_min_confidence: float = param(1.5, "confidence below which ~/frame_cloud drops points",
                                              min=0.0, max=1.0e6, dynamic=True)
    keyframes: bool = param(True, "publish ~/keyframes + ~/keyframe_info (needed by recon_refiner)")
    depth_image: bool = param(False, "publish ~/depth (32FC1 metres, model resolution)", dynamic=True)
    confidence_image: bool = param(False, "publish ~/confidence (32FC1)", dynamic=True)
    provisional_pose: bool = param(False, "publish ~/pose and TF from the provisional estimate of the "
                                   "newest frame (one frame less latency, slightly noisier)",
                                   dynamic=True)
    path_max_length: int = param(10000, "longest ~/path (oldest keyframes dropped from the message)",
                                 min=1, max=1000000)


@dataclass
class DiagnosticsConfig:
    """/diagnostics (diagnostic_updater) and periodic status logging."""

    period_s: float = param(1.0, "diagnostics update period", min=0.1, max=60.0)
    min_rate_hz: float = param(1.0, "input rate below which diagnostics warn", min=0.0, max=1000.0,
                               dynamic=True)
    max_stamp_delay_s: float = param(0.5, "input stamp delay (now - header stamp) above which "
                                     "diagnostics warn", min=0.0, max=3600.0, dynamic=True)
    no_data_warn_s: float = param(5.0, "warn (with the subscribed topics, QoS and counts) when no "
                                  "matched frame arrived for this long", min=0.5, max=3600.0,
                                  dynamic=True)


@dataclass
class SaveConfig:
    """Map saving (~/save_map, autosave)."""

    directory: str = param("~/.ros/recon_ros/maps", "where ~/save_map writes map.ply and "
                           "trajectory.tum (a new time-stamped folder per save)", dynamic=True)
    on_shutdown: bool = param(True, "save the map when the node shuts down (if it has points)",
                              dynamic=True)
    autosave_period_s: float = param(0.0, "save the map periodically (0: never)", min=0.0,
                                     max=86400.0, dynamic=True)
    timeout_s: float = param(120.0, "longest a save may take before the service answers with an "
                             "error", min=1.0, max=3600.0)


@dataclass
class LifecycleConfig:
    """Lifecycle management."""

    autostart: bool = param(True, "configure and activate at start-up (false: wait for "
                            "'ros2 lifecycle set' / a lifecycle manager)")


@dataclass
class ProcessConfig:
    """How the node's process shares the CPU with the other node and the robot's stack."""

    cpu_threads: int = param(1, "torch intra-op threads on the CPU. One keeps the tracker steady "
                             "when other processes share the cores: several threads wait for "
                             "each other whenever one is descheduled (0: torch's default, one "
                             "per core, fastest on an otherwise idle CPU)", min=0, max=1024)
    nice: int = param(0, "CPU priority of the process (Linux nice, raised at start; higher "
                      "yields the CPU to other processes)", min=0, max=19)


@dataclass
class ReconProcessConfig(ProcessConfig):
    """How recon_node shares the CPU with the other node and the robot's stack."""

    map_thread_nice: int = param(10, "nice level added to the thread that extracts ~/map_cloud, "
                                 "~/map_mesh and ~/occupancy (Linux): on a busy CPU, tracking "
                                 "gets the cores first and the map outputs come later", min=0, max=19)


@dataclass
class RefinerProcessConfig(ProcessConfig):
    """How recon_refiner shares the CPU: below recon_node, so background stages never starve
    tracking."""

    nice: int = param(10, "CPU priority of the process (Linux nice, raised at start; higher "
                      "yields the CPU to recon_node and the robot's stack)", min=0, max=19)


@dataclass
class ReconNodeConfig:
    """ROS-side parameters of recon_node."""

    input: InputConfig = group(InputConfig)
    frames: FramesConfig = group(FramesConfig)
    publish: PublishConfig = group(PublishConfig)
    diagnostics: DiagnosticsConfig = group(DiagnosticsConfig)
    save: SaveConfig = group(SaveConfig)
    lifecycle: LifecycleConfig = group(LifecycleConfig)
    process: ReconProcessConfig = group(ReconProcessConfig)


@dataclass
class RefinerInputConfig:
    """Refiner inputs (remap 'keyframes', 'keyframe_info', 'path' to recon_node's outputs)."""

    qos: str = param("reliable", "QoS of the keyframe subscriptions", choices=QOS_CHOICES)
    queue_size: int = param(50, "subscription depth (keyframes arrive in bursts)", min=1, max=1000)
    max_keyframes: int = param(500, "keyframes kept (oldest dropped first)", min=2, max=100000)
    max_memory_mb: float = param(2048.0, "cap on the node's resident memory (RSS, MiB): keyframes are "
                                 "kept while the process, its kept keyframes and a running stage fit "
                                 "under it (measured); the oldest are dropped and forgotten by the "
                                 "stages beyond it; 0 = no cap (max_keyframes only)", min=0.0, max=1.0e6)
    stage_reserve_mb: float = param(192.0, "resident memory held back for a running stage until one "
                                    "has run (then the most a stage has used beyond its per-keyframe "
                                    "part)", min=0.0, max=1.0e6)
    stage_mb_per_keyframe: float = param(6.0, "a running stage's working memory per keyframe it runs on "
                                         "(MiB; alignment's grows with the keyframes' matches), held "
                                         "back beside every kept keyframe", min=0.0, max=1.0e4)


@dataclass
class RefinerScheduleConfig(ScheduleConfig):
    """When the background stages run (periods in ROS time) and where results are published."""

    map_frame: str = param("map", "frame of the published corrected path")


@dataclass
class RefinerFrontendConfig:
    """The mapper whose keyframes arrive (the same name as recon_node's parameter, so one
    parameter file serves both nodes)."""

    name: str = param("spann3r", "recon_node's frontend; with a metric one (rgbd) alignment keeps "
                      "every keyframe's scale (rigid corrections), as recon-ros replay --refine does",
                      choices=FRONTENDS)


@dataclass
class RefinerNodeConfig:
    """ROS-side parameters of recon_refiner."""

    input: RefinerInputConfig = group(RefinerInputConfig)
    frontend: RefinerFrontendConfig = group(RefinerFrontendConfig)
    process: RefinerProcessConfig = group(RefinerProcessConfig)
    schedule: RefinerScheduleConfig = group(RefinerScheduleConfig)


class NodeSchema:
    """The flat parameter namespace of a node: a core config tree plus a ROS config tree.

    ``core`` is handed to the core unchanged; ``ros`` is read by the node. Top-level group names
    must be disjoint (a clash is a programming error reported at construction).
    """

    def __init__(self, core: Any, ros: Any) -> None:
        self.core = core
        self.ros = ros
        self._owner: dict[str, Any] = {}
        self._specs: dict[str, ParamSpec] = {}
        for cfg in (core, ros):
            if cfg is None:
                continue
            for spec in C.iter_params(cfg):
                if spec.name in self._specs:
                    raise ValueError(f"parameter '{spec.name}' is declared by both the core config "
                                     f"and the ROS config")
                self._specs[spec.name] = spec
                self._owner[spec.name] = cfg

    def specs(self) -> Iterator[ParamSpec]:
        """Every parameter with its current value as ``default``."""
        for name, spec in self._specs.items():
            yield C.ParamSpec(**{**spec.__dict__, "default": C.get_value(self._owner[name], name)})

    def names(self) -> list[str]:
        return list(self._specs)

    def spec(self, name: str) -> ParamSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UserInputError(f"unknown parameter '{name}'{C._suggest(name, self.names())}") from None

    def get(self, name: str) -> Any:
        self.spec(name)
        return C.get_value(self._owner[name], name)

    def set(self, name: str, value: Any) -> Any:
        """Validate and store one value; raise UserInputError when it is not acceptable."""
        self.spec(name)
        return C.set_value(self._owner[name], name, value)

    def check_runtime_change(self, changes: dict[str, Any], allow_static: bool = False,
                             lifecycle: bool = False) -> Optional[str]:
        """Why this set of run-time changes is refused (None when all are acceptable).

        ``allow_static``: non-dynamic parameters may change too (a lifecycle node while
        unconfigured). Nothing is stored: the values are validated on copies, so a rejected batch
        leaves the configuration untouched.
        """
        scratch = NodeSchema(copy.deepcopy(self.core), copy.deepcopy(self.ros))
        for name, value in changes.items():
            if name not in self._specs:
                continue  # not ours (use_sim_time, qos_overrides, ...): rclpy handles it
            if not self._specs[name].dynamic and not allow_static:
                if lifecycle:
                    return (f"parameter '{name}' can only change while the node is unconfigured: "
                            f"'ros2 lifecycle set <node> cleanup', set it, then configure")
                return (f"parameter '{name}' cannot change while the node runs; set it in the "
                        f"parameter file and restart")
            try:
                scratch.set(name, value)
            except UserInputError as exc:
                return str(exc)
        return None

    def apply(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Store already checked changes; return the stored (coerced) values of ours."""
        return {name: self.set(name, value) for name, value in changes.items() if name in self._specs}

    def dump_yaml(self, node_name: str = "/**", header: str = "") -> str:
        """The commented ROS parameter file of this schema (core groups, then ROS groups)."""
        lines = [f"# {line}".rstrip() for line in header.splitlines()] + ([""] if header else [])
        lines += [f"{node_name}:", "  ros__parameters:"]
        for cfg in (self.core, self.ros):
            if cfg is None:
                continue
            body = C.dump_yaml(cfg).rstrip("\n").splitlines()
            lines += [("    " + line) if line else "" for line in body]
        return "\n".join(lines) + "\n"


def load_class(path: str) -> type:
    """Import ``'package.module:ClassName'``; a clear error when the core does not provide it."""
    module_name, _, cls_name = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise UserInputError(f"the core config class {path} is not available ({exc}); "
                             f"is recon_ros fully installed?") from None


def recon_node_schema(core_cls: Optional[type] = None) -> NodeSchema:
    """Full schema of recon_node: the core's ReconConfig plus :class:`ReconNodeConfig`."""
    cls = core_cls if core_cls is not None else load_class(CORE_CONFIG_CLASS)
    return NodeSchema(cls(), ReconNodeConfig())


def refiner_node_schema(core_cls: Optional[type] = None) -> NodeSchema:
    """Full schema of recon_refiner: the refine stages' config plus :class:`RefinerNodeConfig`."""
    cls = core_cls if core_cls is not None else load_class(REFINE_CONFIG_CLASS)
    return NodeSchema(cls(), RefinerNodeConfig())
