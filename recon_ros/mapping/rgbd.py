"""The ``rgbd`` frontend: metric pointmaps from a depth camera, poses by frame-to-model tracking.

No learned weights. Each frame's pointmap is its depth image back-projected with K; its pose
comes from :func:`recon_ros.mapping.tracking.track` against the last few *tracking keyframes*
(vertex/normal/intensity pyramids at tracking resolution), starting from a constant-velocity
prediction.

Tracking states (:class:`~recon_ros.mapping.frontend.TrackingStatus`):

* ``tracking``: the frame was aligned (checks: matched fraction, residual, jump from the
  prediction). Every tracking keyframe also enters the relocalization database
  (:class:`~recon_ros.mapping.relocalize.KeyframeDatabase`).
* After a *gap* (a stamp gap above ``tracking.gap_s`` or :meth:`RGBDFrontend.notify_gap`):
  when the gap is at most ``tracking.gap_s`` the next frame is first tracked as usual from the
  constant-velocity prediction across the gap (a pause in processing does not stop the
  camera: a moving one is where its motion led, a still one where it was); if that fails, or
  after a longer gap, it is relocalized, then aligned from the last good pose with a widened
  search (``tracking.gap_search_scale``).
* ``lost``: alignment failed (or the depth is unusable) and relocalization found nothing. The
  last good pose is held in the estimate, which is flagged ``tracking_ok = False``: it is not
  fused, keyframed or published. Every lost frame first tries the widened alignment from the
  held pose, then relocalization against *all* keyframes of the database.
* ``relocalized``: a lost frame (or one after a gap) was found again: retrieval + PnP-RANSAC,
  refined by ICP against the matched keyframe with the tracking checks. Tracking then
  continues from that keyframe.

Confidence of a valid pixel is ``1 + (2 m / z)^2``: depth noise of structured-light and
time-of-flight cameras grows roughly with the square of the distance, and the offset of 1
keeps the scale comparable with Spann3R's confidences (>= 1).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections import OrderedDict, deque
from typing import Callable, Optional

import numpy as np

from recon_ros.errors import UserInputError
from recon_ros.geometry.camera import PixelMap, backproject_depth, scale_K
from recon_ros.geometry.transforms import invert_T, matrix_to_rotvec, rotvec_to_matrix, transform_points
from recon_ros.mapping.frame import Frame, FrameEstimate
from recon_ros.mapping.frontend import LOST, Frontend, TrackingStatus
from recon_ros.mapping.keyframes import mask_to_model
from recon_ros.mapping.relocalize import DatabaseEntry, KeyframeDatabase
from recon_ros.mapping.schema import NOISE_POWER, MappingConfig, TrackingConfig
from recon_ros.mapping.tracking import (PyramidLevel, TrackResult, build_pyramid, downsample_depth,
                                        downsample_image, pose_delta, track)

log = logging.getLogger(__name__)

CONF_REF_DEPTH_M = 2.0
# tracking.photometric_ratio compares a frame's intensity residual with the median of this many
# recently tracked frames (once a sixth of them are there), and never fails one below this share
# of tracking.max_photometric_rms (a moving object in view raises the residual of a good pose).
PHOTOMETRIC_HISTORY = 30
PHOTOMETRIC_FLOOR = 0.5


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
        self.database = KeyframeDatabase(self.config.relocalization)
        self.reset()

    # -- Frontend interface ------------------------------------------------------------------
    def reset(self) -> None:
        self._model: list[tuple[np.ndarray, list[PyramidLevel]]] = []  # what frames track against
        self._own: list[tuple[np.ndarray, list[PyramidLevel]]] = []  # newest tracking keyframes
        self._T_last: Optional[np.ndarray] = None  # last good pose
        self._velocity = np.zeros(6)  # (translation, rotation vector) per second, last good step
        self._stamp_last: Optional[int] = None  # stamp of the last good frame
        self._stamp_prev: Optional[int] = None  # stamp of the last frame seen
        self._gap_pending = False
        self._last: Optional[TrackResult] = None
        self._status = TrackingStatus()
        self._counts = dict(frames=0, tracked=0, failures=0, skipped=0, consecutive_failures=0,
                            model_keyframes_taken=0, gaps=0, gap_recoveries=0, relocalizations=0,
                            lost_frames=0, segments=0, segment_joins=0)
        self._time_s = 0.0
        self._next_kf = 0
        self.database.reset()
        self._segment_of: dict[int, int] = {}  # database keyframe -> segment it was tracked in
        self._unjoined: set[int] = set()  # segments started after a loss, not yet joined
        self._joins: list[tuple[int, int, np.ndarray]] = []
        self._map_ids: frozenset[int] = frozenset()  # database keyframes of a loaded map
        self._map_models: OrderedDict[int, tuple[np.ndarray, list[PyramidLevel]]] = OrderedDict()
        self._deferred: list[Callable[[], None]] = []  # left by a step for finish_step()
        self._photometric = deque(maxlen=PHOTOMETRIC_HISTORY)  # intensity RMS of tracked frames

    @property
    def _noise_power(self) -> float:
        """How the depth noise grows with depth (tracking weights), from the map's noise model."""
        if not self.config.tracking.noise_weighting:
            return 0.0
        return NOISE_POWER[self.config.map.depth_noise_model]

    @property
    def frozen(self) -> bool:
        """Localization mode: the database (the loaded map) takes no new keyframes."""
        return self.config.mapping.mode == "localization"

    def export_map(self) -> Optional[dict[str, np.ndarray]]:
        self.finish_step()
        return self.database.export_arrays()

    def adopt_map(self, arrays: dict[str, np.ndarray]) -> None:
        """Start over inside a saved map: its keyframes form the relocalization database, and
        the first frames are relocalized in it (no new world at the first frame). Until one
        is, frames are lost."""
        database = KeyframeDatabase(self.config.relocalization)
        database.restore(arrays)  # checked before anything changes
        self.reset()
        self.database = database
        self._map_ids = frozenset(e.id for e in self.database.entries())
        self._next_kf = max(self._map_ids, default=-1) + 1

    def notify_gap(self) -> None:
        self._gap_pending = True

    def finish_step(self) -> None:
        """Index the step's new keyframe for relocalization (features, bag of words): the
        frame's pose does not wait for it."""
        while self._deferred:
            self._deferred.pop(0)()

    def stats(self) -> dict:
        out: dict = dict(self._counts)
        out["model_keyframes"] = len(self._model)
        out["mean_step_ms"] = 1000.0 * self._time_s / max(1, self._counts["frames"])
        if self._last is not None:
            out["inlier_fraction"] = self._last.inlier_fraction
            out["rms_m"] = self._last.rms_m
        out.update(self.database.stats())
        return out

    def step(self, frame: Frame) -> list[FrameEstimate]:
        t0 = time.perf_counter()
        try:
            self.finish_step()  # the previous step's, when nobody called it
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
        gap = self._take_gap(frame.stamp_ns)
        if self._T_last is None and self._map_ids:  # a loaded map: find the camera in it
            if valid_frac < tc.min_valid_fraction:
                return [self._fail(frame, depth, f"only {100 * valid_frac:.1f}% valid depth")]
            return [self._recover(frame, depth, pyr, None)]
        if self._T_last is None:
            if valid_frac < tc.min_valid_fraction:
                self._counts["skipped"] += 1
                log.warning("rgbd: frame %d skipped before initialisation: only %.1f%% valid depth",
                            frame.index, 100 * valid_frac)
                return []
            T = np.eye(4)
            self._accept(T, frame.stamp_ns)
            self._add_model(T, pyr, frame, depth)
            return [self._estimate(frame, depth, T, True)]

        if valid_frac < tc.min_valid_fraction:
            return [self._fail(frame, depth, f"only {100 * valid_frac:.1f}% valid depth")]
        if gap is not None and self._status.state != LOST:
            est = self._across_gap(frame, depth, pyr, gap)
            if est is not None:
                return [est]
            self._velocity = np.zeros(6)  # recovery starts from the last good pose
        if self._status.state == LOST or gap is not None:
            return [self._recover(frame, depth, pyr, gap)]
        T_pred = self._predict(frame.stamp_ns)
        res = track(pyr, self._model, T_pred, tc, self._noise_power)
        reason = self._failure_reason(res, T_pred)
        if reason is not None and not np.allclose(T_pred, self._T_last):
            res2 = track(pyr, self._model, self._T_last, tc, self._noise_power)  # retry without the velocity prior
            reason2 = self._failure_reason(res2, self._T_last)
            if reason2 is None:
                res, reason = res2, None
        self._last = res
        if reason is not None:
            return [self._recover(frame, depth, pyr, None, reason)]
        return [self._tracked(frame, depth, pyr, res)]

    def _tracked(self, frame: Frame, depth: np.ndarray, pyr: list[PyramidLevel], res: TrackResult,
                 status: Optional[TrackingStatus] = None) -> FrameEstimate:
        """Accept a tracked pose; take a tracking keyframe when the view moved on."""
        tc = self.config.tracking
        T = res.T_world_cam
        self._accept(T, frame.stamp_ns)
        if np.isfinite(res.photometric_rms):
            self._photometric.append(float(res.photometric_rms))
        self._status = status if status is not None else self._status.found()
        T_ref = self._model[-1][0]
        dt, dr = pose_delta(T_ref, T)
        if (dt > tc.ref_translation_m or dr > tc.ref_rotation_deg
                or res.inlier_fraction < tc.ref_min_inlier_fraction):
            self._add_model(T, pyr, frame, depth)
        return self._estimate(frame, depth, self._T_last, True)  # moved if its segment was joined

    def _take_gap(self, stamp_ns: int) -> Optional[float]:
        """The gap (seconds) before this frame when processing paused, else None."""
        prev, self._stamp_prev = self._stamp_prev, stamp_ns
        gap = None
        if self._gap_pending:
            gap = (stamp_ns - prev) * 1e-9 if prev is not None else 0.0
        elif prev is not None and (stamp_ns - prev) * 1e-9 > self.config.tracking.gap_s:
            gap = (stamp_ns - prev) * 1e-9
        self._gap_pending = False
        if gap is not None and self._T_last is not None:
            self._counts["gaps"] += 1
        return gap

    def _across_gap(self, frame: Frame, depth: np.ndarray, pyr: list[PyramidLevel], gap: float
                    ) -> Optional[FrameEstimate]:
        """The first frame after a gap of at most ``tracking.gap_s``, tracked with the normal
        search and checks from the constant-velocity prediction across the gap. A pause in
        processing rarely stops the camera: the widened search from the last good pose can
        settle on a wrong pose that overlaps the model better than the true one does (a
        camera turning towards unseen parts of a room of planes). None when it fails."""
        tc = self.config.tracking
        if not (0.0 < gap <= tc.gap_s and np.any(self._velocity)):
            return None
        T_pred = self._predict(frame.stamp_ns)
        res = track(pyr, self._model, T_pred, tc, self._noise_power)
        if self._failure_reason(res, T_pred) is not None:
            return None
        self._last = res
        self._counts["gap_recoveries"] += 1
        log.info("rgbd: frame %d tracked across a %.2f s gap from the motion before it", frame.index, gap)
        return self._tracked(frame, depth, pyr, res, self._status.found(
            f"tracked across a {gap:.2f} s gap from the motion before it"))

    def _widened(self) -> TrackingConfig:
        """Tracking parameters for a frame without a usable prediction (after a gap or a loss)."""
        tc = self.config.tracking
        k = tc.gap_search_scale
        return dataclasses.replace(
            tc, max_correspondence_m=tc.max_correspondence_m * k,
            iterations_coarse=int(round(tc.iterations_coarse * k)),
            iterations_finest=int(round(tc.iterations_finest * k)),
            max_jump_m=tc.max_jump_m * k, max_jump_deg=tc.max_jump_deg * k)

    def _recover(self, frame: Frame, depth: np.ndarray, pyr: list[PyramidLevel], gap: Optional[float],
                 failure: Optional[str] = None) -> FrameEstimate:
        """A frame without a usable prediction (after a gap, while lost, or when tracking just
        failed): relocalization against every keyframe first, then (unless tracking from the
        last good pose already failed on this frame) the widened alignment from the last good
        pose, accepted only when most of the frame matches (a wrong alignment in a room of
        planes can pass the normal checks)."""
        why = []
        rc = self.config.relocalization
        if rc.enabled and len(self.database):
            rel = self.database.relocalize(frame.rgb, np.asarray(frame.K, float),
                                           verify=lambda T, e: self._verify(pyr, T, e))
            if rel.success:
                return self._relocalized(frame, depth, pyr, rel.T_world_cam, rel.reason, rel.entry)
            why.append(f"relocalization failed ({rel.reason}, {rel.ms:.0f} ms)")
        if failure is None and self._T_last is None:
            failure = "not yet located in the loaded map"
        elif failure is None:
            tc = self.config.tracking
            wide = self._widened()
            res = track(pyr, self._model, self._T_last, wide, self._noise_power)
            self._last = res
            failure = self._failure_reason(res, self._T_last, wide)
            if failure is None and res.inlier_fraction < tc.recover_min_inlier_fraction:
                failure = (f"{100 * res.inlier_fraction:.0f}% of points matched from the last good "
                           f"pose (< {100 * tc.recover_min_inlier_fraction:.0f}%)")
            if failure is None:
                if gap is not None and self._status.state != LOST:
                    self._counts["gap_recoveries"] += 1
                    log.info("rgbd: frame %d re-initialised after a %.2f s gap", frame.index, gap)
                    return self._tracked(frame, depth, pyr, res, self._status.found(
                        f"re-initialised after a {gap:.2f} s gap"))
                return self._relocalized(frame, depth, pyr, res.T_world_cam,
                                         "found again near the last good pose", None)
        why.insert(0, failure if gap is None else f"after a {gap:.2f} s gap: {failure}")
        if self._segment_due(frame.stamp_ns):
            return self._start_segment(frame, depth, pyr, "; ".join(why))
        return self._fail(frame, depth, "; ".join(why))

    def _verify(self, pyr: list[PyramidLevel], T_pnp: np.ndarray, entry: DatabaseEntry
                ) -> tuple[Optional[np.ndarray], Optional[str]]:
        """Dense check of a PnP pose: ICP against the candidate keyframe, tracking's checks."""
        rc = self.config.relocalization
        res = track(pyr, [self._entry_model(entry)], T_pnp, self._widened(), self._noise_power)
        strict = dataclasses.replace(self.config.tracking, max_jump_m=rc.max_refinement_m,
                                     max_jump_deg=rc.max_refinement_deg)
        reason = self._failure_reason(res, T_pnp, strict)
        return (res.T_world_cam, None) if reason is None else (None, "ICP: " + reason)

    def _entry_model(self, entry: DatabaseEntry) -> tuple[np.ndarray, list[PyramidLevel]]:
        p = entry.payload
        gray = p["gray"].astype(np.float32) * np.float32(1.0 / 255.0)
        pyr = build_pyramid(p["depth"], gray, p["K"], 1, self.config.tracking.pyramid_levels)
        return entry.T_world_cam, pyr

    def _relocalized(self, frame: Frame, depth: np.ndarray, pyr: list[PyramidLevel], T: np.ndarray,
                     how: str, entry: Optional[DatabaseEntry]) -> FrameEstimate:
        lost_s = ((frame.stamp_ns - self._status.lost_since_ns) * 1e-9
                  if self._status.lost_since_ns is not None else 0.0)
        self._counts["relocalizations"] += 1
        if self._T_last is None:
            log.info("rgbd: frame %d located in the loaded map (%s)", frame.index, how)
        else:
            log.warning("rgbd: frame %d relocalized (%s) after %d lost frames / %.2f s",
                        frame.index, how, self._status.lost_frames, lost_s)
        if entry is not None:
            self._own = [self._entry_model(entry)]
            # the pose is in the world of the keyframe's segment: tracking goes on there
            self._status = dataclasses.replace(self._status, segment=self._segment_of.get(entry.id, 0))
        self._stamp_last = None  # no velocity from the held pose to this one
        self._velocity = np.zeros(6)
        self._accept(T, frame.stamp_ns)
        self._status = self._status.found(how, relocalized=True)
        self._add_model(T, pyr, frame, depth)
        return self._estimate(frame, depth, self._T_last, True)

    # -- segments ------------------------------------------------------------------------------
    def _segment_due(self, stamp_ns: int) -> bool:
        """Lost for ``relocalization.new_segment_after_s`` (and not localizing in a frozen map)."""
        after = self.config.relocalization.new_segment_after_s
        since = self._status.lost_since_ns
        return (after > 0 and not self.frozen and self._status.state == LOST and since is not None
                and (stamp_ns - since) * 1e-9 >= after)

    def _start_segment(self, frame: Frame, depth: np.ndarray, pyr: list[PyramidLevel], why: str) -> FrameEstimate:
        """Map on from this frame in a new segment anchored at the last good pose (a guess:
        its true place is found when the segment is joined)."""
        lost_s = (frame.stamp_ns - self._status.lost_since_ns) * 1e-9
        seg = max([self._status.segment, *self._segment_of.values(), *self._unjoined]) + 1
        self._unjoined.add(seg)
        T = self._T_last.copy() if self._T_last is not None else np.eye(4)
        self._counts["segments"] += 1
        log.warning("rgbd: frame %d starts map segment %d after %.1f s lost (%s)", frame.index, seg, lost_s, why)
        self._own, self._model = [], []
        self._stamp_last = None
        self._velocity = np.zeros(6)
        self._accept(T, frame.stamp_ns)
        self._status = dataclasses.replace(self._status.found(f"new segment {seg} after {lost_s:.1f} s lost"),
                                           segment=seg)
        self._add_model(T, pyr, frame, depth)
        return self._estimate(frame, depth, self._T_last, True)

    def _try_join(self, frame: Frame, pyr: list[PyramidLevel], T: np.ndarray) -> None:
        """Relocalize a new keyframe among the keyframes of the other segments. A match joins
        the two segments: an unjoined current segment moves into the matched one's world; a
        matched unjoined segment (left behind when tracking was found again elsewhere) moves
        into the current one's."""
        seg = self._status.segment
        rel = self.database.relocalize(frame.rgb, np.asarray(frame.K, float),
                                       verify=lambda Tp, e: self._verify(pyr, Tp, e),
                                       allowed=lambda i: self._segment_of.get(i, 0) != seg)
        if not rel.success:
            return
        other = self._segment_of.get(rel.keyframe_id, 0)
        if seg in self._unjoined:  # move the current segment (and the tracker) into the other's world
            moved, target, C = seg, other, rel.T_world_cam @ invert_T(T)
        elif other in self._unjoined:  # move the other segment into the current world
            moved, target, C = other, seg, T @ invert_T(rel.T_world_cam)
        else:
            return
        for e in self.database.entries():
            if self._segment_of.get(e.id, 0) == moved:
                e.T_world_cam = C @ e.T_world_cam
                self._segment_of[e.id] = target
        if moved == seg:
            n_own = sum(1 for m in self._model if any(m is o for o in self._own))  # the model's tail
            self._own = [(C @ Tm, p) for Tm, p in self._own]
            self._model = self._model[:len(self._model) - n_own] + self._own[len(self._own) - n_own:]
            self._T_last = C @ self._T_last
            self._status = dataclasses.replace(self._status, segment=target)
        self._unjoined.discard(moved)
        self._joins.append((moved, target, C))
        self._counts["segment_joins"] += 1
        log.warning("rgbd: map segment %d joined segment %d at frame %d (%s)", moved, target, frame.index,
                    rel.reason)

    def take_segment_joins(self) -> list[tuple[int, int, np.ndarray]]:
        out, self._joins = self._joins, []
        return out

    def _failure_reason(self, res: TrackResult, T_pred: np.ndarray,
                        tc: Optional[TrackingConfig] = None) -> Optional[str]:
        tc = tc if tc is not None else self.config.tracking
        if res.inlier_fraction < tc.min_inlier_fraction:
            return f"{100 * res.inlier_fraction:.0f}% of points matched (< {100 * tc.min_inlier_fraction:.0f}%)"
        if not res.rms_m <= tc.max_residual_m:
            return f"residual {res.rms_m:.3f} m > {tc.max_residual_m} m"
        if tc.photometric_weight > 0 and res.photometric_rms > tc.max_photometric_rms:
            return f"intensity residual {res.photometric_rms:.3f} > {tc.max_photometric_rms}"
        if (tc.photometric_weight > 0 and tc.photometric_ratio > 0
                and len(self._photometric) >= PHOTOMETRIC_HISTORY // 6):
            typical = float(np.median(self._photometric))
            limit = max(tc.photometric_ratio * typical, PHOTOMETRIC_FLOOR * tc.max_photometric_rms)
            if res.photometric_rms > limit:
                return (f"intensity residual {res.photometric_rms:.3f} > {tc.photometric_ratio:g} x "
                        f"{typical:.3f}, the recent tracked frames' median")
        jt, jr = pose_delta(T_pred, res.T_world_cam)
        if jt > tc.max_jump_m or jr > tc.max_jump_deg:
            return f"pose jumped {jt:.2f} m / {jr:.1f} deg from its prediction"
        return None

    def _fail(self, frame: Frame, depth: np.ndarray, reason: str) -> FrameEstimate:
        self._counts["failures"] += 1
        self._counts["consecutive_failures"] += 1
        self._counts["lost_frames"] += 1
        self._velocity = np.zeros(6)
        self._status = self._status.lose(reason, frame.stamp_ns)
        n = self._status.lost_frames
        if n <= 3 or n % 30 == 0:
            log.warning("rgbd: tracking lost on frame %d (%s); %d lost frames", frame.index, reason, n)
        held = self._T_last if self._T_last is not None else np.eye(4)  # never located: no pose
        return self._estimate(frame, depth, held, False)

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
        if not 0.0 < dt <= self.config.tracking.gap_s:
            return self._T_last.copy()
        return self._T_last @ _motion(self._velocity * dt)

    def _add_model(self, T: np.ndarray, pyr: list[PyramidLevel], frame: Frame, depth: np.ndarray) -> None:
        """Take this frame as a tracking keyframe. The model is the newest of them, preceded by
        the loaded map's keyframes that see the same part of the room (when a map was loaded),
        so that frames are tracked against the saved map rather than drifting from it."""
        tc = self.config.tracking
        self._own.append((T.copy(), pyr))
        self._counts["model_keyframes_taken"] += 1
        del self._own[:-tc.model_keyframes]
        anchors = self._map_anchors(T, tc.model_keyframes - 1)
        self._model = anchors + self._own[-max(1, tc.model_keyframes - len(anchors)):]
        if self.config.relocalization.enabled and not self.frozen:
            lvl = pyr[0]
            payload = {"depth": np.ascontiguousarray(lvl.vertices[..., 2]),
                       "gray": np.rint(lvl.intensity * 255.0).astype(np.uint8), "K": lvl.K}
            index = functools.partial(self.database.add, self._next_kf, frame.stamp_ns, T.copy(), frame.rgb,
                                      depth, np.asarray(frame.K, float), payload)
            self._segment_of[self._next_kf] = self._status.segment
            self._next_kf += 1
            if self._unjoined:  # a join moves this frame's pose: before it goes out
                index()
                if len(self.database) > 1:
                    self._try_join(frame, pyr, T)
            else:
                self._deferred.append(index)

    def _map_anchors(self, T: np.ndarray, k: int) -> list[tuple[np.ndarray, list[PyramidLevel]]]:
        """Up to ``k`` tracking models of loaded-map keyframes near pose ``T`` (closest first,
        within ``relocalization.map_radius_m`` and ``map_angle_deg``)."""
        rc = self.config.relocalization
        if k <= 0 or not self._map_ids or rc.map_radius_m <= 0 or self._status.segment in self._unjoined:
            return []  # (an unjoined segment's poses are not in the map's world)
        near = []
        for e in self.database.entries():
            if e.id not in self._map_ids:
                continue
            dt, dr = pose_delta(e.T_world_cam, T)
            if dt <= rc.map_radius_m and dr <= rc.map_angle_deg:
                near.append((dt / rc.map_radius_m + dr / max(rc.map_angle_deg, 1e-6), e.id))
        out = []
        for _, kf_id in sorted(near)[:k]:
            model = self._map_models.pop(kf_id, None) or self._entry_model(self.database.entry(kf_id))
            self._map_models[kf_id] = model  # most recently used last
            out.append(model)
        while len(self._map_models) > 4 * max(1, k):
            self._map_models.popitem(last=False)
        return out

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
