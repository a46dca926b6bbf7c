"""Configuration of the online mapper: frontend, tracking, scale, keyframes, fused map.

Every leaf is declared with :func:`recon_ros.config.param` so that the YAML file, the ROS
parameters and the CLI flags all come from here. ``MappingConfig`` is the top level of the
mapping part; other parts (model, device, input, ROS) add their own groups next to these
by subclassing it or by nesting it.
"""
from __future__ import annotations

from dataclasses import dataclass

from recon_ros.config import group, param

FRONTENDS = ("spann3r", "rgbd")
#: frontends whose world unit is the metre from the first frame (their class sets ``metric``)
METRIC_FRONTENDS = ("rgbd",)
SCALE_MODES = ("none", "depth", "odometry", "fixed")
NOISE_MODELS = ("quadratic", "linear", "constant")
# depth noise std grows with depth to this power
NOISE_POWER = {"quadratic": 2.0, "linear": 1.0, "constant": 0.0}
MAPPING_MODES = ("mapping", "localization")


@dataclass
class FrontendConfig:
    """Which frontend turns camera frames into posed pointmaps."""

    name: str = param("spann3r", "frontend: spann3r (learned, monocular) or rgbd "
                      "(depth camera, no learned weights)", choices=FRONTENDS)
    min_depth_m: float = param(0.1, "rgbd: depth readings closer than this are ignored (metres)",
                               min=0.0, max=100.0)
    max_depth_m: float = param(8.0, "rgbd: depth readings farther than this are ignored (metres)",
                               min=0.01, max=1000.0)
    output_max_width: int = param(0, "rgbd: width of the pointmaps handed to the map; larger "
                                  "depth images are block-averaged by an integer factor "
                                  "(0 = depth resolution)", min=0, max=8192)
    provisional: bool = param(False, "spann3r: also report the low-latency provisional "
                              "pointmap of the newest frame (head 2; superseded one frame later)")
    pose_confidence_percentile: float = param(
        50.0, "spann3r: pixels whose confidence is at least this percentile of the frame's "
        "confidences give the PnP pose and the focal estimate", min=0.0, max=99.0)
    use_camera_info: bool = param(True, "spann3r: use the frame's intrinsics (CameraInfo) when "
                                  "present instead of estimating the focal from the first frame")


