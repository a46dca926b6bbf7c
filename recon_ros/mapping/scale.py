"""Metric scale of the frontend world: none | depth | odometry | fixed.

The scale ``s`` is metres per frontend unit: ``metric = s * frontend``.

* ``depth``: each frame gives one sample, the median over confident pixels with valid
  measured depth of ``measured depth / predicted depth`` (predicted = z of the frontend's
  points in its camera frame). The estimate is the median of the last ``window`` samples;
  its uncertainty is the standard error of that median from the MAD,
  ``1.2533 * 1.4826 * MAD / sqrt(n)``. Medians at both stages make it robust to outlier
  pixels (bad depth, sky, reflections) and to outlier frames.
* ``odometry``: each frame whose odometry position moved by at least ``min_motion_m`` since
  the previous sample's frame gives the sample ``|dt_odometry| / |dt_frontend|`` (distances
  are invariant to the unknown rotation between the two worlds); same median and error.
* ``fixed``: the configured value, uncertainty 0.
* ``none``: 1 (the frontend's own units; metric for the RGB-D frontend).
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from recon_ros.geometry.transforms import invert_T, transform_points
from recon_ros.mapping.frame import Frame, FrameEstimate
from recon_ros.mapping.keyframes import mask_to_model
from recon_ros.mapping.schema import ScaleConfig

log = logging.getLogger(__name__)

_MAD_TO_SIGMA = 1.4826
_MEDIAN_EFFICIENCY = 1.2533  # sqrt(pi / 2): standard error of a median vs a mean


@dataclass
class ScaleState:
    """The current scale estimate."""

    mode: str
    scale: float  # metres per frontend unit
    uncertainty: float  # standard error of ``scale`` (inf while unknown)
    samples: int
    known: bool  # False while no estimate exists yet (scale is then 1) and in mode none


def robust_median(samples: np.ndarray) -> tuple[float, float]:
    """(median, MAD-based standard error of the median) of 1-D samples."""
    x = np.asarray(samples, dtype=np.float64)
    med = float(np.median(x))
    if len(x) < 2:
        return med, float("inf")
    mad = float(np.median(np.abs(x - med)))
    return med, _MEDIAN_EFFICIENCY * _MAD_TO_SIGMA * mad / np.sqrt(len(x))


class ScaleEstimator:
    """Running metric-scale estimate (see the module docstring)."""

    def __init__(self, config: Optional[ScaleConfig] = None) -> None:
        self.config = config if config is not None else ScaleConfig()
        self.reset()

    @property
    def mode(self) -> str:
        return self.config.mode

    def reset(self) -> None:
        self._samples: deque = deque(maxlen=self.config.window)
        self._last_odom: Optional[tuple[np.ndarray, np.ndarray]] = None  # (odom pos, world pos)
        self._skipped = 0
        self._state: Optional[ScaleState] = None

    def update(self, est: FrameEstimate, frame: Optional[Frame] = None) -> ScaleState:
        """Add the sample of one (final) estimate, if it gives one; return the current state."""
        frame = frame if frame is not None else est.frame
        mode = self.config.mode
        if est.provisional or not est.tracking_ok:
            return self.state()
        sample: Optional[float] = None
        if mode == "depth":
            sample = self.depth_sample(est, frame)
        elif mode == "odometry":
            sample = self._odometry_sample(est, frame)
        if sample is not None:
            self._samples.append(sample)
            self._state = None
        elif mode in ("depth", "odometry"):
            self._skipped += 1
        return self.state()

    def state(self) -> ScaleState:
        if self._state is not None:
            return self._state
        mode = self.config.mode
        if mode == "fixed":
            st = ScaleState(mode, float(self.config.fixed_value), 0.0, 0, True)
        elif mode == "none" or not self._samples:
            st = ScaleState(mode, 1.0, float("inf"), 0, False)
        else:
            med, err = robust_median(np.array(self._samples))
            st = ScaleState(mode, med, err, len(self._samples), True)
        self._state = st
        return st

    def stats(self) -> dict:
        st = self.state()
        return dict(mode=st.mode, scale=st.scale, uncertainty=st.uncertainty, samples=st.samples,
                    known=st.known, skipped=self._skipped)

    # -- samples -----------------------------------------------------------------------------
    def depth_sample(self, est: FrameEstimate, frame: Optional[Frame]) -> Optional[float]:
        """Median ratio of measured to predicted depth over this frame's usable pixels."""
        if frame is None or frame.depth is None:
            return None
        pm = est.pixel_map
        W, H = pm.model_size
        u = np.rint((np.arange(W) + 0.5 - pm.tx) / pm.sx - 0.5).astype(np.intp)
        v = np.rint((np.arange(H) + 0.5 - pm.ty) / pm.sy - 0.5).astype(np.intp)
        dh, dw = frame.depth.shape
        uin = (u >= 0) & (u < dw)
        vin = (v >= 0) & (v < dh)
        measured = np.full((H, W), np.nan, dtype=np.float64)
        measured[np.ix_(vin, uin)] = np.asarray(frame.depth)[np.ix_(v[vin], u[uin])]
        pred = transform_points(invert_T(est.T_world_cam), est.points.astype(np.float64))[..., 2]
        ok = est.valid_mask() & np.isfinite(measured) & (measured > 0) & (pred > 0)
        ok &= est.confidence >= self.config.min_confidence
        if frame.mask is not None:
            ok &= ~mask_to_model(frame.mask, pm)
        n = int(np.count_nonzero(ok))
        if n < self.config.min_valid_pixels:
            log.debug("scale: frame %d has %d usable depth pixels (< %d)", est.index, n,
                      self.config.min_valid_pixels)
            return None
        return float(np.median(measured[ok] / pred[ok]))

    def _odometry_sample(self, est: FrameEstimate, frame: Optional[Frame]) -> Optional[float]:
        if frame is None or frame.T_odom_cam is None:
            return None
        p_odom = np.asarray(frame.T_odom_cam, dtype=np.float64)[:3, 3]
        p_world = np.asarray(est.T_world_cam, dtype=np.float64)[:3, 3]
        if self._last_odom is None:
            self._last_odom = (p_odom, p_world)
            return None
        d_odom = float(np.linalg.norm(p_odom - self._last_odom[0]))
        if d_odom < max(self.config.min_motion_m, 1e-9):
            return None
        d_world = float(np.linalg.norm(p_world - self._last_odom[1]))
        self._last_odom = (p_odom, p_world)
        if d_world <= 1e-12:
            return None
        return d_odom / d_world
