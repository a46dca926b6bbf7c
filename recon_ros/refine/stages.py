"""The :class:`Refiner` facade: periodic background refinement over a keyframe store.

Contract: the keyframes handed to the refiner carry the *frontend* poses in ``T_world_cam``
(the mapper keeps them). The refiner keeps one Sim(3) correction per keyframe id, warm-starts
every alignment from them (a new keyframe starts from the correction of the nearest earlier
corrected keyframe) and returns corrected poses ``poses[id] = corrections[id] @ T_world_cam``.
MVS and transient rejection use the corrected poses unless explicit ``poses`` are given.

Typical periodic use (``recon-ros replay --refine`` or the ROS refiner node)::

    refiner = Refiner(cfg.refine)
    result = refiner.align(store.keyframes())            # every few keyframes
    depths = refiner.refine(store.keyframes())          # {id: RefinedDepth}
    drop = refiner.transients(store.keyframes())        # {id: bool mask of pixels to drop}
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np

from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.geometry.transforms import invert_T
from recon_ros.mapping.frame import Keyframe
from recon_ros.refine.align import AlignResult, GlobalAligner, window_sets
from recon_ros.refine.graph import KeyframeGraphBuilder
from recon_ros.refine.mvs import DepthRefiner
from recon_ros.refine.schema import RefineConfig
from recon_ros.refine.transients import TransientFilter, TransientMask

log = logging.getLogger(__name__)


def _ordered(keyframes: Sequence[Keyframe]) -> list[Keyframe]:
    kfs = sorted(keyframes, key=lambda k: (k.stamp_ns, k.id))
    ids = [k.id for k in kfs]
    if len(set(ids)) != len(ids):
        raise UserInputError("keyframe ids must be unique")
    for kf in kfs:
        T = np.asarray(kf.T_world_cam)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise DataFormatError(f"keyframe {kf.id}: T_world_cam must be a finite 4x4 matrix")
        if kf.points_cam.ndim != 3 or kf.points_cam.shape[2] != 3 or kf.valid.shape != kf.points_cam.shape[:2]:
            raise DataFormatError(f"keyframe {kf.id}: points_cam must be h x w x 3 with an h x w valid mask")
    shapes = {k.points_cam.shape for k in kfs}
    if len(shapes) > 1:
        raise DataFormatError(f"all keyframe pointmaps must have one size, got {sorted(shapes)}")
    return kfs


class Refiner:
    """Alignment, MVS refinement and transient rejection over a set of keyframes."""

    def __init__(self, cfg: Optional[RefineConfig] = None) -> None:
        self.cfg = cfg or RefineConfig()
        self.graph = KeyframeGraphBuilder(self.cfg.matching, self.cfg.graph)
        self.aligner = GlobalAligner(self.cfg.align)
        self.transient_filter = TransientFilter(self.cfg.transients)
        self._depth: Optional[DepthRefiner] = None
        self.corrections: dict = {}  # id -> Sim(3) correction on the frontend pose
        self.last_result: Optional[AlignResult] = None

    # ------------------------------------------------------------------------- poses
    def initial_corrections(self, kfs: Sequence[Keyframe]) -> dict:
        """Stored correction per id, or the nearest earlier keyframe's (identity if none)."""
        out = {}
        current = np.eye(4)
        for kf in kfs:
            if kf.id in self.corrections:
                current = self.corrections[kf.id]
            out[kf.id] = current.copy()
        return out

    def corrected_poses(self, keyframes: Sequence[Keyframe]) -> dict:
        """``{id: correction @ T_world_cam}`` with the current (warm-start) corrections."""
        kfs = _ordered(keyframes)
        C = self.initial_corrections(kfs)
        return {kf.id: C[kf.id] @ np.asarray(kf.T_world_cam, np.float64) for kf in kfs}

    # ------------------------------------------------------------------------- stages
    def align(self, keyframes: Sequence[Keyframe], masks: Optional[dict] = None, window: bool = False
              ) -> AlignResult:
        """Sparse global alignment (``window=True``: only the last ``align.window`` keyframes move)."""
        kfs = _ordered(keyframes)
        front = {kf.id: np.asarray(kf.T_world_cam, np.float64) for kf in kfs}
        C0 = self.initial_corrections(kfs)
        init = {i: C0[i] @ front[i] for i in front}
        if len(kfs) < 2:
            return AlignResult(poses=init, corrections=C0, changed=False, reason="fewer than two keyframes")
        edges, _, gstats = self.graph.build(kfs, [init[k.id] for k in kfs], masks)
        if window and len(kfs) > self.cfg.align.window:
            free, frozen, used = window_sets([k.id for k in kfs], edges, self.cfg.align.window)
            keep = set(free) | set(frozen)
            sub = [k for k in kfs if k.id in keep]
            res = self.aligner.align(sub, used, poses=init, frontend_poses=front, frozen=frozen, free=free)
            for kf in kfs:
                res.poses.setdefault(kf.id, init[kf.id])
        else:
            res = self.aligner.align(kfs, edges, poses=init, frontend_poses=front)
        res.corrections = {i: res.poses[i] @ invert_T(front[i]) for i in front}
        res.stats.update({"pairs_tried": gstats.pairs_tried, "pairs_verified": gstats.verified,
                          "loop_edges": gstats.loop_edges, "window": bool(window)})
        if res.changed:
            self.corrections.update(res.corrections)
        self.last_result = res
        return res

    def _depth_refiner(self) -> DepthRefiner:
        if self._depth is None:
            self._depth = DepthRefiner(self.cfg.mvs)
        return self._depth

    def refine(self, keyframes: Sequence[Keyframe], poses: Optional[dict] = None, masks: Optional[dict] = None,
               only: Optional[Sequence[int]] = None) -> dict:
        """MVS depth refinement: ``{id: RefinedDepth}`` (see :class:`~recon_ros.refine.mvs.RefinedDepth`)."""
        kfs = _ordered(keyframes)
        return self._depth_refiner().refine(kfs, poses or self.corrected_poses(kfs), masks, only)

    def transient_details(self, keyframes: Sequence[Keyframe], poses: Optional[dict] = None,
                          masks: Optional[dict] = None) -> dict:
        """``{id: TransientMask}`` with the individual decisions."""
        kfs = _ordered(keyframes)
        return self.transient_filter.detect(kfs, poses or self.corrected_poses(kfs), masks)

    def transients(self, keyframes: Sequence[Keyframe], poses: Optional[dict] = None,
                   masks: Optional[dict] = None) -> dict:
        """``{id: h x w bool}``: pixels of each keyframe's pointmap to drop from the map."""
        details: dict[int, TransientMask] = self.transient_details(keyframes, poses, masks)
        return {i: m.drop for i, m in details.items()}

    def forget(self, keep_ids: Sequence[int]) -> None:
        """Drop cached features, edges and corrections of keyframes no longer in the store."""
        keep = set(keep_ids)
        self.graph.forget(list(keep))
        self.corrections = {k: v for k, v in self.corrections.items() if k in keep}