@dataclass
class TrackingConfig:
    """RGB-D frame-to-model tracking (projective point-to-plane ICP + photometric term)."""

    max_width: int = param(160, "width of the finest tracking level; the depth image is "
                           "block-averaged by an integer factor down to at most this width",
                           min=16, max=4096)
    pyramid_levels: int = param(4, "number of pyramid levels (each halves the resolution); "
                                "the coarsest level sets how much unpredicted motion tracking "
                                "captures (the first frame after a start or a failure has no "
                                "motion prior)", min=1, max=6)
    iterations_finest: int = param(4, "Gauss-Newton iterations at the finest level", min=1, max=100)
    iterations_coarse: int = param(8, "Gauss-Newton iterations at every coarser level", min=0, max=100)
    max_points: int = param(6000, "points used per iteration at the finest level (regular "
                            "subsample); coarser levels use all their pixels", min=100,
                            max=1_000_000)
    max_correspondence_m: float = param(0.08, "largest point distance accepted as a "
                                        "correspondence at the finest level (doubles per "
                                        "coarser level)", min=0.001, max=10.0)
    max_normal_angle_deg: float = param(35.0, "largest angle between matched normals",
                                        min=1.0, max=90.0)
    noise_weighting: bool = param(True, "weight point-to-plane residuals by the inverse depth-noise "
                                  "variance of both matched points (map.depth_noise_model): far, "
                                  "noisier readings count less")
    huber_m: float = param(0.01, "Huber threshold and scale of point-to-plane residuals (metres)",
                           min=1e-5, max=1.0)
    photometric_weight: float = param(1.0, "weight of the intensity residual (scaled by "
                                      "huber_intensity) relative to the geometric one (scaled "
                                      "by huber_m); 0 disables it. It alone constrains motion "
                                      "along flat textured walls", min=0.0, max=100.0,
                                      dynamic=True)
    huber_intensity: float = param(0.05, "Huber threshold and scale of intensity residuals "
                                   "(intensity in [0, 1])", min=1e-4, max=1.0)
    model_keyframes: int = param(3, "recent tracking keyframes that form the model each frame "
                                 "is aligned to", min=1, max=20)
    ref_translation_m: float = param(0.1, "a new tracking keyframe is taken after this much "
                                     "translation from the newest one (metres)", min=0.0, max=10.0)
    ref_rotation_deg: float = param(10.0, "... or after this much rotation (degrees)",
                                    min=0.0, max=180.0)
    ref_min_inlier_fraction: float = param(0.75, "... or when fewer of the frame's points than "
                                           "this fraction match the model", min=0.0, max=1.0)
    min_inlier_fraction: float = param(0.25, "tracking fails when fewer of the frame's valid "
                                       "points than this fraction match the model",
                                       min=0.0, max=1.0)
    max_residual_m: float = param(0.08, "tracking fails when the RMS point-to-plane residual "
                                  "of the matches exceeds this (metres)", min=1e-4, max=10.0)
    max_jump_m: float = param(0.5, "tracking fails when the pose moves farther than this "
                              "from its constant-velocity prediction (metres)", min=0.001, max=100.0)
    max_jump_deg: float = param(30.0, "... or turns by more than this (degrees)",
                                min=0.1, max=180.0)
    max_photometric_rms: float = param(0.1, "tracking fails when the RMS intensity residual "
                                       "of the matches (intensity in [0, 1]) exceeds this: "
                                       "walls aligned to the wrong walls match in depth but "
                                       "not in appearance (needs photometric_weight > 0)",
                                       min=1e-3, max=1.0)
    photometric_ratio: float = param(4.0, "tracking also fails when the RMS intensity residual "
                                     "exceeds this multiple of its median over the recently "
                                     "tracked frames (and half of max_photometric_rms): "
                                     "a pose slid along the walls of a room fits the depth "
                                     "perfectly and the image much worse than the frames "
                                     "before it (0: off)", min=0.0, max=100.0)
    min_valid_fraction: float = param(0.05, "frames with less valid depth than this fraction "
                                      "of the image are not tracked", min=0.0, max=1.0)
    gap_s: float = param(1.0, "a time gap between consecutive frames above this (seconds) "
                         "re-initialises tracking: no motion prior, a widened search, then "
                         "relocalization if that fails", min=0.01, max=3600.0)
    gap_search_scale: float = param(2.0, "after a gap: correspondence distances and "
                                    "iterations are multiplied by this, and the pose may move "
                                    "this many times max_jump_m / max_jump_deg", min=1.0, max=10.0)
    recover_min_inlier_fraction: float = param(0.7, "after a gap or while lost, when "
                                               "relocalization found nothing, the widened "
                                               "alignment from the last good pose is accepted "
                                               "only when this fraction of the frame's points "
                                               "match", min=0.0, max=1.0)


