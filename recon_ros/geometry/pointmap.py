"""Camera parameters from pointmaps: focal length (robust Weiszfeld fit) and pose (PnP-RANSAC).

A pointmap is H x W x 3: the 3-D point seen at each pixel (u = column, v = row).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from recon_ros.errors import UserInputError
from recon_ros.geometry.camera import make_K, pixel_grid
from recon_ros.geometry.transforms import invert_T, make_T

log = logging.getLogger(__name__)


def _check_pointmap(pts: np.ndarray, name: str = "pointmap") -> np.ndarray:
    pts = np.asarray(pts)
    if pts.ndim != 3 or pts.shape[2] != 3:
        raise UserInputError(f"{name} must be H x W x 3, got shape {pts.shape}")
    if not np.issubdtype(pts.dtype, np.floating):
        raise UserInputError(f"{name} must be floating point, got {pts.dtype}")
    return pts


def _check_mask(mask: Optional[np.ndarray], shape: Tuple[int, int]) -> Optional[np.ndarray]:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise UserInputError(f"mask has shape {mask.shape} but the pointmap is {shape[0]} x {shape[1]}")
    return mask.astype(bool)


def confidence_mask(conf: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels whose Spann3R confidence, mapped to [0,1) as (conf-1)/conf, exceeds ``threshold``."""
    conf = np.asarray(conf, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = (conf - 1.0) / conf
    return np.isfinite(unit) & (unit > threshold)


def estimate_focal(pts_cam: np.ndarray, principal_point: Optional[Tuple[float, float]] = None,
                   mask: Optional[np.ndarray] = None, iterations: int = 10) -> float:
    """Focal length (pixels) of a pointmap in its own camera frame.

    Minimises sum |pixel - f * (x, y)/z| over pixels (robust L1): L2 closed-form start, then
    ``iterations`` reweighted steps with weights 1/max(residual, 1e-8). Pixel coordinates are
    centred on the principal point (default: the image centre (W/2, H/2)); non-finite x/z, y/z
    count as 0. ``mask`` (H x W bool) restricts the fit to chosen pixels.
    """
    pts = _check_pointmap(pts_cam).astype(np.float64)
    h, w = pts.shape[:2]
    m = _check_mask(mask, (h, w))
    cx, cy = principal_point if principal_point is not None else (w / 2.0, h / 2.0)
    pix = pixel_grid(w, h) - np.array([cx, cy])
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = pts[..., :2] / pts[..., 2:3]
    xy = np.where(np.isfinite(xy), xy, 0.0)
    if m is not None:
        if not m.any():
            raise UserInputError("focal estimation: the mask selects no pixels")
        pix, xy = pix[m], xy[m]
    else:
        pix, xy = pix.reshape(-1, 2), xy.reshape(-1, 2)
    dot_xp = np.sum(xy * pix, axis=-1)
    dot_xx = np.sum(xy * xy, axis=-1)
    if not np.any(dot_xx > 0):
        raise UserInputError("focal estimation: the pointmap has no usable points")
    focal = dot_xp.mean() / dot_xx.mean()
    for _ in range(iterations):
        res = np.linalg.norm(pix - focal * xy, axis=-1)
        wgt = 1.0 / np.maximum(res, 1e-8)
        focal = np.mean(wgt * dot_xp) / np.mean(wgt * dot_xx)
    return float(max(focal, 0.0))


def intrinsics_from_focal(focal: float, width: int, height: int) -> np.ndarray:
    """K with the principal point at the image centre (W/2, H/2)."""
    return make_K(focal, focal, width / 2.0, height / 2.0)


@dataclass
class PnPResult:
    success: bool
    T_world_cam: Optional[np.ndarray]  # 4x4 float64 camera-to-world
    num_inliers: int
    num_points: int


def estimate_pose_pnp(pts_world: np.ndarray, K: np.ndarray, mask: Optional[np.ndarray] = None,
                      min_points: int = 6) -> PnPResult:
    """Camera-to-world pose of the camera that sees ``pts_world`` (H x W x 3) at its pixels.

    OpenCV ``solvePnPRansac`` with its default settings and zero distortion on every finite pixel
    (or the pixels of ``mask``), correspondences point <-> pixel (u = column, v = row).
    """
    pts = _check_pointmap(pts_world, "world pointmap")
    h, w = pts.shape[:2]
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise UserInputError(f"K must be a finite 3x3 matrix, got {K!r}")
    sel = np.all(np.isfinite(pts), axis=-1)
    m = _check_mask(mask, (h, w))
    if m is not None:
        sel &= m
    n = int(sel.sum())
    if n < min_points:
        log.debug("PnP skipped: %d usable points", n)
        return PnPResult(False, None, 0, n)
    obj = pts[sel].astype(np.float32)
    img = pixel_grid(w, h)[sel].astype(np.float32)
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(obj, img, K.astype(np.float32), np.zeros(4, np.float32))
    if not ok:
        return PnPResult(False, None, 0, n)
    R, _ = cv2.Rodrigues(rvec)
    T_cam_world = make_T(R, tvec.reshape(3))
    return PnPResult(True, invert_T(T_cam_world), 0 if inliers is None else int(len(inliers)), n)
