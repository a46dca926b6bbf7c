"""Keyframe selection: quality gates and novelty triggers, and the Keyframe record builder.

A frame becomes a keyframe when it passes every quality gate *and* at least one novelty
trigger fires (the first usable frame always does):

* gates: tracking succeeded and the estimate is final; at least ``min_interval_s`` since the
  last keyframe; enough valid pixels; not too much of the image masked; median confidence of
  the valid pixels >= ``min_confidence``; sharpness (variance of the Laplacian of the grey
  image) >= ``min_sharpness`` and >= ``sharpness_ratio`` x the median sharpness of the recent
  frames (a blurred frame drops far below its neighbours; a view drifting to smoother content
  does not);
* triggers: translation since the last keyframe above ``min_translation_m`` (metric, when a
  scale is known) or above ``translation_depth_ratio`` x the last keyframe's median depth
  (scale-free); rotation above ``min_rotation_deg``; overlap with the last keyframe below
  ``min_overlap`` (the fraction of the frame's valid points that project into the last
  keyframe with depth agreeing within ``depth_agreement``); more than ``max_interval_s``.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from recon_ros.geometry.camera import PixelMap, project_points
from recon_ros.geometry.transforms import invert_T, make_T, rotation_angle_deg, sim3_decompose, transform_points
from recon_ros.mapping.frame import Frame, FrameEstimate, Keyframe
from recon_ros.mapping.schema import KeyframeConfig

log = logging.getLogger(__name__)

_OVERLAP_SAMPLES = 4000


def mask_to_model(mask: Optional[np.ndarray], pixel_map: PixelMap) -> np.ndarray:
    """Model-resolution mask (h x w bool, True = ignore) of an image mask (True = ignore).

    A model pixel is masked when any image pixel of its footprint is masked (the mask is
    dilated by the footprint before sampling) and when it falls outside the image.
    """
    W, H = pixel_map.model_size
    if mask is None:
        return np.zeros((H, W), dtype=bool)
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    kx = 2 * math.ceil(0.5 / pixel_map.sx) + 1 if pixel_map.sx < 1 else 1
    ky = 2 * math.ceil(0.5 / pixel_map.sy) + 1 if pixel_map.sy < 1 else 1
    if kx > 1 or ky > 1:
        m = cv2.dilate(m.astype(np.uint8), np.ones((ky, kx), np.uint8)) > 0
    u = (np.arange(W) + 0.5 - pixel_map.tx) / pixel_map.sx - 0.5
    v = (np.arange(H) + 0.5 - pixel_map.ty) / pixel_map.sy - 0.5
    ui = np.rint(u).astype(np.intp)
    vi = np.rint(v).astype(np.intp)
    out = np.ones((H, W), dtype=bool)
    uin = (ui >= 0) & (ui < w)
    vin = (vi >= 0) & (vi < h)
    out[np.ix_(vin, uin)] = m[np.ix_(vi[vin], ui[uin])]
    return out


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (0-255 scale); larger is sharper."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_32F).var())


def build_keyframe(kf_id: int, est: FrameEstimate, frame: Optional[Frame] = None, scale: float = 1.0,
                   depth_source: str = "frontend") -> Keyframe:
    """The Keyframe record of an estimate.

    ``scale`` (metres per frontend unit) is applied: ``points_cam`` are in the keyframe's
    camera frame times ``scale`` and ``T_world_cam`` has its translation times ``scale`` (a
    rigid pose in the metric world). Masked pixels of ``frame.mask`` are invalid.
    """
    frame = frame if frame is not None else est.frame
    if frame is None:
        raise ValueError("build_keyframe needs the input frame (est.frame or frame=)")
    T = np.asarray(est.T_world_cam, dtype=np.float64)
    s_pose, R, t = sim3_decompose(T)
    T_metric = make_T(R, t * scale, s_pose)
    pts = transform_points(invert_T(T), est.points) * np.float32(scale)
    valid = est.valid_mask() & ~mask_to_model(frame.mask, est.pixel_map)
    K_image = (np.asarray(frame.K, dtype=np.float64) if frame.K is not None
               else est.pixel_map.K_to_image(est.K_model))
    return Keyframe(id=kf_id, stamp_ns=est.stamp_ns, rgb=frame.rgb, points_cam=pts.astype(np.float32),
                    confidence=np.asarray(est.confidence, dtype=np.float32), colors=est.colors,
                    K=np.asarray(est.K_model, dtype=np.float64), K_image=K_image,
                    pixel_map=est.pixel_map, T_world_cam=T_metric, valid=valid,
                    depth_source=depth_source,
                    mask=None if frame.mask is None else np.asarray(frame.mask, dtype=bool))


@dataclass
class KeyframeDecision:
    """Why the last frame was or was not taken."""

    accepted: bool
    reason: str
    translation: float = 0.0  # frontend world units
    rotation_deg: float = 0.0
    overlap: float = 1.0
    sharpness: float = 0.0


@dataclass
class _Last:
    T_world_cam: np.ndarray  # frontend world units
    points_cam: np.ndarray  # frontend units, h x w x 3
    valid: np.ndarray
    K: np.ndarray
    median_depth: float
    stamp_ns: int


class KeyframeSelector:
    """Decides which estimates become keyframes and builds their records.

    ``consider(est, frame, scale)`` returns a :class:`Keyframe` or None; ``last_decision``
    says why. ``scale`` is the metres-per-unit of the frontend world when known (None for an
    unknown scale, which disables ``min_translation_m``); it is also applied to the record.
    """

    def __init__(self, config: Optional[KeyframeConfig] = None, depth_source: str = "frontend") -> None:
        self.config = config if config is not None else KeyframeConfig()
        self.depth_source = depth_source
        self.reset()

    def reset(self) -> None:
        self._last: Optional[_Last] = None
        self._next_id = 0
        self._sharp: deque = deque(maxlen=self.config.sharpness_window)
        self._counts: dict = dict(considered=0, keyframes=0)
        self.last_decision: Optional[KeyframeDecision] = None

    def stats(self) -> dict:
        return dict(self._counts)

    def continue_ids(self, next_id: int) -> None:
        """Number new keyframes from ``next_id`` on (after the keyframes of a loaded map)."""
        self._next_id = max(self._next_id, int(next_id))

    def consider(self, est: FrameEstimate, frame: Optional[Frame] = None,
                 scale: Optional[float] = None) -> Optional[Keyframe]:
        frame = frame if frame is not None else est.frame
        self._counts["considered"] += 1
        dec = self._decide(est, frame, scale)
        self.last_decision = dec
        key = "keyframes" if dec.accepted else "rejected_" + dec.reason.split(":")[0]
        self._counts[key] = self._counts.get(key, 0) + 1
        if not dec.accepted:
            return None
        kf = build_keyframe(self._next_id, est, frame, 1.0 if scale is None else scale,
                            self.depth_source)
        self._next_id += 1
        pts_cam = transform_points(invert_T(est.T_world_cam), est.points)
        z = pts_cam[..., 2][kf.valid]
        self._last = _Last(T_world_cam=np.array(est.T_world_cam, dtype=np.float64), points_cam=pts_cam,
                           valid=kf.valid, K=np.asarray(est.K_model, dtype=np.float64),
                           median_depth=float(np.median(z)) if z.size else 0.0, stamp_ns=est.stamp_ns)
        log.debug("keyframe %d at frame %d (%s)", kf.id, est.index, dec.reason)
        return kf

    # -- decision ----------------------------------------------------------------------------
    def _decide(self, est: FrameEstimate, frame: Optional[Frame], scale: Optional[float]) -> KeyframeDecision:
        c = self.config
        sharp = sharpness(frame.rgb) if frame is not None else float("inf")
        history = np.array(self._sharp, dtype=np.float64)
        if np.isfinite(sharp):
            self._sharp.append(sharp)
        if est.provisional:
            return KeyframeDecision(False, "provisional", sharpness=sharp)
        if not est.tracking_ok:
            return KeyframeDecision(False, "tracking_failed", sharpness=sharp)
        last = self._last
        if last is not None and (est.stamp_ns - last.stamp_ns) * 1e-9 < c.min_interval_s:
            return KeyframeDecision(False, "min_interval", sharpness=sharp)
        valid = est.valid_mask()
        if frame is not None and frame.mask is not None:
            masked = float(np.mean(frame.mask))
            if masked > c.max_masked_fraction:
                return KeyframeDecision(False, f"masked: {100 * masked:.0f}%", sharpness=sharp)
            valid &= ~mask_to_model(frame.mask, est.pixel_map)
        frac = float(np.mean(valid))
        if frac < c.min_valid_fraction or not np.any(valid):
            return KeyframeDecision(False, f"valid: {100 * frac:.1f}%", sharpness=sharp)
        if c.min_confidence > 0:
            med = float(np.median(est.confidence[valid]))
            if med < c.min_confidence:
                return KeyframeDecision(False, f"confidence: median {med:.2f}", sharpness=sharp)
        if sharp < c.min_sharpness:
            return KeyframeDecision(False, f"blur: {sharp:.1f}", sharpness=sharp)
        if c.sharpness_ratio > 0 and len(history) >= 5 and \
                sharp < c.sharpness_ratio * float(np.median(history)):
            return KeyframeDecision(False, "blur_relative", sharpness=sharp)
        if last is None:
            return KeyframeDecision(True, "first", sharpness=sharp)

        D = invert_T(last.T_world_cam) @ np.asarray(est.T_world_cam, dtype=np.float64)
        trans = float(np.linalg.norm(D[:3, 3]))
        rot = float(rotation_angle_deg(D[:3, :3] / np.cbrt(np.linalg.det(D[:3, :3]))))
        base = dict(translation=trans, rotation_deg=rot, sharpness=sharp)
        if scale is not None and c.min_translation_m > 0 and trans * scale > c.min_translation_m:
            return KeyframeDecision(True, "translation", **base)
        if c.translation_depth_ratio > 0 and last.median_depth > 0 and \
                trans > c.translation_depth_ratio * last.median_depth:
            return KeyframeDecision(True, "translation_depth", **base)
        if c.min_rotation_deg > 0 and rot > c.min_rotation_deg:
            return KeyframeDecision(True, "rotation", **base)
        overlap = self._overlap(est, valid, last) if c.min_overlap > 0 else 1.0
        base["overlap"] = overlap
        if overlap < c.min_overlap:
            return KeyframeDecision(True, "overlap", **base)
        if c.max_interval_s > 0 and (est.stamp_ns - last.stamp_ns) * 1e-9 > c.max_interval_s:
            return KeyframeDecision(True, "interval", **base)
        return KeyframeDecision(False, "no_trigger", **base)

    def _overlap(self, est: FrameEstimate, valid: np.ndarray, last: _Last) -> float:
        """Fraction of the frame's valid points seen by the last keyframe with agreeing depth."""
        pts = est.points[valid]
        if len(pts) > _OVERLAP_SAMPLES:
            pts = pts[np.linspace(0, len(pts) - 1, _OVERLAP_SAMPLES).astype(np.intp)]
        q = transform_points(invert_T(last.T_world_cam), pts.astype(np.float64))
        uv, z = project_points(q, last.K)
        h, w = last.valid.shape
        ui = np.rint(uv[:, 0])
        vi = np.rint(uv[:, 1])
        inside = (z > 0) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
        ui = ui[inside].astype(np.intp)
        vi = vi[inside].astype(np.intp)
        zk = last.points_cam[vi, ui, 2]
        ok = last.valid[vi, ui] & (np.abs(z[inside] - zk) <= self.config.depth_agreement * zk)
        return float(np.count_nonzero(ok)) / max(1, len(pts))