@dataclass
class RelocalizationConfig:
    """Recovery of lost tracking: retrieval over every keyframe, then geometric verification."""

    enabled: bool = param(True, "relocalize lost frames against the keyframe database "
                          "(rgbd frontend)")
    candidates: int = param(4, "keyframes verified per lost frame, best retrieval scores "
                            "first", min=1, max=100)
    time_budget_ms: float = param(200.0, "no further candidate is verified once a frame's "
                                  "relocalization has taken this long (milliseconds)",
                                  min=1.0, max=60000.0)
    min_inliers: int = param(30, "PnP-RANSAC inliers a candidate needs before ICP refinement",
                             min=6, max=10000)
    min_inlier_ratio: float = param(0.25, "... and at least this fraction of its putative "
                                    "SIFT matches", min=0.0, max=1.0)
    max_refinement_m: float = param(0.2, "the ICP refinement of a PnP pose may move it at "
                                    "most this far (metres) ...", min=0.001, max=10.0)
    max_refinement_deg: float = param(10.0, "... and turn it at most this much (degrees)",
                                      min=0.1, max=180.0)
    reprojection_px: float = param(3.0, "PnP-RANSAC inlier threshold (pixels of the feature "
                                   "image)", min=0.1, max=50.0)
    ratio: float = param(0.85, "Lowe's ratio test of the SIFT matches (both directions)",
                         min=0.1, max=1.0)
    max_features: int = param(800, "SIFT features per keyframe and per lost frame",
                              min=50, max=20000)
    feature_width: int = param(320, "images are reduced to at most this width for SIFT "
                               "(integer factor)", min=64, max=4096)
    vocabulary_size: int = param(256, "words of the online bag-of-words vocabulary used to "
                                 "rank keyframes", min=8, max=4096)
    vocabulary_keyframes: int = param(6, "keyframes needed before the vocabulary is learnt "
                                      "(it is learnt again whenever their number doubles; "
                                      "until then every keyframe is a candidate, newest first)",
                                      min=2, max=10000)
    max_keyframes: int = param(1000, "keyframes kept in the database (about 0.2 MB each); "
                               "above it the oldest leave", min=1, max=1_000_000)
    new_segment_after_s: float = param(
        5.0, "after this long lost (seconds, stream time, frames with usable depth) mapping "
        "starts a new segment at the last good pose instead of waiting; the segment is joined to "
        "the rest of the map, and its frames moved, as soon as one of its keyframes is "
        "relocalized in an earlier segment (0: never start one)", min=0.0, max=1e6)
    map_radius_m: float = param(0.5, "with a loaded map (map.load_path): the saved keyframes "
                                "within this distance of the camera ...", min=0.0, max=100.0)
    map_angle_deg: float = param(30.0, "... and this viewing angle join the tracking model, so "
                                 "that new frames are tracked against the saved map "
                                 "(0 radius: never)", min=0.0, max=180.0)


@dataclass
class ScaleConfig:
    """Metric scale of the frontend world (Spann3R's is unknown)."""

    mode: str = param("none", "none: keep the frontend's units; depth: median ratio of "
                      "measured to predicted depth; odometry: ratio of odometry to frontend "
                      "translations; fixed: the value below", choices=SCALE_MODES)
    fixed_value: float = param(1.0, "scale used in fixed mode (metres per frontend unit)",
                               min=1e-9, max=1e9)
    min_valid_pixels: int = param(200, "depth mode: pixels with valid depth and enough "
                                  "confidence a frame needs to give a sample", min=1, max=10_000_000)
    min_confidence: float = param(0.0, "depth mode: pixels below this frontend confidence are "
                                  "not used", min=0.0, max=1e6)
    window: int = param(300, "number of most recent per-frame samples the estimate uses",
                        min=1, max=1_000_000)
    min_motion_m: float = param(0.05, "odometry mode: odometry translations shorter than this "
                                "are not used (metres)", min=0.0, max=100.0)


@dataclass
class KeyframeConfig:
    """When a frame becomes a keyframe (quality gates AND one novelty trigger)."""

    min_translation_m: float = param(0.25, "trigger: translation since the last keyframe "
                                     "(metres; used when a metric scale is known, 0 disables)",
                                     min=0.0, max=100.0, dynamic=True)
    translation_depth_ratio: float = param(0.1, "trigger: translation since the last keyframe "
                                           "above this fraction of its median depth "
                                           "(scale-free; 0 disables)", min=0.0, max=10.0,
                                           dynamic=True)
    min_rotation_deg: float = param(10.0, "trigger: rotation since the last keyframe (degrees)",
                                    min=0.0, max=180.0, dynamic=True)
    min_overlap: float = param(0.6, "trigger: fraction of the frame's points seen by the last "
                               "keyframe (depth agreeing) falls below this", min=0.0, max=1.0,
                               dynamic=True)
    depth_agreement: float = param(0.05, "relative depth difference under which a reprojected "
                                   "point counts as seen by the last keyframe", min=0.0, max=1.0)
    max_interval_s: float = param(2.0, "trigger: time since the last keyframe (seconds, "
                                  "0 disables)", min=0.0, max=3600.0, dynamic=True)
    min_interval_s: float = param(0.2, "gate: at least this long since the last keyframe "
                                  "(seconds)", min=0.0, max=3600.0, dynamic=True)
    min_confidence: float = param(0.0, "gate: median confidence of the frame's valid pixels",
                                  min=0.0, max=1e6, dynamic=True)
    min_valid_fraction: float = param(0.05, "gate: fraction of valid pixels", min=0.0, max=1.0)
    max_masked_fraction: float = param(0.5, "gate: fraction of masked pixels", min=0.0, max=1.0)
    min_sharpness: float = param(0.0, "gate: variance of the Laplacian of the grey image "
                                 "(0-255 scale; 0 disables the absolute gate)", min=0.0, max=1e9,
                                 dynamic=True)
    sharpness_ratio: float = param(0.4, "gate: sharpness at least this fraction of the median "
                                   "sharpness of the recent frames (rejects motion-blurred frames; "
                                   "steadily smoother content never blocks keyframes; 0 disables)",
                                   min=0.0, max=1.0, dynamic=True)
    sharpness_window: int = param(30, "frames in the running sharpness history", min=1, max=100_000)


