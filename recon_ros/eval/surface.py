"""Point-cloud quality against a ground-truth surface.

accuracy    distances from predicted points to the nearest ground-truth point,
completion  distances from ground-truth points to the nearest predicted point,
chamfer     the mean of the two means,
precision / recall / F-score at a distance threshold, and
normal consistency: mean |n_pred . n_gt| over nearest neighbours, in both directions.
Normals that are not given are estimated by local PCA. An optional point-to-point ICP
(max correspondence distance 0.1 m, as in the Spann3R protocol) first aligns the prediction.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np
from scipy.spatial import cKDTree

from recon_ros.errors import UserInputError
from recon_ros.geometry.transforms import transform_points, umeyama

log = logging.getLogger(__name__)

_CHUNK = 65536


def _as_points(pts: np.ndarray, what: str) -> np.ndarray:
    p = np.asarray(pts, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise UserInputError(f"{what} must be an (N, 3) array, got shape {p.shape}")
    finite = np.all(np.isfinite(p), axis=1)
    if not np.all(finite):
        log.info("%s: dropped %d non-finite points", what, int((~finite).sum()))
        p = p[finite]
    if len(p) == 0:
        raise UserInputError(f"{what} has no (finite) points")
    return p


def nearest(src: np.ndarray, dst_tree: cKDTree) -> Tuple[np.ndarray, np.ndarray]:
    """Distance and index of the nearest ``dst`` point for every ``src`` point."""
    d, i = dst_tree.query(src, k=1)
    return np.asarray(d, dtype=np.float64), np.asarray(i, dtype=np.int64)


def estimate_normals(points: np.ndarray, k: int = 16, tree: Optional[cKDTree] = None) -> np.ndarray:
    """Unit normals (N, 3) by PCA over each point's k nearest neighbours (sign arbitrary)."""
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    k = int(min(max(k, 3), n))
    if n < 3:
        return np.tile([0.0, 0.0, 1.0], (n, 1))
    tree = cKDTree(points) if tree is None else tree
    out = np.empty((n, 3))
    for s in range(0, n, _CHUNK):  # chunks bound the (chunk, k, 3) neighbourhood memory
        _, idx = tree.query(points[s:s + _CHUNK], k=k)
        nb = points[idx]
        nb = nb - nb.mean(axis=1, keepdims=True)
        cov = np.einsum("nki,nkj->nij", nb, nb)
        _, vecs = np.linalg.eigh(cov)
        out[s:s + _CHUNK] = vecs[:, :, 0]  # eigenvector of the smallest eigenvalue
    return out


@dataclass
class IcpResult:
    T: np.ndarray  # 4x4 rigid transform applied to the source
    iterations: int
    fitness: float  # fraction of source points with a correspondence
    inlier_rmse: float
    converged: bool


def icp_point_to_point(src: np.ndarray, dst: np.ndarray, max_dist: float = 0.1,
                       max_iter: int = 50, tol: float = 1e-6, init: Optional[np.ndarray] = None,
                       dst_tree: Optional[cKDTree] = None, with_scale: bool = False) -> IcpResult:
    """Rigid (or similarity) transform T minimising |dst_nn - T(src)| over pairs closer than
    ``max_dist``. Stops when the inlier RMSE changes by less than ``tol``."""
    src = _as_points(src, "ICP source")
    dst = _as_points(dst, "ICP target")
    tree = cKDTree(dst) if dst_tree is None else dst_tree
    T = np.eye(4) if init is None else np.asarray(init, dtype=np.float64).copy()
    prev = np.inf
    fitness, rmse, converged, it = 0.0, float("nan"), False, 0
    for it in range(1, max_iter + 1):
        moved = transform_points(T, src)
        d, idx = tree.query(moved, k=1, distance_upper_bound=max_dist)
        ok = np.isfinite(d)
        fitness = float(ok.mean())
        if ok.sum() < 3:
            log.warning("ICP: fewer than 3 correspondences within %.3f m; keeping the current pose", max_dist)
            break
        rmse = float(np.sqrt(np.mean(d[ok] ** 2)))
        if abs(prev - rmse) < tol:
            converged = True
            break
        prev = rmse
        step = umeyama(moved[ok], dst[idx[ok]], with_scale=with_scale)
        T = step @ T
    return IcpResult(T, it, fitness, rmse, converged)


