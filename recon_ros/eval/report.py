"""Evaluation of files on disk: a JSON report, PNG plots and a short text summary."""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.eval import plots
from recon_ros.io.ply import read_ply
from recon_ros.io.trajectory import read_tum
from recon_ros.eval.surface import evaluate_surface, sample_mesh
from recon_ros.eval.trajectory import evaluate_trajectory
from recon_ros.geometry.transforms import sim3_decompose, transform_points
from recon_ros.io.atomic import write_text_atomic

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"


@dataclass
class EvalOptions:
    align: str = "sim3"
    max_dt_s: float = 0.02
    rpe_delta_frames: int = 1
    rpe_distance_m: Optional[float] = None
    threshold_m: float = 0.05
    icp: bool = False
    icp_max_dist_m: float = 0.1
    mesh_samples: int = 200_000
    k_normals: int = 16
    plots: bool = True


def _json_safe(obj: object) -> object:
    """Replace NaN/inf (not valid JSON) by None, recursively; numpy scalars to Python."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(path: "str | os.PathLike[str]", report: dict) -> Path:
    return write_text_atomic(path, json.dumps(_json_safe(report), indent=2) + "\n")


def _load_cloud(path: "str | os.PathLike[str]", what: str, mesh_samples: int, seed: int = 0):
    ply = read_ply(path)
    if ply.faces is not None and len(ply.faces):
        pts, normals = sample_mesh(ply.points, ply.faces, mesh_samples, seed)
        log.info("%s: sampled %d points from a mesh of %d triangles", what, len(pts), len(ply.faces))
        return pts, normals
    if len(ply.points) == 0:
        raise UserInputError(f"{what} {path} has no points")
    return ply.points, ply.normals


def evaluate_files(out_dir: "str | os.PathLike[str]", gt_traj: Optional[str] = None,
                   traj: Optional[str] = None, gt_cloud: Optional[str] = None,
                   cloud: Optional[str] = None, options: Optional[EvalOptions] = None) -> dict:
    """Evaluate a trajectory and/or a cloud against ground truth; write report.json and plots.

    When both a trajectory and a cloud are given, the cloud is first mapped by the trajectory
    alignment (the map lives in the estimate's world frame), then optionally refined by ICP.
    """
    opt = options or EvalOptions()
    if (gt_traj is None) != (traj is None):
        raise UserInputError("give both --gt-traj and --traj (or neither)")
    if (gt_cloud is None) != (cloud is None):
        raise UserInputError("give both --gt-cloud and --cloud (or neither)")
    if gt_traj is None and gt_cloud is None:
        raise UserInputError("nothing to evaluate: give --gt-traj/--traj and/or --gt-cloud/--cloud")
    for p, what in ((gt_traj, "ground-truth trajectory"), (traj, "trajectory"),
                    (gt_cloud, "ground-truth cloud"), (cloud, "point cloud")):
        if p is not None and not Path(p).is_file():
            raise UserInputError(f"{what} file not found: {p}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: Dict[str, object] = {"inputs": {"gt_traj": gt_traj, "traj": traj, "gt_cloud": gt_cloud,
                                            "cloud": cloud},
                                 "options": dict(vars(opt)), "plots": []}
    plot_files: List[str] = []
    T_map = np.eye(4)
    if gt_traj is not None:
        gt_t, est_t = read_tum(gt_traj), read_tum(traj)
        for t, name in ((gt_t, gt_traj), (est_t, traj)):
            if len(t) == 0:
                raise DataFormatError(f"{name}: no poses in the trajectory file")
        gs, gp, es, ep = gt_t.stamps_ns, gt_t.poses, est_t.stamps_ns, est_t.poses
        res = evaluate_trajectory(gs, gp, es, ep, align=opt.align, max_dt_s=opt.max_dt_s,
                                  rpe_delta_frames=opt.rpe_delta_frames,
                                  rpe_distance_m=opt.rpe_distance_m)
        report["trajectory"] = res.report.to_dict()
        T_map = np.asarray(res.report.T_align)
        if opt.plots:
            t = (res.stamps_ns - res.stamps_ns[0]) / 1e9
            plot_files += [
                plots.plot_trajectory_top(res.gt[:, :3, 3], res.est_aligned[:, :3, 3],
                                          out / "trajectory_top.png",
                                          title=f"Trajectory (top view, {opt.align} aligned)"),
                plots.plot_error_over_time(t, res.ate_trans, out / "ate_over_time.png",
                                           title="Absolute trajectory error", err2=res.ate_rot,
                                           ylabel2="rotation error [deg]"),
                plots.plot_histogram(res.ate_trans, out / "ate_histogram.png", "ATE [m]",
                                     title="ATE histogram"),
            ]
    if gt_cloud is not None:
        gt_pts, gt_n = _load_cloud(gt_cloud, "ground-truth cloud", opt.mesh_samples)
        pred_pts, pred_n = _load_cloud(cloud, "point cloud", opt.mesh_samples, seed=1)
        if not np.allclose(T_map, np.eye(4)):
            pred_pts = transform_points(T_map, pred_pts)
            if pred_n is not None:
                pred_n = pred_n @ sim3_decompose(T_map)[1].T
        sres = evaluate_surface(pred_pts, gt_pts, threshold=opt.threshold_m, gt_normals=gt_n,
                                pred_normals=pred_n, icp=opt.icp, icp_max_dist=opt.icp_max_dist_m,
                                k_normals=opt.k_normals)
        report["surface"] = dict(sres.report.to_dict(),
                                 pre_alignment="trajectory" if gt_traj is not None else "none")
        if opt.plots:
            plot_files += [
                plots.plot_histogram(sres.acc_dist, out / "accuracy_histogram.png",
                                     "distance prediction -> ground truth [m]",
                                     title="Accuracy", threshold=opt.threshold_m),
                plots.plot_histogram(sres.comp_dist, out / "completion_histogram.png",
                                     "distance ground truth -> prediction [m]",
                                     title="Completion", threshold=opt.threshold_m),
            ]
    report["plots"] = [p.name for p in plot_files]
    write_report(out / REPORT_FILE, report)
    return report


def summary(report: dict) -> str:
    """A few human-readable lines of a report."""
    lines = []
    tr = report.get("trajectory")
    if tr:
        ate = tr["ate_trans_m"]
        lines.append(f"trajectory: {tr['n_matched']}/{tr['n_est']} poses matched, "
                     f"gt length {tr['gt_length_m']:.2f} m, align {tr['align']} (scale {tr['scale']:.4f})")
        lines.append(f"  ATE  rmse {ate['rmse']:.4f} m  mean {ate['mean']:.4f}  median {ate['median']:.4f}  "
                     f"max {ate['max']:.4f}  rot rmse {tr['ate_rot_deg']['rmse']:.3f} deg")
        lines.append(f"  RPE  ({tr['rpe_delta_frames']} frame) trans rmse {tr['rpe_trans_m']['rmse']:.4f} m  "
                     f"rot rmse {tr['rpe_rot_deg']['rmse']:.3f} deg")
        if tr.get("rpe_dist_trans_pct"):
            lines.append(f"  RPE  ({tr['rpe_distance_m']:g} m) trans {tr['rpe_dist_trans_pct']['mean']:.2f} %  "
                         f"rot {tr['rpe_dist_rot_deg_per_m']['mean']:.3f} deg/m")
    sf = report.get("surface")
    if sf:
        lines.append(f"surface: {sf['n_pred']} predicted vs {sf['n_gt']} ground-truth points"
                     + (" (ICP)" if sf.get("icp") else ""))
        lines.append(f"  accuracy {sf['accuracy_mean_m']:.4f} m (median {sf['accuracy_median_m']:.4f})  "
                     f"completion {sf['completion_mean_m']:.4f} m (median {sf['completion_median_m']:.4f})")
        lines.append(f"  F@{sf['threshold_m']:g} m {sf['fscore']:.4f} (P {sf['precision']:.4f}, "
                     f"R {sf['recall']:.4f})  normal consistency {sf['normal_consistency']:.4f}")
    return "\n".join(lines)