@dataclass
class VolumeTransientConfig:
    """Moving objects in the fused volume: the free-space vote on voxel violations.

    The same vote as the refiner's transient rejection (docs/mapping.md, "Moving objects")."""

    enabled: bool = param(True, "leave out of the surface what views see through (moving "
                          "objects, passers-by)", dynamic=True)
    violation_truncations: float = param(1.0, "a view sees through a voxel (a violation) when "
                                         "the nearest reading of the pixels around its "
                                         "projection lies at least this many truncation "
                                         "distances behind it (1: the reading carves the voxel "
                                         "as free space)", min=1.0, max=100.0)
    min_violations: float = param(1.0, "violations (each counted by its confidence, at most "
                                  "1) that make an occupied voxel transient", min=0.0, max=1e6,
                                  dynamic=True)
    vote_ratio: float = param(0.1, "... and they must exceed this fraction of the readings of "
                              "the voxel", min=0.0, max=1.0, dynamic=True)
    radius_voxels: int = param(3, "surface within this many voxels (a cube) of a transient "
                               "voxel is left out too: an object moves as a whole, and the "
                               "part of it seen last is never seen through", min=0, max=64,
                               dynamic=True)


@dataclass
class OccupancyConfig:
    """The 2D occupancy grid (nav_msgs/OccupancyGrid, map_server files) cut from the volume."""

    min_height_m: float = param(0.1, "lowest height of the band that counts as an obstacle "
                                "(metres above the floor, or above map z = 0 when floor_relative "
                                "is off)", min=-100.0, max=100.0, dynamic=True)
    max_height_m: float = param(1.5, "highest height of the band (the robot's height)",
                                min=-100.0, max=100.0, dynamic=True)
    floor_relative: bool = param(True, "measure heights from the floor plane found in the map "
                                 "(the largest upward-facing surface, its tilt removed); "
                                 "false: from map z = 0", dynamic=True)
    resolution_m: float = param(0.0, "cell size (metres); 0 = the voxel size", min=0.0, max=10.0,
                                dynamic=True)
    occupied_thresh: float = param(0.65, "map_server: cells above this occupancy probability "
                                   "are occupied", min=0.0, max=1.0)
    free_thresh: float = param(0.25, "map_server: cells below this occupancy probability are "
                               "free", min=0.0, max=1.0)


