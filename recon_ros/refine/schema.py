"""Configuration of the background refinement stages (matching, alignment, MVS, transients).

Declared with :func:`recon_ros.config.param` / :func:`recon_ros.config.group` so that the same
fields appear in the YAML file, the ROS parameters and the CLI flags. The top-level
:class:`RefineConfig` is meant to be nested as ``refine: group(RefineConfig)`` in the project
configuration.
"""
from __future__ import annotations

from dataclasses import dataclass

from recon_ros.config import group, param


@dataclass
class MatchingConfig:
    """SIFT correspondences between keyframes."""

    max_features: int = param(2000, "SIFT features per keyframe image", min=50, max=20000)
    ratio: float = param(0.8, "Lowe ratio test threshold (nearest / second nearest)", min=0.1, max=1.0)
    ransac_px: float = param(1.0, "essential-matrix RANSAC threshold in image pixels", min=0.1, max=20.0)
    ransac_confidence: float = param(0.999, "essential-matrix RANSAC confidence", min=0.5, max=0.99999)
    sim3_threshold: float = param(0.10, "3D consistency threshold as a fraction of the pair's median depth",
                                  min=0.005, max=1.0)
    sim3_iterations: int = param(256, "3-point Sim(3) RANSAC hypotheses per pair", min=8, max=5000)
    contrast_threshold: float = param(0.01, "SIFT contrast threshold (lower finds more keypoints on weak texture)",
                                      min=0.001, max=0.2)
    min_inliers: int = param(20, "verified matches needed to accept an edge", min=5)
    min_inliers_loop: int = param(50, "verified matches needed to accept a loop-closure edge", min=5)


@dataclass
class GraphConfig:
    """Keyframe pair graph."""

    temporal_neighbours: int = param(2, "previous keyframes always matched", min=0, max=10)
    covisible_neighbours: int = param(3, "keyframes with the highest frustum overlap matched", min=0, max=20)
    min_overlap: float = param(0.3, "frustum overlap needed for a covisibility edge", min=0.0, max=1.0)
    overlap_depth_tol: float = param(0.15, "relative depth agreement for the overlap test", min=0.01, max=1.0)
    loop_candidates: int = param(2, "loop-closure candidates per keyframe from appearance retrieval",
                                 min=0, max=10)
    loop_min_gap: int = param(8, "smallest keyframe index gap for a loop-closure candidate", min=2)
    vocabulary_size: int = param(64, "visual words of the online bag-of-words vocabulary", min=8, max=4096)
    min_retrieval_score: float = param(0.2, "cosine similarity needed for a loop candidate", min=0.0, max=1.0)


@dataclass
class AlignConfig:
    """Sparse global alignment of keyframe Sim(3) corrections."""

    enabled: bool = param(True, "run sparse global alignment", dynamic=True)
    coarse_iterations: int = param(30, "Gauss-Newton iterations of the coarse 3D phase", min=0, max=500)
    fine_iterations: int = param(20, "Gauss-Newton iterations of the fine 2D reprojection phase", min=0, max=500)
    coarse_kernel_scale: float = param(0.02, "Huber scale of the 3D loss, fraction of the pair's median depth",
                                       min=1e-4, max=1.0)
    fine_kernel_px: float = param(2.0, "Cauchy scale of the reprojection loss in pixels", min=0.1, max=100.0)
    odometry_weight: float = param(0.05, "weight of the odometry prior between consecutive keyframes",
                                   min=0.0, max=100.0)
    odometry_weight_metric: float = param(0.01, "weight of the odometry prior when keyframe scales are fixed "
                                          "(metric frontends: sensor depth makes the matches strong, and a "
                                          "stronger prior would hold on to the frontend's drift at a loop "
                                          "closure)", min=0.0, max=100.0)
    fix_scale: bool = param(False, "keep every keyframe's scale (rigid corrections); the periodic refiner sets "
                            "it for metric frontends")
    max_reproj_increase: float = param(0.05, "reject a result whose median reprojection error grows by more "
                                       "than this fraction", min=0.0, max=10.0)
    min_cost_decrease: float = param(0.05, "keep the previous corrections unless the robust cost drops by "
                                     "at least this fraction (no change for noise-level gains)",
                                     min=0.0, max=0.9)
    optimize_focal: bool = param(False, "estimate one shared focal correction in the fine phase")
    optimize_anchors: bool = param(False, "estimate per-anchor log-depth offsets in the fine phase")
    anchor_stride: int = param(8, "anchor grid stride in pointmap pixels", min=1, max=64)
    anchor_prior_weight: float = param(0.05, "weight pulling anchor offsets back to zero", min=0.0)
    outlier_mad: float = param(3.0, "drop matches above this many robust (MAD) scales after the coarse phase",
                               min=1.0, max=100.0)
    min_edge_inlier_ratio: float = param(0.3, "drop edges keeping fewer inliers than this after outlier removal",
                                         min=0.0, max=1.0)
    min_total_matches: int = param(50, "fewer verified matches than this leaves the poses unchanged", min=0)
    window: int = param(15, "free keyframes of a local-window run", min=2, max=1000)
    divergence_ratio: float = param(1.5, "abort (keep previous poses) if the final cost exceeds the initial "
                                    "cost times this", min=1.0, max=100.0)
    device: str = param("auto", "torch device", choices=("auto", "cpu", "cuda"))


