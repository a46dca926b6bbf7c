"""Trajectory metrics: timestamp association, alignment, ATE and RPE.

Poses are T_world_cam (N, 4, 4). ATE is the position error after aligning the estimate to the
ground truth (Umeyama Sim(3), SE(3) or none); the rotation error after alignment is reported
too. RPE compares relative motions over a fixed number of frames or a travelled distance.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from recon_ros.errors import UserInputError
from recon_ros.geometry.transforms import invert_T, matrix_to_rotvec, sim3_decompose, umeyama

log = logging.getLogger(__name__)

ALIGN_MODES = ("sim3", "se3", "none")


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angles (deg) of matrices (..., 3, 3), accurate near zero (unlike arccos)."""
    return np.degrees(np.linalg.norm(matrix_to_rotvec(R), axis=-1))


@dataclass
class ErrorStats:
    rmse: float
    mean: float
    median: float
    std: float
    min: float
    max: float
    count: int

    @staticmethod
    def of(errors: np.ndarray) -> "ErrorStats":
        e = np.asarray(errors, dtype=np.float64).ravel()
        if e.size == 0:
            nan = float("nan")
            return ErrorStats(nan, nan, nan, nan, nan, nan, 0)
        return ErrorStats(float(np.sqrt(np.mean(e ** 2))), float(np.mean(e)), float(np.median(e)),
                          float(np.std(e)), float(np.min(e)), float(np.max(e)), int(e.size))


def associate(stamps_a: np.ndarray, stamps_b: np.ndarray, max_dt_ns: int
              ) -> Tuple[np.ndarray, np.ndarray]:
    """Index pairs (ia, ib) matching each stamp of ``a`` to its nearest stamp of ``b`` when they
    differ by at most ``max_dt_ns``; a ``b`` that is nearest to several ``a`` goes to the closest
    one. Both outputs are sorted by ``stamps_a``."""
    a = np.asarray(stamps_a, dtype=np.int64)
    b = np.asarray(stamps_b, dtype=np.int64)
    if a.size == 0 or b.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order_b = np.argsort(b, kind="stable")
    bs = b[order_b]
    pos = np.searchsorted(bs, a)
    cand = np.stack([np.clip(pos - 1, 0, len(bs) - 1), np.clip(pos, 0, len(bs) - 1)], axis=1)
    dt = np.abs(bs[cand] - a[:, None])
    pick = np.argmin(dt, axis=1)
    ib_sorted = cand[np.arange(len(a)), pick]
    best = dt[np.arange(len(a)), pick]
    ia = np.flatnonzero(best <= max_dt_ns)
    ib = order_b[ib_sorted[ia]]
    # one a per b: keep the closest
    by_dt = np.argsort(best[ia], kind="stable")
    _, first = np.unique(ib[by_dt], return_index=True)
    keep = np.sort(by_dt[first])
    return ia[keep], ib[keep]


def alignment(est_xyz: np.ndarray, gt_xyz: np.ndarray, mode: str) -> np.ndarray:
    """4x4 transform S (Sim(3), SE(3) or identity) minimising |gt - S(est)|."""
    if mode not in ALIGN_MODES:
        raise UserInputError(f"alignment must be one of {', '.join(ALIGN_MODES)}, got {mode!r}")
    if mode == "none":
        return np.eye(4)
    if len(est_xyz) < 3:
        raise UserInputError(f"{mode} alignment needs at least 3 associated poses, got {len(est_xyz)}")
    spread = np.linalg.svd(np.asarray(est_xyz) - np.mean(est_xyz, axis=0), compute_uv=False)
    if spread[1] < 1e-9 * max(spread[0], 1e-12):
        log.warning("estimated positions are (nearly) collinear: the alignment rotation about "
                    "that line is not determined")
    return umeyama(est_xyz, gt_xyz, with_scale=(mode == "sim3"))


def apply_alignment(S: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Poses mapped by a Sim(3) S: rotations stay rotations, positions are scaled and moved."""
    s, R, t = sim3_decompose(S)
    out = np.array(poses, dtype=np.float64, copy=True)
    out[:, :3, :3] = R @ out[:, :3, :3]
    out[:, :3, 3] = s * out[:, :3, 3] @ R.T + t
    return out


def trajectory_length(xyz: np.ndarray) -> float:
    xyz = np.asarray(xyz, dtype=np.float64)
    return float(np.sum(np.linalg.norm(np.diff(xyz, axis=0), axis=1))) if len(xyz) > 1 else 0.0


def ate_errors(gt: np.ndarray, est_aligned: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-pose translation error (m) and rotation error (deg) of aligned estimates."""
    trans = np.linalg.norm(gt[:, :3, 3] - est_aligned[:, :3, 3], axis=1)
    rel = np.swapaxes(gt[:, :3, :3], 1, 2) @ est_aligned[:, :3, :3]
    return trans, rotation_angle_deg(rel)


def rpe_pairs_frames(n: int, delta: int) -> Tuple[np.ndarray, np.ndarray]:
    i = np.arange(max(n - delta, 0))
    return i, i + delta


def rpe_pairs_distance(gt_xyz: np.ndarray, distance: float) -> Tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j): j is the first pose at least ``distance`` metres of path after i."""
    steps = np.linalg.norm(np.diff(gt_xyz, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(steps)])
    j = np.searchsorted(cum, cum + distance, side="left")
    i = np.flatnonzero(j < len(cum))
    return i, j[i]


def rpe_errors(gt: np.ndarray, est: np.ndarray, i: np.ndarray, j: np.ndarray
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Translation (m) and rotation (deg) errors of relative motions i -> j."""
    if len(i) == 0:
        return np.zeros(0), np.zeros(0)
    rel_gt = invert_T(gt[i]) @ gt[j]
    rel_est = invert_T(est[i]) @ est[j]
    err = invert_T(rel_gt) @ rel_est
    return np.linalg.norm(err[:, :3, 3], axis=1), rotation_angle_deg(err[:, :3, :3])


