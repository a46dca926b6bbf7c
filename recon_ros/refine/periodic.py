"""The background stages as both ``recon-ros replay --refine`` and the refiner node run them.

:func:`align_config`, :func:`align_keyframes` and :func:`refine_keyframes` are the stages over a
list of keyframes, shared by the two runners:

* alignment: keyframes with their frontend poses -> :meth:`Refiner.align` (user masks; a metric
  frontend keeps every keyframe's scale) -> corrected poses;
* refinement: MVS depth replaces keyframe pointmaps where it passes the checks, then points
  that other views see through (transients) become invalid -> one :class:`KeyframeUpdate` per
  changed keyframe.

:class:`PeriodicRefinement` runs them against a live :class:`Reconstructor` on the schedule of
the ROS refiner node (``schedule.align_period_s`` / ``schedule.refine_period_s``, measured in
stream time, so a replay does what the node would do while the recording plays at its own rate)
and applies the results in place; the node (``recon_ros.ros.refiner_node``) publishes them for
recon_node to apply.

It also keeps a copy of the map as the frontend built it (``before``), so a run can write
before/after maps and trajectories.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import numpy as np

from recon_ros.mapping.fused_map import KeyframeMap
from recon_ros.refine.schedule import STAGES, StageSchedule
from recon_ros.refine.schema import AlignConfig, RefineConfig
from recon_ros.refine.stages import Refiner

log = logging.getLogger(__name__)


def align_config(cfg: AlignConfig, metric: bool) -> AlignConfig:
    """The alignment settings for a frontend: a metric one (RGB-D) keeps every keyframe's scale,
    so the corrections are rigid."""
    if metric and not cfg.fix_scale:
        log.info("metric frontend: alignment keeps keyframe scales fixed")
        return replace(cfg, fix_scale=True)
    return cfg


def align_keyframes(refiner: Any, keyframes: Sequence[Any]) -> Any:
    """Sparse global alignment of ``keyframes`` (frontend poses), user masks applied."""
    return refiner.align(keyframes, masks=_masks(keyframes))


@dataclass
class KeyframeUpdate:
    """A keyframe's pointmap after a refine run: MVS points where they passed the checks
    (``replaced_px`` pixels), and ``dropped_px`` pixels seen through by other views (transients)
    no longer valid."""

    kf_id: int
    points_cam: np.ndarray
    valid: np.ndarray
    replaced_px: int
    dropped_px: int


def refine_keyframes(refiner: Any, keyframes: Sequence[Any]) -> dict[int, KeyframeUpdate]:
    """MVS depth refinement, then transient rejection on the refined pointmaps (when
    ``transients.enabled``): ``{id: KeyframeUpdate}`` for every keyframe that changed."""
    masks = _masks(keyframes)
    depths = refiner.refine(keyframes, masks=masks)
    refined, replaced = [], {}
    for kf in keyframes:
        rd = depths.get(kf.id)
        n = int(np.count_nonzero(rd.replaced)) if rd is not None else 0
        replaced[kf.id] = n
        refined.append(replace(kf, points_cam=np.asarray(rd.points_cam, np.float32)) if n else kf)
    drops = refiner.transients(refined, masks=masks)
    updates = {}
    for kf in refined:
        drop = drops.get(kf.id)
        newly = drop & kf.valid if drop is not None else None
        dropped = int(np.count_nonzero(newly)) if newly is not None else 0
        if replaced[kf.id] or dropped:
            valid = kf.valid & ~newly if dropped else kf.valid
            updates[kf.id] = KeyframeUpdate(kf.id, kf.points_cam, valid, replaced[kf.id], dropped)
    return updates


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
                 metric: Optional[bool] = None) -> None:
        self.refiner = Refiner(cfg or RefineConfig())
        # metric frontends (RGB-D) keep every keyframe's scale: None = ask the reconstructor's frontend
        self.metric = metric
        if metric is not None:
            self.refiner.aligner.cfg = align_config(self.refiner.aligner.cfg, metric)
        self.schedule = schedule
        self.when = StageSchedule(schedule)
        self.before = KeyframeMap(map_cfg) if map_cfg is not None else None
        self.runs: list[StageRun] = []

    def add_keyframes(self, keyframes: list) -> None:
        """Record new keyframes in the frontend-only map."""
        if self.before is not None:
            for kf in keyframes:
                self.before.add_keyframe(kf)

    def _fix_scale(self, recon: Any) -> None:
        if self.metric is None:
            self.metric = bool(getattr(recon.frontend, "metric", False))
            self.refiner.aligner.cfg = align_config(self.refiner.aligner.cfg, self.metric)

    def step(self, recon: Any, stamp_ns: int, force: bool = False) -> list[StageRun]:
        """Run the stages that are due at stream time ``stamp_ns``; ``force`` (end of stream) runs
        every stage that has a period (a stage with period 0 never runs here)."""
        done = []
        self._fix_scale(recon)
        due = self.when.due(stamp_ns)
        for stage in STAGES:
            forced = force and self.when.period_ns(stage) > 0
            if not (stage in due or forced):
                continue
            self.when.ran(stage, stamp_ns)  # started or not, the next try is a period later
            kfs = recon.keyframes(frontend_poses=True)
            if len(kfs) < self.schedule.min_keyframes:
                continue
            t0 = time.perf_counter()
            run = self._align(recon, kfs) if stage == "align" else self._refine(recon, kfs)
            run.stamp_ns, run.seconds = stamp_ns, time.perf_counter() - t0
            log.info("%s over %d keyframes: %d changed in %.2f s %s", stage, run.keyframes, run.changed,
                     run.seconds, run.detail)
            self.runs.append(run)
            done.append(run)
        return done

    def _align(self, recon: Any, kfs: list) -> StageRun:
        res = align_keyframes(self.refiner, kfs)
        # A rejected result still carries the accepted corrections so far (extended to new
        # keyframes from their nearest earlier keyframe), so the map stays consistent.
        moved = recon.apply_corrections({kf.stamp_ns: res.poses[kf.id] for kf in kfs if kf.id in res.poses})
        detail = {"reason": res.reason, "cost_before": res.cost_before, "cost_after": res.cost_after,
                  "reproj_median_before": res.reproj_median_before, "reproj_median_after": res.reproj_median_after}
        return StageRun("align", 0, len(kfs), 0.0, moved, detail)

    def _refine(self, recon: Any, kfs: list) -> StageRun:
        updates = refine_keyframes(self.refiner, kfs)
        changed = replaced_px = dropped_px = 0
        for u in updates.values():
            if recon.replace_depth(u.kf_id, u.points_cam, u.valid):
                changed += 1
                replaced_px += u.replaced_px
                dropped_px += u.dropped_px
        return StageRun("refine", 0, len(kfs), 0.0, changed,
                        {"replaced_pixels": replaced_px, "transient_pixels": dropped_px})

    def summary(self) -> list[dict]:
        return [dict(stage=r.stage, stamp_ns=r.stamp_ns, keyframes=r.keyframes, seconds=round(r.seconds, 3),
                     changed=r.changed, **r.detail) for r in self.runs]


def _masks(kfs: Sequence[Any]) -> Optional[dict]:
    """The user masks of the keyframes that have one (True = ignore), for every stage."""
    masks = {kf.id: kf.mask for kf in kfs if kf.mask is not None}
    return masks or None
