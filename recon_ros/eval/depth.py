"""Depth-map errors: AbsRel, SqRel, RMSE, log RMSE and threshold accuracies delta < t.

Pixels count when the ground truth lies in (min_depth, max_depth], the prediction is finite
and positive, and the optional mask is True. With ``median_scaling`` the prediction is first
multiplied by median(gt) / median(pred) over those pixels (for scale-free predictions; for
sequences prefer one Sim(3) scale from the trajectory alignment).
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence

import numpy as np

from recon_ros.errors import UserInputError

DEFAULT_THRESHOLDS = (1.25, 1.25 ** 2, 1.25 ** 3, 1.05, 1.03)


def _key(t: float) -> str:
    for k, name in ((1.25, "delta_1.25"), (1.25 ** 2, "delta_1.25^2"), (1.25 ** 3, "delta_1.25^3")):
        if abs(t - k) < 1e-12:
            return name
    return f"delta_{t:g}"


def depth_metrics(pred: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray] = None,
                  min_depth: float = 1e-3, max_depth: Optional[float] = None,
                  median_scaling: bool = False,
                  thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Dict[str, float]:
    """Metrics of one depth map (any shape; ``pred``, ``gt`` and ``mask`` must match)."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise UserInputError(f"predicted depth {pred.shape} and ground truth {gt.shape} differ in shape")
    valid = np.isfinite(gt) & (gt > min_depth) & np.isfinite(pred) & (pred > 0)
    if max_depth is not None:
        valid &= gt <= max_depth
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != gt.shape:
            raise UserInputError(f"depth mask {mask.shape} does not match the depth {gt.shape}")
        valid &= mask
    n = int(valid.sum())
    out: Dict[str, float] = {"n_valid": float(n), "valid_fraction": n / max(gt.size, 1), "scale": 1.0}
    names = ["abs_rel", "sq_rel", "rmse", "rmse_log"] + [_key(t) for t in thresholds]
    if n == 0:
        out.update({k: float("nan") for k in names})
        return out
    p, g = pred[valid], gt[valid]
    if median_scaling:
        s = float(np.median(g) / np.median(p))
        p = p * s
        out["scale"] = s
    diff = p - g
    out["abs_rel"] = float(np.mean(np.abs(diff) / g))
    out["sq_rel"] = float(np.mean(diff ** 2 / g))
    out["rmse"] = float(np.sqrt(np.mean(diff ** 2)))
    out["rmse_log"] = float(np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)))
    ratio = np.maximum(p / g, g / p)
    for t in thresholds:
        out[_key(t)] = float(np.mean(ratio < t))
    return out


def mean_depth_metrics(per_frame: Iterable[Dict[str, float]]) -> Dict[str, float]:
    """Average of per-frame metrics over frames that had valid pixels (the usual protocol)."""
    rows = [m for m in per_frame if m.get("n_valid", 0) > 0]
    if not rows:
        return {"n_frames": 0.0}
    keys = [k for k in rows[0] if k != "n_valid"]
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out["n_valid"] = float(sum(r["n_valid"] for r in rows))
    out["n_frames"] = float(len(rows))
    return out