@dataclass
class TrajectoryReport:
    align: str
    n_gt: int
    n_est: int
    n_matched: int
    gt_length_m: float
    est_length_m: float  # after alignment (scaled)
    scale: float  # scale of the alignment (1 unless sim3)
    T_align: list  # 4x4 Sim(3) applied to the estimate
    ate_trans_m: ErrorStats
    ate_rot_deg: ErrorStats
    rpe_delta_frames: int
    rpe_trans_m: ErrorStats
    rpe_rot_deg: ErrorStats
    rpe_distance_m: Optional[float] = None
    rpe_dist_trans_pct: Optional[ErrorStats] = None  # per-window translation error / distance
    rpe_dist_rot_deg_per_m: Optional[ErrorStats] = None
    series: Dict[str, list] = field(default_factory=dict, repr=False)

    def to_dict(self, with_series: bool = False) -> dict:
        d = asdict(self)
        if not with_series:
            d.pop("series")
        return d


@dataclass
class TrajectoryResult:
    """Everything needed for plots: matched, aligned arrays plus the report."""

    report: TrajectoryReport
    stamps_ns: np.ndarray
    gt: np.ndarray
    est_aligned: np.ndarray
    ate_trans: np.ndarray
    ate_rot: np.ndarray


def evaluate_trajectory(gt_stamps_ns: np.ndarray, gt_poses: np.ndarray,
                        est_stamps_ns: np.ndarray, est_poses: np.ndarray, align: str = "sim3",
                        max_dt_s: float = 0.02, rpe_delta_frames: int = 1,
                        rpe_distance_m: Optional[float] = None) -> TrajectoryResult:
    """Associate by stamp, align, and compute ATE and RPE."""
    if align not in ALIGN_MODES:
        raise UserInputError(f"alignment must be one of {', '.join(ALIGN_MODES)}, got {align!r}")
    if rpe_delta_frames < 1:
        raise UserInputError(f"RPE frame delta must be >= 1, got {rpe_delta_frames}")
    if rpe_distance_m is not None and not rpe_distance_m > 0:
        raise UserInputError(f"RPE distance must be > 0 m, got {rpe_distance_m}")
    gt_poses = np.asarray(gt_poses, dtype=np.float64)
    est_poses = np.asarray(est_poses, dtype=np.float64)
    ia, ib = associate(gt_stamps_ns, est_stamps_ns, int(round(max_dt_s * 1e9)))
    if len(ia) == 0:
        raise UserInputError(
            f"no estimated pose has a ground-truth pose within {max_dt_s} s; check that both "
            "trajectories use the same clock (or raise --max-dt)")
    gt = gt_poses[ia]
    est = est_poses[ib]
    S = alignment(est[:, :3, 3], gt[:, :3, 3], align)
    est_al = apply_alignment(S, est)
    t_err, r_err = ate_errors(gt, est_al)
    i, j = rpe_pairs_frames(len(gt), rpe_delta_frames)
    rpe_t, rpe_r = rpe_errors(gt, est_al, i, j)
    dist_t = dist_r = None
    if rpe_distance_m is not None:
        di, dj = rpe_pairs_distance(gt[:, :3, 3], rpe_distance_m)
        dt_, dr_ = rpe_errors(gt, est_al, di, dj)
        steps = np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(steps)])
        travelled = cum[dj] - cum[di]
        dist_t = ErrorStats.of(100.0 * dt_ / np.maximum(travelled, 1e-12))
        dist_r = ErrorStats.of(dr_ / np.maximum(travelled, 1e-12))
        if len(di) == 0:
            log.warning("the ground-truth path is shorter than the RPE distance %.2f m", rpe_distance_m)
    scale = sim3_decompose(S)[0]
    report = TrajectoryReport(
        align=align, n_gt=len(gt_poses), n_est=len(est_poses), n_matched=len(ia),
        gt_length_m=trajectory_length(gt[:, :3, 3]), est_length_m=trajectory_length(est_al[:, :3, 3]),
        scale=float(scale), T_align=S.tolist(),
        ate_trans_m=ErrorStats.of(t_err), ate_rot_deg=ErrorStats.of(r_err),
        rpe_delta_frames=rpe_delta_frames, rpe_trans_m=ErrorStats.of(rpe_t),
        rpe_rot_deg=ErrorStats.of(rpe_r), rpe_distance_m=rpe_distance_m,
        rpe_dist_trans_pct=dist_t, rpe_dist_rot_deg_per_m=dist_r,
        series={"stamp_ns": np.asarray(gt_stamps_ns)[ia].tolist(), "ate_trans_m": t_err.tolist(),
                "ate_rot_deg": r_err.tolist()})
    return TrajectoryResult(report, np.asarray(gt_stamps_ns)[ia], gt, est_al, t_err, r_err)
