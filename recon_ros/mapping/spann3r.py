"""The ``spann3r`` frontend: the Spann3R memory loop turned into posed pointmaps.

Each frame goes through :class:`recon_ros.model.stream.Spann3RStream`. Its pointmaps are in
the first frame's camera frame (the ``recon_world``), at an unknown scale. The camera of every
frame is recovered from its pointmap as the reference demo does: a focal length (from
CameraInfo when given, else by Weiszfeld on the first frame's pointmap, which lies in its own
camera frame) and a pose by PnP-RANSAC on the confident pixels.

Latency: frame t's final pointmap exists once frame t+1 has been pushed, so ``step`` returns
the estimate of the previous frame; ``flush`` returns the last one. With ``provisional`` on,
each step also returns the newest frame's head-2 pointmap flagged ``provisional=True``.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np

from recon_ros.errors import UserInputError
from recon_ros.geometry.pointmap import estimate_focal, estimate_pose_pnp, intrinsics_from_focal
from recon_ros.mapping.frame import Frame, FrameEstimate
from recon_ros.mapping.frontend import LOST, Frontend, TrackingStatus
from recon_ros.mapping.keyframes import mask_to_model
from recon_ros.mapping.schema import FrontendConfig

log = logging.getLogger(__name__)


class Spann3RFrontend(Frontend):
    """Spann3R as a frontend. ``model`` is a loaded :class:`Spann3RNet` (see
    :func:`recon_ros.model.checkpoint.load_model`)."""

    name = "spann3r"
    metric = False

    def __init__(self, model, model_cfg, frontend_cfg: Optional[FrontendConfig] = None,
                 stream=None) -> None:
        """``stream`` replaces the Spann3RStream built from ``model`` (anything with its
        push/flush/reset/stats methods)."""
        self.cfg = frontend_cfg or FrontendConfig()
        if stream is None:
            from recon_ros.model.stream import Spann3RStream
            size = int(model_cfg.image_size)
            stream = Spann3RStream(model, runtime=model_cfg.runtime, memory=model_cfg.memory,
                                   target_wh=(size, size), provisional=self.cfg.provisional)
        self.stream = stream
        self.reset()

    def reset(self) -> None:
        self.stream.reset()
        self._pending: dict[int, Frame] = {}
        self._K_model: Optional[np.ndarray] = None
        self._last_pose = np.eye(4)
        self._count = 0
        self._pnp_failures = 0
        self._ms = 0.0
        self._status = TrackingStatus()

    def stats(self) -> dict:
        s = self.stream.stats()
        return {
            "frames": self._count,
            "memory_tokens": s.memory_tokens,
            "working_memory_frames": s.working_memory_frames,
            "long_term_tokens": s.long_term_tokens,
            "memory_skips": s.skips,
            "memory_prunes": s.prunes,
            "pnp_failures": self._pnp_failures,
            "last_step_ms": round(self._ms, 3),
            "focal_model_px": None if self._K_model is None else float(self._K_model[0, 0]),
        }

    def step(self, frame: Frame) -> list[FrameEstimate]:
        frame.validate()
        t0 = time.perf_counter()
        index = self._count
        res = self.stream.push(frame.rgb)
        self._pending[index] = frame
        self._count += 1
        out: list[FrameEstimate] = []
        if res is not None:
            out.append(self._estimate(res.final))
            if res.provisional is not None:
                out.append(self._estimate(res.provisional))
        self._ms = (time.perf_counter() - t0) * 1e3
        return out

    def flush(self) -> list[FrameEstimate]:
        last = self.stream.flush()
        out = [] if last is None else [self._estimate(last)]
        self._pending.clear()
        return out

    # ------------------------------------------------------------------ helpers
    def _update_status(self, ok: bool, stamp_ns: int) -> None:
        """Lost while PnP fails on the model's pointmaps; the first good pose after that is
        ``relocalized`` (the memory keeps the world frame, so the pose is in the same map)."""
        st = self._status
        if not ok:
            self._status = st.lose("PnP on the model's pointmap failed", stamp_ns)
        else:
            self._status = st.found("PnP succeeded again" if st.state == LOST else "",
                                    relocalized=st.state == LOST)

    def _confident(self, conf: np.ndarray, finite: np.ndarray) -> np.ndarray:
        q = self.cfg.pose_confidence_percentile
        if not np.any(finite):
            return finite
        thr = np.percentile(conf[finite], q) if q > 0 else -np.inf
        return finite & (conf >= thr)

    def _intrinsics(self, out, frame: Frame, confident: np.ndarray) -> np.ndarray:
        if self._K_model is not None:
            return self._K_model
        h, w = out.pts3d.shape[:2]
        if self.cfg.use_camera_info and frame.K is not None and out.pixel_map is not None:
            K = out.pixel_map.K_to_model(frame.K)
            log.info("spann3r: intrinsics from the camera: fx=%.1f fy=%.1f (model pixels)", K[0, 0], K[1, 1])
        else:
            if out.index != 0:
                raise UserInputError("the focal length must be estimated on the first frame")
            f = estimate_focal(out.pts3d, mask=confident)
            K = intrinsics_from_focal(f, w, h)
            log.info("spann3r: focal estimated from the first pointmap: %.1f model pixels", f)
        self._K_model = np.asarray(K, dtype=np.float64)
        return self._K_model

    def _estimate(self, out) -> FrameEstimate:
        frame = self._pending.pop(out.index, None) if not out.provisional else self._pending.get(out.index)
        if frame is None:
            raise RuntimeError(f"no input frame recorded for model output {out.index}")
        finite = np.all(np.isfinite(out.pts3d), axis=-1) & np.isfinite(out.conf)
        confident = self._confident(out.conf, finite)
        K = self._intrinsics(out, frame, confident)
        ok = True
        if out.index == 0:
            T = np.eye(4)  # the first camera defines the world frame
        else:
            pnp = estimate_pose_pnp(out.pts3d, K, mask=confident)
            if pnp.success:
                T = pnp.T_world_cam
            else:
                ok = False
                T = self._last_pose.copy()
                if not out.provisional:
                    self._pnp_failures += 1
                    log.warning("spann3r: PnP failed for frame %d; keeping the previous pose", frame.index)
        if ok and not out.provisional:
            self._last_pose = T
        if not out.provisional:
            self._update_status(ok, frame.stamp_ns)
        valid = finite.copy()
        if frame.mask is not None and out.pixel_map is not None:
            valid &= ~mask_to_model(frame.mask, out.pixel_map)
        est = FrameEstimate(
            stamp_ns=frame.stamp_ns, index=frame.index if frame.index >= 0 else out.index,
            points=out.pts3d, confidence=out.conf, colors=out.rgb, T_world_cam=T, K_model=K.copy(),
            pixel_map=out.pixel_map, valid=valid, provisional=out.provisional, frame=frame,
            tracking_ok=ok)
        return est
