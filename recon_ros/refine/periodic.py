"""Background refinement run periodically against a live :class:`Reconstructor`.

``recon-ros replay --refine`` uses this to run the stages on the schedule of the ROS refiner
node (``schedule.align_period_s`` / ``schedule.refine_period_s``, measured in stream time, so a
replay does what the node would do while the recording plays at its own rate):

* alignment: keyframes with their frontend poses -> :meth:`Refiner.align` -> the corrected
  poses re-anchor the map (:meth:`Reconstructor.apply_corrections`);
* refinement: MVS depth replaces keyframe pointmaps where it passes the checks, then points
  that later views see through (transients) leave the map.

It also keeps a copy of the map as the frontend built it (``before``), so a run can write
before/after maps and trajectories.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

from recon_ros.mapping.fused_map import KeyframeMap
from recon_ros.refine.schema import RefineConfig
from recon_ros.refine.stages import Refiner

log = logging.getLogger(__name__)


@dataclass
class StageRun:
    """One run of a stage, for the summary."""

    stage: str
    stamp_ns: int
    keyframes: int
    seconds: float
    changed: int
    detail: dict = field(default_factory=dict)


class PeriodicRefinement:
    """Runs alignment and depth refinement on a :class:`Reconstructor` when they are due."""

    def __init__(self, cfg: Optional[RefineConfig], schedule: Any, map_cfg: Any = None,
                 transients: bool = True, metric: Optional[bool] = None) -> None:
        self.refiner = Refiner(cfg or RefineConfig())
        # metric frontends (RGB-D) keep every keyframe's scale: None = ask the reconstructor's frontend
        self.metric = metric
        self.schedule = schedule
        self.transients = transients
        self.before = KeyframeMap(map_cfg) if map_cfg is not None else None
        self.runs: list[StageRun] = []
        self._last: dict[str, Optional[int]] = {"align": None, "refine": None}

    def add_keyframes(self, keyframes: list) -> None:
        """Record new keyframes in the frontend-only map."""
        if self.before is not None:
            for kf in keyframes:
                self.before.add_keyframe(kf)

    def _due(self, stage: str, stamp_ns: int) -> bool:
        period = getattr(self.schedule, f"{stage}_period_s")
        if period <= 0:
            return False
        last = self._last[stage]
        if last is None:
            self._last[stage] = stamp_ns  # the first period starts with the stream
            return False
        return stamp_ns - last >= period * 1e9

    def _fix_scale(self, recon: Any) -> None:
        metric = self.metric if self.metric is not None else bool(getattr(recon.frontend, "metric", False))
        acfg = self.refiner.aligner.cfg
        if metric and not acfg.fix_scale:
            self.refiner.aligner.cfg = replace(acfg, fix_scale=True)
            log.info("metric frontend: alignment keeps keyframe scales fixed")

    def step(self, recon: Any, stamp_ns: int, force: bool = False) -> list[StageRun]:
        """Run the stages that are due at stream time ``stamp_ns``; ``force`` (end of stream) runs
        every stage that has a period (a stage with period 0 never runs here)."""
        done = []
        self._fix_scale(recon)
        for stage in ("align", "refine"):
            forced = force and getattr(self.schedule, f"{stage}_period_s") > 0
            if not (self._due(stage, stamp_ns) or forced):
                continue
            kfs = recon.keyframes(frontend_poses=True)
            if len(kfs) < self.schedule.min_keyframes:
                continue
            self._last[stage] = stamp_ns
            t0 = time.perf_counter()
            run = self._align(recon, kfs) if stage == "align" else self._refine(recon, kfs)
            run.stamp_ns, run.seconds = stamp_ns, time.perf_counter() - t0
            log.info("%s over %d keyframes: %d changed in %.2f s %s", stage, run.keyframes, run.changed,
                     run.seconds, run.detail)
            self.runs.append(run)
            done.append(run)
        return done

    def _align(self, recon: Any, kfs: list) -> StageRun:
        res = self.refiner.align(kfs, masks=_masks(kfs))
        # A rejected result still carries the accepted corrections so far (extended to new
        # keyframes from their nearest earlier keyframe), so the map stays consistent.
        moved = recon.apply_corrections({kf.stamp_ns: res.poses[kf.id] for kf in kfs if kf.id in res.poses})
        detail = {"reason": res.reason, "cost_before": res.cost_before, "cost_after": res.cost_after,
                  "reproj_median_before": res.reproj_median_before, "reproj_median_after": res.reproj_median_after}
        return StageRun("align", 0, len(kfs), 0.0, moved, detail)

    def _refine(self, recon: Any, kfs: list) -> StageRun:
        depths = self.refiner.refine(kfs, masks=_masks(kfs))
        valid = {kf.id: kf.valid for kf in kfs}
        replaced_px = 0
        changed = 0
        for kf_id, rd in depths.items():
            n = int(np.count_nonzero(rd.replaced))
            if n and recon.replace_depth(kf_id, rd.points_cam, valid[kf_id]):
                replaced_px += n
                changed += 1
        dropped_px = 0
        if self.transients:
            kfs = recon.keyframes(frontend_poses=True)
            for kf_id, drop in self.refiner.transients(kfs, masks=_masks(kfs)).items():
                kf = next(k for k in kfs if k.id == kf_id)
                newly = drop & kf.valid
                n = int(np.count_nonzero(newly))
                if n:
                    recon.replace_depth(kf_id, kf.points_cam, kf.valid & ~drop)
                    dropped_px += n
        return StageRun("refine", 0, len(kfs), 0.0, changed,
                        {"replaced_pixels": replaced_px, "transient_pixels": dropped_px})

    def summary(self) -> list[dict]:
        return [dict(stage=r.stage, stamp_ns=r.stamp_ns, keyframes=r.keyframes, seconds=round(r.seconds, 3),
                     changed=r.changed, **r.detail) for r in self.runs]


def _masks(kfs: list) -> Optional[dict]:
    """The user masks of the keyframes that have one (True = ignore), for every stage."""
    masks = {kf.id: kf.mask for kf in kfs if kf.mask is not None}
    return masks or None