@dataclass
class MvsConfig:
    """Weight-free plane-sweep depth refinement."""

    enabled: bool = param(True, "run MVS depth refinement", dynamic=True)
    num_sources: int = param(4, "source keyframes per reference", min=1, max=10)
    best_k: int = param(2, "average the best k source costs per hypothesis", min=1, max=10)
    num_hypotheses: int = param(16, "depth hypotheses per pixel (uniform in inverse depth)", min=4, max=256)
    hypotheses_per_pass: int = param(4, "hypotheses swept at once: bounds the sweep's working memory "
                                     "(about 280 bytes per grid pixel and hypothesis of a pass)", min=1, max=256)
    band: float = param(0.15, "relative half-width of the depth band around the prior", min=0.01, max=1.0)
    window: int = param(5, "ZNCC window side in pixels (odd)", min=3, max=15)
    prior_weight: float = param(0.05, "weak pull towards the prior depth", min=0.0, max=10.0)
    min_zncc: float = param(0.5, "photometric filter: smallest ZNCC at the winning hypothesis", min=-1.0, max=1.0)
    max_uniqueness: float = param(0.9, "photometric filter: best / second-best cost ratio", min=0.0, max=1.0)
    min_texture: float = param(2.0, "smallest grey-level standard deviation (0..255) in the ZNCC window",
                               min=0.0)
    geo_px: float = param(1.0, "geometric filter: forward-backward reprojection error in pixels", min=0.1)
    geo_rel_depth: float = param(0.01, "geometric filter: relative depth error on a 640-pixel grid (scaled by "
                                 "640 / grid side, at most 4x, on coarser grids)", min=0.001, max=0.5)
    min_consistent: int = param(2, "sources that must pass the geometric filter", min=1, max=10)
    prior_guard: bool = param(True, "replace depth only where it agrees with the sources' depth better than "
                              "the prior does (5x5 average of the relative disagreement)")
    min_baseline_ratio: float = param(0.02, "smallest baseline / depth ratio of a source", min=0.0)
    max_angle_deg: float = param(40.0, "largest viewing-angle difference of a source", min=1.0, max=180.0)
    max_side: int = param(640, "largest image side processed", min=32, max=4096)
    checkpoint: str = param("", "optional MVSNet_pytorch checkpoint (.ckpt) for the learned path; empty = off")
    device: str = param("auto", "torch device", choices=("auto", "cpu", "cuda"))


@dataclass
class TransientConfig:
    """Transient (moving object) rejection and probation."""

    enabled: bool = param(True, "run transient rejection", dynamic=True)
    max_views: int = param(8, "other keyframes checked per keyframe (highest overlap first)", min=1, max=100)
    percentile: float = param(70.0, "percentile of the residual histogram used as the consistency threshold",
                              min=1.0, max=99.0)
    min_threshold: float = param(0.02, "lower clamp of the adaptive threshold (relative depth)", min=0.001)
    max_threshold: float = param(0.15, "upper clamp of the adaptive threshold (relative depth)", min=0.001)
    histogram_decay: float = param(0.95, "decay of the residual histogram between calls", min=0.0, max=1.0)
    min_violations: int = param(2, "free-space violations that make a point transient", min=1)
    vote_ratio: float = param(0.5, "transient if violations exceed this fraction of the decisive views",
                              min=0.0, max=1.0)
    probation_views: int = param(2, "keyframes that must confirm a point before it is static", min=1)
    probation_min_gap_s: float = param(0.0, "time separation of confirming keyframes in seconds", min=0.0)
    drop_unconfirmed_contradicted: bool = param(True, "drop points on probation that any view contradicts")
    rescue: bool = param(True, "keep a flagged pixel when most of its 3x3 neighbours are static")


@dataclass
class ScheduleConfig:
    """When the background stages run (stream time in replay, ROS time in the node)."""

    align_period_s: float = param(30.0, "run global alignment this often (0: only on request)",
                                  min=0.0, max=86400.0, dynamic=True)
    refine_period_s: float = param(120.0, "run depth refinement this often (0: only on request)",
                                   min=0.0, max=86400.0, dynamic=True)
    min_keyframes: int = param(3, "fewest keyframes before a stage runs", min=2, max=100000,
                               dynamic=True)


@dataclass
class RefineConfig:
    """Background refinement: matching, sparse global alignment, MVS and transients."""

    matching: MatchingConfig = group(MatchingConfig)
    graph: GraphConfig = group(GraphConfig)
    align: AlignConfig = group(AlignConfig)
    mvs: MvsConfig = group(MvsConfig)
    transients: TransientConfig = group(TransientConfig)
