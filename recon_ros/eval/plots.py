"""PNG plots of evaluation results (matplotlib's Agg canvas, no pyplot state), written atomically."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from recon_ros.io.atomic import write_bytes_atomic


def _save(fig: Figure, path: "str | os.PathLike[str]") -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return write_bytes_atomic(path, buf.getvalue())


def top_view_axes(xyz: np.ndarray) -> Tuple[np.ndarray, Tuple[str, str]]:
    """(3, 2) projection onto the plane of largest spread, with axis labels.

    When the spread is largest in a coordinate plane (e.g. x-y for a z-up world) that plane
    is used as is; otherwise the two principal directions.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    names = "xyz"
    if len(xyz) < 3:
        return np.eye(3)[:, :2], ("x [m]", "y [m]")
    _, _, vt = np.linalg.svd(xyz - xyz.mean(axis=0), full_matrices=False)
    normal = vt[2]
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) > 0.9:  # close to a coordinate plane: keep its axes
        keep = sorted(set(range(3)) - {axis})
        P = np.eye(3)[:, keep]
        return P, (f"{names[keep[0]]} [m]", f"{names[keep[1]]} [m]")
    return vt[:2].T, ("principal axis 1 [m]", "principal axis 2 [m]")


def plot_trajectory_top(gt_xyz: np.ndarray, est_xyz: np.ndarray, path: "str | os.PathLike[str]",
                        title: str = "Trajectory (top view)") -> Path:
    P, labels = top_view_axes(gt_xyz)
    g = np.asarray(gt_xyz) @ P
    e = np.asarray(est_xyz) @ P
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot(111)
    ax.plot(g[:, 0], g[:, 1], "-", color="black", lw=1.5, label="ground truth")
    ax.plot(e[:, 0], e[:, 1], "-", color="tab:red", lw=1.2, label="estimate (aligned)")
    step = max(1, len(g) // 40)
    for a, b in zip(g[::step], e[::step]):
        ax.plot([a[0], b[0]], [a[1], b[1]], "-", color="tab:blue", lw=0.5, alpha=0.6)
    ax.plot(g[:1, 0], g[:1, 1], "o", color="black", ms=5, label="start")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_error_over_time(t_s: np.ndarray, err: np.ndarray, path: "str | os.PathLike[str]",
                         ylabel: str = "ATE [m]", title: str = "Error over time",
                         err2: Optional[np.ndarray] = None, ylabel2: str = "") -> Path:
    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot(111)
    ax.plot(t_s, err, "-", color="tab:red", lw=1.2)
    ax.set_xlabel("time [s]")
    ax.set_ylabel(ylabel, color="tab:red")
    ax.grid(True, alpha=0.3)
    if err2 is not None:
        ax2 = ax.twinx()
        ax2.plot(t_s, err2, "-", color="tab:blue", lw=1.0)
        ax2.set_ylabel(ylabel2, color="tab:blue")
        ax2.ticklabel_format(axis="y", useOffset=False)
    ax.set_title(title)
    return _save(fig, path)


def plot_histogram(values: np.ndarray, path: "str | os.PathLike[str]", xlabel: str,
                   title: str = "Error histogram", threshold: Optional[float] = None,
                   bins: int = 50) -> Path:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(111)
    if v.size:
        hi = float(np.percentile(v, 99.5)) if v.size > 10 else float(v.max())
        ax.hist(np.clip(v, 0, hi if hi > 0 else None), bins=bins, color="tab:gray")
        ax.axvline(float(np.median(v)), color="tab:red", lw=1, label=f"median {np.median(v):.4g}")
        ax.axvline(float(np.mean(v)), color="tab:blue", lw=1, ls="--", label=f"mean {np.mean(v):.4g}")
    if threshold is not None:
        ax.axvline(threshold, color="black", lw=1, ls=":", label=f"threshold {threshold:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)
