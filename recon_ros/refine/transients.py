"""Transient (moving object) rejection, user masks and probation for keyframe points.

Weight-free mechanisms of the refine design, section 6.3:

* user masks (image resolution, True = ignore) are honoured: masked pixels are always dropped;
* every keyframe point is projected into the other keyframes that overlap it most. With
  ``r = log(z_point / z_observed)`` in a view: ``|r| < thr`` is an agreement, ``r < -thr`` (the
  view sees *through* the point, a free-space violation, tested against the nearest surface of a
  3x3 neighbourhood) is a violation, ``r > thr`` is an occlusion and carries no evidence;
* ``thr`` is adaptive: a percentile of a residual histogram kept as an exponential moving average
  across calls (the SpotLessSplats idea), clamped to a range of relative depth;
* a point is transient when it has at least ``min_violations`` violations forming more than
  ``vote_ratio`` of its decisive views (:func:`recon_ros.mapping.transience.free_space_vote`,
  the vote the fused volume applies to its voxels); points confirmed by fewer than ``probation_views`` other
  keyframes are on probation (tentative) and are dropped as soon as any view contradicts them;
* a 3x3 rescue keeps an isolated flagged pixel whose neighbours are mostly static.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np

from recon_ros.errors import DataFormatError
from recon_ros.geometry.transforms import invert_T
from recon_ros.mapping.frame import Keyframe
from recon_ros.mapping.transience import free_space_vote
from recon_ros.refine.graph import frustum_overlap, mask_on_grid
from recon_ros.refine.schema import TransientConfig

log = logging.getLogger(__name__)

HIST_BINS = 2000
HIST_MAX = 1.0  # residuals |log depth ratio| above this fall into the last bin


@dataclass
class TransientMask:
    """Per-pixel decisions on a keyframe's pointmap grid (all h x w bool).

    ``drop`` is what the map should remove: user-masked, transient, or tentative and contradicted.
    """

    drop: np.ndarray
    user: np.ndarray
    transient: np.ndarray
    tentative: np.ndarray
    n_agree: np.ndarray
    n_violate: np.ndarray


@dataclass
class TransientFilter:
    """Stateful transient detector (its residual histogram persists across calls)."""

    cfg: TransientConfig = field(default_factory=TransientConfig)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS))
    threshold: float = float("nan")

    @staticmethod
    def _residual_counts(residuals: np.ndarray) -> np.ndarray:
        """Histogram counts of |residual| (the last bin takes everything above HIST_MAX)."""
        r = np.clip(np.abs(residuals[np.isfinite(residuals)]), 0.0, HIST_MAX * (1 - 1e-9))
        return np.bincount((r / HIST_MAX * HIST_BINS).astype(np.int64), minlength=HIST_BINS).astype(np.float64)

    def _update_threshold(self, counts: np.ndarray) -> float:
        cfg = self.cfg
        hist = np.asarray(counts, np.float64).copy()
        if hist.sum() > 0:
            hist /= hist.sum()
        if self.histogram.sum() > 0:
            self.histogram = cfg.histogram_decay * self.histogram + (1.0 - cfg.histogram_decay) * hist
        else:
            self.histogram = hist
        cdf = np.cumsum(self.histogram)
        if cdf[-1] <= 0:
            thr = cfg.min_threshold
        else:
            b = int(np.searchsorted(cdf / cdf[-1], cfg.percentile / 100.0))
            thr = (b + 1) * HIST_MAX / HIST_BINS
        self.threshold = float(np.clip(thr, cfg.min_threshold, cfg.max_threshold))
        return self.threshold

    def detect(self, kfs: Sequence[Keyframe], poses: Optional[dict] = None, masks: Optional[dict] = None
               ) -> dict:
        """``{id: TransientMask}`` for every keyframe (time order). ``poses`` override ``T_world_cam``."""
        cfg = self.cfg
        n = len(kfs)
        shapes = {kf.points_cam.shape for kf in kfs}
        if len(shapes) > 1:
            raise DataFormatError(f"keyframe pointmaps must share one size for transient rejection, got {shapes}")
        pose_arr = np.stack([np.asarray((poses or {}).get(kf.id, kf.T_world_cam), np.float64) for kf in kfs]) \
            if n else np.zeros((0, 4, 4))
        user = {kf.id: _user_mask(kf, (masks or {}).get(kf.id)) for kf in kfs}
        if not cfg.enabled or n < 2:
            return {kf.id: _only_user(user[kf.id]) for kf in kfs}
        depths = np.stack([np.where(user[kf.id], np.nan, kf.depth) for kf in kfs]).astype(np.float64)
        near = np.stack([_min3x3(d) for d in depths])
        Ks = np.stack([np.asarray(kf.K, np.float64) for kf in kfs])
        overlap = frustum_overlap(kfs, list(pose_arr))
        sym = np.maximum(overlap, overlap.T)
        stamps = np.array([kf.stamp_ns for kf in kfs], np.float64) * 1e-9
        orders = [[j for j in np.argsort(-sym[i]) if j != i and sym[i, j] > 0][:cfg.max_views] for i in range(n)]

        def residuals(i: int) -> tuple[np.ndarray, np.ndarray]:
            o = orders[i]
            return self._residuals(kfs[i], pose_arr[i], pose_arr[o], Ks[o], depths[o], near[o])

        # Two passes, so that memory does not grow with the number of keyframes: the residuals
        # of every keyframe (views x pixels) feed the threshold's histogram, then are computed
        # again one keyframe at a time for the decisions.
        counts = np.zeros(HIST_BINS)
        for i in range(n):
            counts += self._residual_counts(residuals(i)[0])
        thr = self._update_threshold(counts)
        out = {}
        h, w = kfs[0].points_cam.shape[:2]
        for i, kf in enumerate(kfs):
            order = orders[i]
            r, r_near = residuals(i)
            far_enough = np.abs(stamps[order] - stamps[i]) >= cfg.probation_min_gap_s if order else np.zeros(0, bool)
            agree = np.isfinite(r) & (np.abs(r) < thr)
            violate = np.isfinite(r_near) & (r_near < -thr)
            n_agree = (agree & far_enough[:, None]).sum(0) if order else np.zeros(h * w, np.int64)
            n_violate = violate.sum(0) if order else np.zeros(h * w, np.int64)
            n_agree_all = agree.sum(0) if order else np.zeros(h * w, np.int64)
            valid = kf.valid.reshape(-1) & np.isfinite(kf.depth.reshape(-1))
            transient = free_space_vote(n_violate, n_agree_all + n_violate, cfg.min_violations,
                                        cfg.vote_ratio) & valid
            tentative = (n_agree < cfg.probation_views) & valid
            contradicted = tentative & (n_violate >= 1) & cfg.drop_unconfirmed_contradicted
            flagged = (transient | contradicted).reshape(h, w)
            if cfg.rescue:
                flagged = _rescue(flagged, valid.reshape(h, w))
            drop = flagged | user[kf.id]
            out[kf.id] = TransientMask(drop=drop, user=user[kf.id], transient=transient.reshape(h, w),
                                       tentative=tentative.reshape(h, w), n_agree=n_agree.reshape(h, w),
                                       n_violate=n_violate.reshape(h, w))
        log.info("transients: threshold %.3f, %.2f%% of pixels dropped", thr,
                 100.0 * np.mean([m.drop.mean() for m in out.values()]))
        return out

    @staticmethod
    def _residuals(kf: Keyframe, T_i: np.ndarray, T_views: np.ndarray, Ks: np.ndarray, depths: np.ndarray,
                   near: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log(z_point / z_observed) in every view (V, P): nearest pixel, and nearest-surface (3x3 min)."""
        P = kf.points_cam.reshape(-1, 3).astype(np.float64)
        if len(T_views) == 0:
            return np.zeros((0, len(P))), np.zeros((0, len(P)))
        Pw = P @ T_i[:3, :3].T + T_i[:3, 3]
        T_cw = invert_T(T_views)
        Xc = np.einsum("vij,pj->vpi", T_cw[:, :3, :3], Pw) + T_cw[:, None, :3, 3]
        z = Xc[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = Ks[:, None, 0, 0] * Xc[..., 0] / z + Ks[:, None, 0, 1] * Xc[..., 1] / z + Ks[:, None, 0, 2]
            v = Ks[:, None, 1, 1] * Xc[..., 1] / z + Ks[:, None, 1, 2]
        V, h, w = depths.shape
        ui = np.rint(np.nan_to_num(u, nan=-1, posinf=-1, neginf=-1)).astype(np.int64)
        vi = np.rint(np.nan_to_num(v, nan=-1, posinf=-1, neginf=-1)).astype(np.int64)
        inside = (z > 1e-9) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
        flat = np.arange(V)[:, None] * (h * w) + np.clip(vi, 0, h - 1) * w + np.clip(ui, 0, w - 1)
        obs = np.where(inside, depths.reshape(-1)[flat], np.nan)
        obs_near = np.where(inside, near.reshape(-1)[flat], np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.log(z / obs)
            r_near = np.where(np.isfinite(obs), np.log(z / obs_near), np.nan)
        return r, r_near


def _min3x3(depth: np.ndarray) -> np.ndarray:
    """Smallest valid depth in each 3x3 neighbourhood (NaN where none is valid)."""
    d = np.where(np.isfinite(depth), depth, np.inf).astype(np.float32)
    m = cv2.erode(d, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return np.where(np.isfinite(m), m, np.nan).astype(np.float64)


def _rescue(flagged: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Unflag pixels whose valid 3x3 neighbours are mostly static (more than half)."""
    static = (~flagged & valid).astype(np.float32)
    cnt = cv2.boxFilter(valid.astype(np.float32), -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    stat = cv2.boxFilter(static, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    return flagged & ~(stat > 0.5 * np.maximum(cnt - 1.0, 1.0))


def _user_mask(kf: Keyframe, mask: Optional[np.ndarray]) -> np.ndarray:
    h, w = kf.points_cam.shape[:2]
    if mask is None:
        return np.zeros((h, w), bool)
    mask = np.asarray(mask)
    H, W = kf.rgb.shape[:2]
    if mask.shape != (H, W):
        raise DataFormatError(f"mask for keyframe {kf.id} has shape {mask.shape}; it must match the image ({H} x {W})")
    return mask_on_grid(kf, mask.astype(bool))


def _only_user(user: np.ndarray) -> TransientMask:
    z = np.zeros_like(user)
    zi = np.zeros(user.shape, np.int64)
    return TransientMask(drop=user.copy(), user=user, transient=z, tentative=z.copy(), n_agree=zi, n_violate=zi.copy())