@dataclass
class MapConfig:
    """The fused map: a sparse TSDF volume fed by every tracked frame, and the keyframe
    point blocks that background refinement works on."""

    voxel_size_m: float = param(0.02, "voxel edge of the TSDF volume and of the keyframe "
                                "point cloud (world units: metres once the scale is known)",
                                min=1e-4, max=10.0)
    min_confidence: float = param(1.0, "points below this confidence never enter the map "
                                  "(Spann3R confidences are >= 1; 1.5-3 removes its unreliable "
                                  "points)", min=0.0, max=1e6)
    block_voxel_fraction: float = param(0.5, "keyframe points are stored averaged on a grid of "
                                        "this fraction of the voxel size in keyframe "
                                        "coordinates (0 keeps every pixel)", min=0.0, max=1.0)
    max_points: int = param(2_000_000, "the keyframe point cloud (map_before.ply, refinement) "
                            "keeps at most this many voxels (the "
                            "lowest-confidence ones are dropped)", min=1, max=1_000_000_000,
                            dynamic=True)
    max_bytes: int = param(512 * 1024 * 1024, "memory of the keyframe point blocks; above it "
                           "the oldest keyframes leave them", min=1024, max=1 << 40, dynamic=True)
    truncation_voxels: float = param(4.0, "TSDF truncation distance in voxels (the band "
                                     "around the surface that a depth reading updates; at "
                                     "least truncation_sigmas times the depth noise)",
                                     min=1.0, max=100.0)
    truncation_sigmas: float = param(3.0, "... or this many depth-noise standard deviations "
                                     "at the reading's depth, whichever is larger",
                                     min=0.0, max=100.0)
    truncation_max_voxels: float = param(16.0, "upper bound of the truncation distance in voxels "
                                         "(far, noisy readings would otherwise sweep wide bands "
                                         "of blocks)", min=1.0, max=1000.0)
    max_depth_m: float = param(8.0, "readings farther than this (frontend units) are not fused "
                               "(0: no limit)", min=0.0, max=1.0e6)
    depth_noise_m: float = param(0.005, "depth noise std at 1 m (metres, frontend units before "
                                 "a scale is known); sets the truncation and the weight "
                                 "1 / std^2 of every reading", min=0.0, max=10.0)
    depth_noise_model: str = param("quadratic", "how the depth noise grows with depth: "
                                   "quadratic (structured light, stereo), linear (time of "
                                   "flight, learned depth) or constant", choices=NOISE_MODELS)
    min_weight: float = param(3.0, "a voxel enters the surface once this many readings "
                              "(each counted by its confidence, at most 1) have updated it",
                              min=0.0, max=1e6, dynamic=True)
    fusion_max_width: int = param(320, "frames are fused at this width or less (depth "
                                  "subsampled by an integer factor); 0 = full resolution",
                                  min=0, max=8192)
    device: str = param("auto", "torch device of the volume: auto (the model's for spann3r, "
                        "cuda when available for rgbd), cpu, cuda, cuda:N")
    max_memory_mib: float = param(1024.0, "memory of the TSDF volume (MiB); above it the least "
                                  "recently seen blocks leave the live map (written to "
                                  "evict_directory when set)", min=1.0, max=1e7, dynamic=True)
    frame_store_mib: float = param(256.0, "memory for the frames kept to re-fuse them when "
                                   "loop closure moves their keyframes (MiB); above it the "
                                   "oldest frames are released and keep their fused pose",
                                   min=0.0, max=1e7, dynamic=True)
    repose_budget_ms: float = param(40.0, "after a correction (loop closure, a new scale), "
                                    "the moved frames are re-fused this many milliseconds per "
                                    "processed frame, so that tracking never stalls; 0: all at "
                                    "once", min=0.0, max=1e6, dynamic=True)
    evict_directory: str = param("", "folder where blocks that leave the live map are written "
                                 "(blocks_<n>.npz); empty: they are dropped (still logged and "
                                 "counted)", dynamic=True)
    load_path: str = param("", "a saved map folder (written by recon-ros replay or ~/save_map) "
                           "to continue or to localize against; the first frames are "
                           "relocalized in it (rgbd frontend); empty: start a new map")
    transients: VolumeTransientConfig = group(VolumeTransientConfig)
    occupancy: OccupancyConfig = group(OccupancyConfig)


@dataclass
class ModeConfig:
    """Mapping or localization against a loaded map."""

    mode: str = param("mapping", "mapping: build (or continue) the map; localization: the map "
                      "loaded from map.load_path stays frozen, frames are only located in it "
                      "(poses, TF) and nothing is added", choices=MAPPING_MODES)


@dataclass
class MappingConfig:
    """The online mapper without ROS."""

    mapping: ModeConfig = group(ModeConfig)
    frontend: FrontendConfig = group(FrontendConfig)
    tracking: TrackingConfig = group(TrackingConfig)
    relocalization: RelocalizationConfig = group(RelocalizationConfig)
    scale: ScaleConfig = group(ScaleConfig)
    keyframe: KeyframeConfig = group(KeyframeConfig)
    map: MapConfig = group(MapConfig)