def sample_mesh(vertices: np.ndarray, faces: np.ndarray, n_points: int, seed: int = 0
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Points uniformly distributed over a triangle mesh (area-weighted) and their face normals."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise UserInputError(f"mesh faces must be a non-empty (M, 3) array, got shape {f.shape}")
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cross = np.cross(b - a, c - a)
    area2 = np.linalg.norm(cross, axis=1)
    if not np.any(area2 > 0):
        raise UserInputError("mesh has zero surface area")
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(f), size=int(n_points), p=area2 / area2.sum())
    r1 = np.sqrt(rng.random(int(n_points)))
    r2 = rng.random(int(n_points))
    pts = (1 - r1)[:, None] * a[tri] + (r1 * (1 - r2))[:, None] * b[tri] + (r1 * r2)[:, None] * c[tri]
    normals = cross[tri] / np.maximum(area2[tri], 1e-300)[:, None]
    return pts, normals


@dataclass
class SurfaceReport:
    n_pred: int
    n_gt: int
    threshold_m: float
    accuracy_mean_m: float
    accuracy_median_m: float
    completion_mean_m: float
    completion_median_m: float
    chamfer_m: float  # (accuracy mean + completion mean) / 2
    precision: float
    recall: float
    fscore: float
    normal_consistency: float
    normal_consistency_acc: float
    normal_consistency_comp: float
    icp: Optional[dict] = None  # iterations, fitness, inlier_rmse, converged, T

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SurfaceResult:
    report: SurfaceReport
    pred: np.ndarray  # prediction after any alignment
    acc_dist: np.ndarray
    comp_dist: np.ndarray


def evaluate_surface(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.05,
                     gt_normals: Optional[np.ndarray] = None,
                     pred_normals: Optional[np.ndarray] = None, icp: bool = False,
                     icp_max_dist: float = 0.1, k_normals: int = 16) -> SurfaceResult:
    """Accuracy, completion, F-score and normal consistency of ``pred`` against ``gt`` (N, 3)."""
    if not threshold > 0:
        raise UserInputError(f"F-score threshold must be > 0 m, got {threshold}")
    pred_in = np.asarray(pred, dtype=np.float64)
    pred = _as_points(pred_in, "predicted cloud")
    if pred_normals is not None and len(pred_normals) == len(pred_in):
        pred_normals = np.asarray(pred_normals, dtype=np.float64)[np.all(np.isfinite(pred_in), axis=1)]
    gt_in = np.asarray(gt, dtype=np.float64)
    gt = _as_points(gt_in, "ground-truth cloud")
    if gt_normals is not None and len(gt_normals) == len(gt_in):
        gt_normals = np.asarray(gt_normals, dtype=np.float64)[np.all(np.isfinite(gt_in), axis=1)]
    gt_tree = cKDTree(gt)
    icp_info = None
    if icp:
        res = icp_point_to_point(pred, gt, max_dist=icp_max_dist, dst_tree=gt_tree)
        pred = transform_points(res.T, pred)
        if pred_normals is not None:
            pred_normals = pred_normals @ res.T[:3, :3].T
        icp_info = {"iterations": res.iterations, "fitness": res.fitness,
                    "inlier_rmse_m": res.inlier_rmse, "converged": res.converged,
                    "max_dist_m": icp_max_dist, "T": res.T.tolist()}
    pred_tree = cKDTree(pred)
    acc, acc_idx = nearest(pred, gt_tree)
    comp, comp_idx = nearest(gt, pred_tree)
    if gt_normals is None:
        gt_normals = estimate_normals(gt, k_normals, gt_tree)
    if pred_normals is None:
        pred_normals = estimate_normals(pred, k_normals, pred_tree)
    gn = gt_normals / np.maximum(np.linalg.norm(gt_normals, axis=1, keepdims=True), 1e-12)
    pn = pred_normals / np.maximum(np.linalg.norm(pred_normals, axis=1, keepdims=True), 1e-12)
    nc_acc = float(np.mean(np.abs(np.sum(pn * gn[acc_idx], axis=1))))
    nc_comp = float(np.mean(np.abs(np.sum(gn * pn[comp_idx], axis=1))))
    precision = float(np.mean(acc < threshold))
    recall = float(np.mean(comp < threshold))
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    report = SurfaceReport(
        n_pred=len(pred), n_gt=len(gt), threshold_m=threshold,
        accuracy_mean_m=float(acc.mean()), accuracy_median_m=float(np.median(acc)),
        completion_mean_m=float(comp.mean()), completion_median_m=float(np.median(comp)),
        chamfer_m=float(0.5 * (acc.mean() + comp.mean())), precision=precision, recall=recall,
        fscore=float(fscore), normal_consistency=0.5 * (nc_acc + nc_comp),
        normal_consistency_acc=nc_acc, normal_consistency_comp=nc_comp, icp=icp_info)
    return SurfaceResult(report, pred, acc, comp)
