"""The ``rgbd`` frontend: metric pointmaps from a depth camera, poses by frame-to-model tracking.

No learned weights. Each frame's pointmap is its depth image back-projected with K; its pose
comes from :func:`recon_ros.mapping.tracking.track` against the last few *tracking keyframes*
(vertex/normal/intensity pyramids at tracking resolution), starting from a constant-velocity
prediction. When tracking fails (too few matches, large residual, implausible jump) the
failure is logged and counted, the last good pose is held and the estimate is flagged
``tracking_ok = False``; the next frame tries again from the held pose.

Confidence of a valid pixel is ``1 + (2 m / z)^2``: depth noise of structured-light and
time-of-flight cameras grows roughly with the square of the distance, and the offset of 1
keeps the scale comparable with Spann3R's confidences (>= 1).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Optional

import numpy as np

from recon_ros.errors import UserInputError
from recon_ros.geometry.camera import PixelMap, backproject_depth, scale_K
from recon_ros.geometry.transforms import invert_T, matrix_to_rotvec, rotvec_to_matrix, transform_points
from recon_ros.mapping.frame import Frame, FrameEstimate
from recon_ros.mapping.frontend import Frontend
from recon_ros.mapping.keyframes import mask_to_model
from recon_ros.mapping.schema import MappingConfig
from recon_ros.mapping.tracking import (PyramidLevel, TrackResult, build_pyramid, downsample_depth,
                                        downsample_image, pose_delta, track)

log = logging.getLogger(__name__)

CONF_REF_DEPTH_M = 2.0


def depth_confidence(z: np.ndarray) -> np.ndarray:
    """Confidence of depth readings: ``1 + (2 m / z)^2``, 0 where invalid."""
    with np.errstate(invalid="ignore", divide="ignore"):
        c = 1.0 + (CONF_REF_DEPTH_M / z) ** 2
    return np.where(np.isfinite(c), c, 0.0).astype(np.float32)


def gray01(rgb: np.ndarray) -> np.ndarray:
    """Luma in [0, 1] (float32) of an RGB uint8 image."""
    f = rgb.astype(np.float32)
    return (f[..., 0] * (0.299 / 255.0) + f[..., 1] * (0.587 / 255.0) + f[..., 2] * (0.114 / 255.0))


def _motion(twist: np.ndarray) -> np.ndarray:
    """Relative motion of a (translation, rotation vector) pair."""
    out = np.eye(4)
    out[:3, :3] = rotvec_to_matrix(twist[3:])
    out[:3, 3] = twist[:3]
    return out


class RGBDFrontend(Frontend):
    """Depth-camera frontend (see the module docstring). One estimate per tracked frame, no lag."""

    name = "rgbd"
    metric = True

    def __init__(self, config: Optional[MappingConfig] = None) -> None:
        self.config = config if config is not None else MappingConfig()
        self.reset()

    # -- Frontend interface ------------------------------------------------------------------
    def reset(self) -> None:
        self._model: list[tuple[np.ndarray, list[PyramidLevel]]] = []
        self._T_last: Optional[np.ndarray] = None  # last good pose
        self._velocity = np.zeros(6)  # (translation, rotation vector) per second, last good step
        self._stamp_last: Optional[int] = None
        self._last: Optional[TrackResult] = None
        self._counts = dict(frames=0, tracked=0, failures=0, skipped=0, consecutive_failures=0,
                            model_keyframes_taken=0)
        self._time_s = 0.0

    def stats(self) -> dict:
        out: dict = dict(self._counts)
        out["model_keyframes"] = len(self._model)
        out["mean_step_ms"] = 1000.0 * self._time_s / max(1, self._counts["frames"])
        if self._last is not None:
            out["inlier_fraction"] = self._last.inlier_fraction
            out["rms_m"] = self._last.rms_m
        return out

    def step(self, frame: Frame) -> list[FrameEstimate]:
        t0 = time.perf_counter()
        try:
            return self._step(frame)
        finally:
            self._time_s += time.perf_counter() - t0

    # -- internals ---------------------------------------------------------------------------
    def _check(self, frame: Frame) -> np.ndarray:
        frame.validate()
        if frame.depth is None:
            raise UserInputError(
                "the rgbd frontend needs a depth image registered to the colour image "
                "(Frame.depth); give a depth topic/folder, or use frontend.name: spann3r")
        if frame.K is None:
            raise UserInputError(
                "the rgbd frontend needs the camera intrinsics (Frame.K, from camera_info); "
                "give the camera_info topic or a calibration")
        fc = self.config.frontend
        if fc.max_depth_m <= fc.min_depth_m:
            raise UserInputError(f"frontend.max_depth_m ({fc.max_depth_m}) must exceed "
                                 f"frontend.min_depth_m ({fc.min_depth_m})")
        d = np.asarray(frame.depth, dtype=np.float32)
        ok = np.isfinite(d) & (d >= fc.min_depth_m) & (d <= fc.max_depth_m)
        if frame.mask is not None:
            ok &= ~np.asarray(frame.mask, dtype=bool)
        return np.where(ok, d, np.nan).astype(np.float32)

    def _step(self, frame: Frame) -> list[FrameEstimate]:
        depth = self._check(frame)
        tc = self.config.tracking
        self._counts["frames"] += 1
        valid_frac = float(np.count_nonzero(np.isfinite(depth))) / depth.size
        factor = max(1, math.ceil(frame.width / tc.max_width))
        pyr = build_pyramid(depth, gray01(frame.rgb), np.asarray(frame.K, float), factor,
                            tc.pyramid_levels)
        if self._T_last is None:
            if valid_frac < tc.min_valid_fraction:
                self._counts["skipped"] += 1
                log.warning("rgbd: frame %d skipped before initialisation: only %.1f%% valid depth",
                            frame.index, 100 * valid_frac)
                return []
            T = np.eye(4)
            self._accept(T, frame.stamp_ns)
            self._add_model(T, pyr)
            return [self._estimate(frame, depth, T, True)]

        if valid_frac < tc.min_valid_fraction:
            return [self._fail(frame, depth, f"only {100 * valid_frac:.1f}% valid depth")]
        T_pred = self._predict(frame.stamp_ns)
        res = track(pyr, self._model, T_pred, tc)
        reason = self._failure_reason(res, T_pred)
        if reason is not None and not np.allclose(T_pred, self._T_last):
            res2 = track(pyr, self._model, self._T_last, tc)  # retry without the velocity prior
            reason2 = self._failure_reason(res2, self._T_last)
            if reason2 is None:
                res, reason = res2, None
        self._last = res
        if reason is not None:
            return [self._fail(frame, depth, reason)]
        T = res.T_world_cam
        self._accept(T, frame.stamp_ns)
        T_ref = self._model[-1][0]
        dt, dr = pose_delta(T_ref, T)
        if (dt > tc.ref_translation_m or dr > tc.ref_rotation_deg
                or res.inlier_fraction < tc.ref_min_inlier_fraction):
            self._add_model(T, pyr)
        return [self._estimate(frame, depth, T, True)]

    def _failure_reason(self, res: TrackResult, T_pred: np.ndarray) -> Optional[str]:
        tc = self.config.tracking
        if res.inlier_fraction < tc.min_inlier_fraction:
            return f"{100 * res.inlier_fraction:.0f}% of points matched (< {100 * tc.min_inlier_fraction:.0f}%)"
        if not res.rms_m <= tc.max_residual_m:
            return f"residual {res.rms_m:.3f} m > {tc.max_residual_m} m"
        jt, jr = pose_delta(T_pred, res.T_world_cam)
        if jt > tc.max_jump_m or jr > tc.max_jump_deg:
            return f"pose jumped {jt:.2f} m / {jr:.1f} deg from its prediction"
        return None

    def _fail(self, frame: Frame, depth: np.ndarray, reason: str) -> FrameEstimate:
        self._counts["failures"] += 1
        self._counts["consecutive_failures"] += 1
        self._velocity = np.zeros(6)
        log.warning("rgbd: tracking failed on frame %d (%s); holding the last pose (%d failures)",
                    frame.index, reason, self._counts["failures"])
        return self._estimate(frame, depth, self._T_last, False)

    def _accept(self, T: np.ndarray, stamp_ns: int) -> None:
        if self._T_last is not None and self._stamp_last is not None:
            dt = (stamp_ns - self._stamp_last) * 1e-9
            if dt > 0:
                D = invert_T(self._T_last) @ T
                self._velocity = np.concatenate([D[:3, 3], matrix_to_rotvec(D[:3, :3])]) / dt
        self._counts["tracked"] += 1
        self._counts["consecutive_failures"] = 0
        self._T_last = T.copy()
        self._stamp_last = stamp_ns

    def _predict(self, stamp_ns: int) -> np.ndarray:
        dt = (stamp_ns - self._stamp_last) * 1e-9 if self._stamp_last is not None else 0.0
        if not 0.0 < dt < 1.0:
            return self._T_last.copy()
        return self._T_last @ _motion(self._velocity * dt)

    def _add_model(self, T: np.ndarray, pyr: list[PyramidLevel]) -> None:
        self._model.append((T.copy(), pyr))
        self._counts["model_keyframes_taken"] += 1
        del self._model[:-self.config.tracking.model_keyframes]

    def _estimate(self, frame: Frame, depth: np.ndarray, T: np.ndarray, ok: bool) -> FrameEstimate:
        H, W = depth.shape
        K = np.asarray(frame.K, dtype=np.float64)
        mw = self.config.frontend.output_max_width
        f = max(1, math.ceil(W / mw)) if mw > 0 else 1
        if f > 1:
            d = downsample_depth(depth, f)
            colors = downsample_image(frame.rgb, f)
            Km = scale_K(K, 1.0 / f, 1.0 / f)
            pm = PixelMap(1.0 / f, 1.0 / f, 0.0, 0.0, (W, H), (d.shape[1], d.shape[0]))
        else:
            d, colors, Km = depth, frame.rgb, K
            pm = PixelMap.identity(W, H)
        pts = transform_points(T, backproject_depth(d, Km))
        conf = depth_confidence(d)
        valid = np.isfinite(d) & ~mask_to_model(frame.mask, pm)
        return FrameEstimate(stamp_ns=frame.stamp_ns, index=frame.index, points=pts, confidence=conf,
                             colors=np.ascontiguousarray(colors), T_world_cam=T.copy(), K_model=Km,
                             pixel_map=pm, valid=valid, provisional=False, frame=frame,
                             tracking_ok=ok)
