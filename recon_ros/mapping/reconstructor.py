"""The Reconstructor: frames in, a growing keyframe map and a trajectory out.

It wires a frontend (Spann3R or RGB-D), the scale estimator, the keyframe selector and the
keyframe-anchored fused map, exactly as ``recon-ros replay`` and the ROS node run them.

World frame: ``recon_world``, the first camera's optical frame, in metres once a scale is
known (the RGB-D frontend is metric from the start). Keyframes are built with the scale
known at the time; when the estimate moves by more than ``scale_tolerance`` every keyframe is
re-anchored by the ratio (a Sim(3) about the origin), so the map never mixes scales.
Corrections from background refinement re-anchor keyframes the same way, and each frame's
pose follows the correction of the keyframe it was tracked after.
"""
from __future__ import annotations

import bisect
import copy
import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from recon_ros.config import group, param
from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.geometry.transforms import (invert_T, make_T, map_from_optical, matrix_to_rotvec, rigid_part,
                                          rotvec_to_matrix, transform_points,
                                          sim3_decompose)
from recon_ros.mapping.fused_map import KeyframeMap
from recon_ros.mapping.frame import Frame, FrameEstimate, Keyframe
from recon_ros.mapping.frontend import Frontend
from recon_ros.mapping.keyframes import KeyframeSelector
from recon_ros.mapping.occupancy import occupancy_grid
from recon_ros.mapping.scale import ScaleEstimator
from recon_ros.mapping.surface_map import SurfaceMap, resolve_device
from recon_ros.mapping.schema import MappingConfig
from recon_ros.model.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class OutputConfig:
    """What replay and save_map write."""

    keyframes: bool = param(True, "save the keyframes (image, pointmap, confidence, K, pose) "
                            "in a keyframes/ folder")
    frame_clouds: bool = param(False, "write every frame's pointmap to the output bag "
                               "(large); the fused map is always written")
    map_every_n: int = param(10, "write the fused map to the output bag every n frames "
                             "(and at the end)", min=1, max=100_000)
    map_state: bool = param(True, "also save what continuing the map needs (state/: the TSDF "
                            "volume and the relocalization database; with keyframes/ it makes "
                            "the folder a map for --resume and map.load_path)")


@dataclass
class ReconConfig(MappingConfig):
    """Every parameter of the reconstruction core (the ROS node adds its own groups)."""

    model: ModelConfig = group(ModelConfig)
    output: OutputConfig = group(OutputConfig)
    scale_tolerance: float = param(0.02, "re-anchor the map when the scale estimate moves by "
                                   "more than this fraction", min=0.0, max=1.0)


@dataclass
class StepResult:
    """What one call of :meth:`Reconstructor.process` produced."""

    estimates: list[FrameEstimate] = field(default_factory=list)  # final, scaled, stream order
    provisional: Optional[FrameEstimate] = None
    new_keyframes: list[Keyframe] = field(default_factory=list)
    map_changed: bool = False
    keyframes_moved: bool = False  # earlier keyframes changed pose (a map segment was joined)
    timings_ms: dict[str, float] = field(default_factory=dict)
    skipped: Optional[str] = None  # why the frame was skipped, if it was
    # map work that Reconstructor.finish() does (keyframes into the map, fusion), in order
    deferred: list = field(default_factory=list, repr=False, compare=False)
    # the frontend's tracking state after this step (tracking / lost / relocalized) and why;
    # frames without a pose (lost) are withheld from ``estimates``, the map and the trajectory
    tracking: str = "tracking"
    tracking_reason: str = ""


def scale_pose(T: np.ndarray, scale: float) -> np.ndarray:
    """The pose with its translation multiplied by ``scale``."""
    out = np.array(T, dtype=np.float64, copy=True)
    out[:3, 3] *= scale
    return out


def scale_estimate(est: FrameEstimate, scale: float) -> FrameEstimate:
    """A copy of an estimate in metres: points and translation times ``scale``."""
    if scale == 1.0:
        return est
    return FrameEstimate(
        stamp_ns=est.stamp_ns, index=est.index, points=est.points * np.float32(scale),
        confidence=est.confidence, colors=est.colors, T_world_cam=scale_pose(est.T_world_cam, scale),
        K_model=est.K_model, pixel_map=est.pixel_map, valid=est.valid, provisional=est.provisional,
        frame=est.frame, tracking_ok=est.tracking_ok)


def correct_estimate(est: FrameEstimate, C: Optional[np.ndarray]) -> FrameEstimate:
    """A copy of an estimate moved by the Sim(3) ``C`` (points and pose; the depth along its
    rays is unchanged); the estimate itself when ``C`` is None."""
    if C is None:
        return est
    return dataclasses.replace(est, points=transform_points(C, est.points).astype(np.float32),
                               T_world_cam=C @ np.asarray(est.T_world_cam, dtype=np.float64))


def make_frontend(cfg: ReconConfig, model=None) -> Frontend:
    """Build the frontend that ``cfg.frontend.name`` names (loading Spann3R's weights)."""
    name = cfg.frontend.name
    if name == "rgbd":
        from recon_ros.mapping.rgbd import RGBDFrontend
        return RGBDFrontend(cfg)
    if name == "spann3r":
        from recon_ros.mapping.spann3r import Spann3RFrontend
        if model is None:
            from recon_ros.model.checkpoint import load_model
            if not cfg.model.checkpoint:
                raise UserInputError(
                    "the spann3r frontend needs its weights: pass --checkpoint spann3r.pth "
                    "(model.checkpoint), or use --frontend rgbd with an RGB-D camera")
            model = load_model(cfg.model)
        return Spann3RFrontend(model, cfg.model, cfg.frontend)
    raise UserInputError(f"unknown frontend '{name}' (choose spann3r or rgbd)")


@dataclass
class _TrajEntry:
    stamp_ns: int
    T_raw: np.ndarray  # frontend units
    anchor: Optional[int]  # keyframe id it was tracked after
    s_built: float = 1.0  # scale it was fused into the surface map with
    segment: int = 0  # the frontend's map segment (see Reconstructor._join_segment)


@dataclass
class MapSnapshot:
    """The map products of a fused volume: the Reconstructor's product methods use its live
    volume; :meth:`Reconstructor.map_snapshot` gives one over a frozen copy, owned by whichever
    thread it is handed to."""

    surface: SurfaceMap
    cfg: ReconConfig

    def fused_cloud(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xyz, _, rgb, weight = self.surface.points()
        return xyz, rgb, weight

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.surface.mesh()

    def occupancy(self, T_map_recon: Optional[np.ndarray] = None):
        T = map_from_optical() if T_map_recon is None else np.asarray(T_map_recon, dtype=np.float64)
        xyz, normals, _, _ = self.surface.points()
        pts = transform_points(T, np.asarray(xyz, dtype=np.float64))
        nrm = np.asarray(normals, dtype=np.float64) @ rigid_part(T)[:3, :3].T
        return occupancy_grid(pts, nrm, self.cfg.map.occupancy, self.cfg.map.voxel_size_m)


@dataclass
class SaveSnapshot(MapSnapshot):
    """Everything :meth:`Reconstructor.save` writes, frozen at one moment
    (:meth:`Reconstructor.save_snapshot`): :meth:`write` can run on another thread while the
    Reconstructor goes on."""

    poses: list = field(default_factory=list)
    keyframe_list: list = field(default_factory=list)
    frontend: str = ""
    relocalization: Optional[dict] = None

    def trajectory(self) -> list:
        return self.poses

    def keyframes(self) -> list:
        return self.keyframe_list

    def write(self, directory) -> dict[str, Path]:
        """Write map.ply, mesh.ply, the occupancy grid, trajectory.tum, keyframes.tum,
        keyframes/ and state/ (as configured by ``output``) into ``directory``."""
        from recon_ros.io.outputs import save_reconstruction
        from recon_ros.mapping.saved_map import save_map_state

        directory = Path(directory)
        out = save_reconstruction(self, directory, keyframes=self.cfg.output.keyframes)
        if self.cfg.output.map_state:
            out["map_state"] = save_map_state(
                directory, frontend=self.frontend, voxel_size_m=self.surface.voxel,
                volume=self.surface.export_volume(), relocalization=self.relocalization,
                keyframe_ids=[kf.id for kf in self.keyframe_list] if self.cfg.output.keyframes else [])
        return out


class Reconstructor:
    """Online reconstruction of one camera stream (see the module docstring)."""

    def __init__(self, cfg: Optional[ReconConfig] = None, frontend: Optional[Frontend] = None,
                 model=None) -> None:
        self.cfg = cfg if cfg is not None else ReconConfig()
        self.frontend = frontend if frontend is not None else make_frontend(self.cfg, model)
        self.scaler = ScaleEstimator(self.cfg.scale)
        self.selector = KeyframeSelector(self.cfg.keyframe, depth_source=self._depth_source())
        self.map = KeyframeMap(self.cfg.map)
        model_device = self.cfg.model.runtime.device if self.frontend.name == "spann3r" else None
        self._device = resolve_device(self.cfg.map.device, model_device)
        self.surface = SurfaceMap(self.cfg.map, device=self._device)
        self._reset_state()
        if self.localizing and not self.cfg.map.load_path:
            raise UserInputError("localization mode needs a saved map to localize against: set "
                                 "map.load_path (recon-ros replay --resume MAP_DIR)")
        if self.cfg.map.load_path:
            self.load_map(self.cfg.map.load_path)

    # ------------------------------------------------------------------ state
    def _depth_source(self) -> str:
        return "depth" if self.frontend.metric else "frontend"

    def _reset_state(self) -> None:
        self._traj: list[_TrajEntry] = []
        # id -> [frontend pose (frontend units), scale its points were built with, scale the
        # map currently applies to it]
        self._kf_raw: dict[int, list] = {}
        self._keyframes: dict[int, Keyframe] = {}
        self._kf_segment: dict[int, int] = {}
        self._last_stamp: Optional[int] = None
        self._skips: dict[str, int] = {}
        self._frames = 0
        self._lost = 0
        self._last_ms: dict[str, float] = {}
        self._first_own_id = 0  # keyframes below this id came with a loaded map
        self.loaded_from: Optional[Path] = None
        self._unfinished: Optional[StepResult] = None  # estimate() done, finish() not yet

    @property
    def localizing(self) -> bool:
        """Localization mode: the loaded map is frozen, frames are only located in it."""
        return self.cfg.mapping.mode == "localization"

    def reset(self) -> None:
        """Forget everything: a new world starts with the next frame."""
        self.frontend.reset()
        self.scaler.reset()
        self.selector.reset()
        self.map.clear()
        self.surface.clear()
        self._reset_state()
        if self.cfg.map.load_path:
            self.load_map(self.cfg.map.load_path)

    # ------------------------------------------------------------------ saved maps
    def load_map(self, path) -> None:
        """Continue a saved map folder (see :mod:`recon_ros.mapping.saved_map`): its volume,
        keyframes and relocalization database replace the current state, and the next
        frames are relocalized in it. The folder is read and checked completely first; a bad
        one raises a one-line DataFormatError and changes nothing."""
        self._settle()
        from recon_ros.mapping.saved_map import load_map

        saved = load_map(Path(path))
        if saved.frontend != self.frontend.name:
            raise UserInputError(f"the map at {saved.path} was made by the {saved.frontend} frontend; "
                                 f"run with --frontend {saved.frontend} (frontend.name) to continue it")
        if not len(saved.relocalization.get("ids", ())):
            raise DataFormatError(f"the map at {saved.path} has no relocalization database (made by "
                                  f"the {saved.frontend} frontend or with relocalization disabled), "
                                  "so it cannot be continued")
        map_cfg = self.cfg.map
        if not np.isclose(saved.voxel_size_m, map_cfg.voxel_size_m):
            log.warning("the map at %s was fused with %.4g m voxels: using them instead of "
                        "map.voxel_size_m %.4g", saved.path, saved.voxel_size_m, map_cfg.voxel_size_m)
            map_cfg = dataclasses.replace(map_cfg, voxel_size_m=saved.voxel_size_m)
        surface = SurfaceMap(map_cfg, device=self._device)
        keyframe_map = KeyframeMap(map_cfg)
        try:
            surface.load_volume(saved.volume)
            for kf in saved.keyframes:
                keyframe_map.add_keyframe(kf)
            self.frontend.adopt_map(saved.relocalization)
        except (ValueError, KeyError) as exc:
            raise DataFormatError(f"the map at {saved.path} is malformed ({exc})") from None
        self.cfg.map = map_cfg
        self.scaler.reset()
        self.selector.reset()
        self._reset_state()
        self.surface, self.map = surface, keyframe_map
        for kf in saved.keyframes:
            if kf.id in self.map:
                self._keyframes[kf.id] = kf
                self._kf_raw[kf.id] = [np.array(kf.T_world_cam, dtype=np.float64), 1.0, 1.0]
        self._first_own_id = max((kf.id for kf in saved.keyframes), default=-1) + 1
        self.selector.continue_ids(self._first_own_id)
        self.loaded_from = saved.path
        log.info("loaded the map at %s: %d keyframes, %d volume blocks, %d relocalization "
                 "keyframes (%s)", saved.path, len(saved.keyframes), self.surface.volume.n,
                 len(saved.relocalization["ids"]), "localization only" if self.localizing else "mapping")

    @property
    def scale(self) -> float:
        """Metres per frontend unit (1 for metric frontends or while unknown)."""
        if self.frontend.metric and self.cfg.scale.mode != "fixed":
            return 1.0
        return float(self.scaler.state().scale)

    def _skip(self, reason: str, detail: str) -> StepResult:
        n = self._skips.get(reason, 0) + 1
        self._skips[reason] = n
        if n <= 3 or n % 100 == 0:
            log.warning("frame skipped (%s, %d so far): %s", reason, n, detail)
        return StepResult(skipped=reason)

    # ------------------------------------------------------------------ processing
    def process(self, frame: Frame) -> StepResult:
        """Feed one frame; bad frames are logged, counted and skipped (``StepResult.skipped``).
        The same as :meth:`estimate` followed by :meth:`finish`."""
        return self.finish(self.estimate(frame))

    def estimate(self, frame: Frame) -> StepResult:
        """The first half of :meth:`process`: the frame's pose. The result has its estimates,
        tracking state and new keyframes; fusing it into the map and the frontend's keyframe
        bookkeeping wait for :meth:`finish`, so that a caller can publish the pose first. A
        step left unfinished is finished by the next call that reads or changes the map."""
        self._settle()
        t0 = time.perf_counter()
        if self._last_stamp is not None and frame.stamp_ns <= self._last_stamp:
            return self._skip("stamp_not_increasing",
                              f"stamp {frame.stamp_ns} is not after {self._last_stamp}; "
                              "call reset() when a recording restarts")
        try:
            frame.validate()
            estimates = self.frontend.step(frame)
        except UserInputError as exc:
            return self._skip("bad_frame", str(exc))
        self._last_stamp = frame.stamp_ns
        self._frames += 1
        t1 = time.perf_counter()
        joined = [self._join_segment(*j) for j in self.frontend.take_segment_joins()]
        result = self._consume(estimates)
        result.keyframes_moved = any(joined)
        result.map_changed |= result.keyframes_moved
        status = self.frontend.status
        result.tracking, result.tracking_reason = status.state, status.reason
        result.timings_ms = {"frontend": (t1 - t0) * 1e3, "pose": (time.perf_counter() - t0) * 1e3}
        self._unfinished = result
        return result

    def finish(self, result: StepResult) -> StepResult:
        """The second half of :meth:`process` for the result of :meth:`estimate`: new
        keyframes into the keyframe map, the frame fused into the volume, queued re-fusion
        within its budget, the frontend's keyframe bookkeeping. Returns ``result`` with
        ``map_changed`` and the timings complete. Finishing twice does nothing."""
        if result is not self._unfinished:
            return result
        self._unfinished = None
        t0 = time.perf_counter()
        self._run_deferred(result)
        self.frontend.finish_step()
        joined = [self._join_segment(*j) for j in self.frontend.take_segment_joins()]
        if any(joined):
            result.keyframes_moved = result.map_changed = True
        if self.surface.pending:
            self.surface.work(self._repose_budget())
            result.map_changed = True
        result.map_changed |= bool(result.new_keyframes)
        map_ms = (time.perf_counter() - t0) * 1e3
        result.timings_ms.update(map=map_ms, total=result.timings_ms.get("pose", 0.0) + map_ms)
        self._last_ms = result.timings_ms
        return result

    def _run_deferred(self, result: StepResult) -> None:
        for work in result.deferred:
            work()
        result.deferred.clear()
        self._drop_evicted()

    def _settle(self) -> None:
        """Finish a step that :meth:`estimate` left (before the map is read or changed)."""
        if self._unfinished is not None:
            self.finish(self._unfinished)

    def notify_gap(self) -> None:
        """Processing paused (a save, corrections, a deactivate): the frontend must not
        predict the next frame from the motion before the pause."""
        self.frontend.notify_gap()

    def flush(self) -> StepResult:
        """End of stream: the estimates the frontend still holds (and every re-fusion still
        queued after a correction)."""
        self._settle()
        t0 = time.perf_counter()
        result = self._consume(self.frontend.flush())
        self._run_deferred(result)
        self.frontend.finish_step()
        if self.surface.pending:
            self.surface.work()
            result.map_changed = True
        result.timings_ms = {"total": (time.perf_counter() - t0) * 1e3}
        return result

    def _consume(self, estimates: list[FrameEstimate]) -> StepResult:
        result = StepResult()
        for est in estimates:
            if est.provisional:
                result.provisional = scale_estimate(est, self.scale)
                continue
            if not est.tracking_ok:
                self._lost += 1  # no pose: not fused, not keyframed, not a trajectory pose
                continue
            if self.cfg.scale.mode != "none" and not self.frontend.metric:
                self._run_deferred(result)  # a rescale re-anchors every keyframe in the map
                self.scaler.update(est, est.frame)
                if self._rescale_map():
                    result.map_changed = True
            s = self.scale
            anchor = self.selector_last_id()
            if anchor is not None and anchor < self._first_own_id:
                anchor = None  # a loaded keyframe: this run's frames follow its own keyframes
            known = None if (not self.frontend.metric and not self.scaler.state().known) else s
            kf = None if self.localizing else self.selector.consider(est, est.frame, known)
            if kf is not None:
                self._kf_raw[kf.id] = [np.array(est.T_world_cam, dtype=np.float64), s, s]
                self._keyframes[kf.id] = kf
                self._kf_segment[kf.id] = self.frontend.status.segment
                result.deferred.append(functools.partial(self.map.add_keyframe, kf))
                result.new_keyframes.append(kf)
                anchor = kf.id
            entry = _TrajEntry(est.stamp_ns, np.array(est.T_world_cam, dtype=np.float64), anchor, s,
                               self.frontend.status.segment)
            self._traj.append(entry)
            # in the corrected world: the refinement correction of its keyframe applies to it
            scaled = correct_estimate(scale_estimate(est, s), self._live_correction(entry))
            if not self.localizing:
                result.deferred.append(functools.partial(self._fuse, scaled, result))
            result.estimates.append(scaled)
        return result

    def _fuse(self, est: FrameEstimate, result: StepResult) -> None:
        if self.surface.integrate(est):
            result.map_changed = True

    def _join_segment(self, segment: int, target: int, C: np.ndarray) -> bool:
        """The frontend found where a segment it started after a loss lies in an earlier one:
        move the segment's frames and keyframes by ``C`` (frontend world of ``segment`` ->
        that of ``target``) and re-fuse them there (within the re-fusion budget)."""
        C = np.asarray(C, dtype=np.float64)
        n = 0
        for e in self._traj:
            if e.segment == segment:
                e.T_raw, e.segment = C @ e.T_raw, target
                n += 1
        for kf_id, seg in list(self._kf_segment.items()):
            if seg != segment:
                continue
            self._kf_segment[kf_id] = target
            entry = self._kf_raw.get(kf_id)
            if entry is not None:
                entry[0] = C @ entry[0]
            if kf_id in self.map:
                S = make_T(np.eye(3), np.zeros(3), self._kf_raw[kf_id][2] / self._kf_raw[kf_id][1])
                C_world = S @ scale_pose(C, self._kf_raw[kf_id][1]) @ invert_T(S)  # in map units
                self.map.set_pose(kf_id, C_world @ self.map.pose(kf_id))
        log.info("map segment %d joined segment %d: %d frames moved", segment, target, n)
        self._repose_surface()
        return n > 0

    def _drop_evicted(self) -> None:
        """Release the records (images, pointmaps) of keyframes the map evicted to stay under
        its byte cap; their poses stay for the trajectory."""
        if len(self._keyframes) > len(self.map):
            for kf_id in [k for k in self._keyframes if k not in self.map]:
                del self._keyframes[kf_id]

    def selector_last_id(self) -> Optional[int]:
        return max(self._kf_raw) if self._kf_raw else None

    def _rescale_map(self) -> bool:
        """Re-anchor every keyframe when the scale estimate moved beyond the tolerance."""
        if not self.scaler.state().known or not self._kf_raw:
            return False
        s = self.scale
        changed = False
        for kf_id, entry in self._kf_raw.items():
            ratio = s / entry[2]
            if abs(ratio - 1.0) <= self.cfg.scale_tolerance:
                continue
            if kf_id in self.map:
                self.map.apply_correction(kf_id, make_T(np.eye(3), np.zeros(3), ratio))
            entry[2] = s
            changed = True
        if changed:
            log.info("scale estimate now %.4f m/unit: map re-anchored", s)
            self._repose_surface()
        return changed

    # ------------------------------------------------------------------ corrections
    def frontend_pose(self, kf_id: int) -> np.ndarray:
        """A keyframe's pose from the frontend alone (scale applied, no refinement
        corrections): a Sim(3) that maps its stored ``points_cam`` into the current world."""
        T_raw, s_built, s_applied = self._kf_raw[kf_id]
        return make_T(np.eye(3), np.zeros(3), s_applied / s_built) @ scale_pose(T_raw, s_built)

    def _correction(self, kf_id: int) -> np.ndarray:
        """The refinement correction of a keyframe: its map pose relative to its frontend pose."""
        if kf_id not in self.map:
            return np.eye(4)
        return self.map.pose(kf_id) @ invert_T(self.frontend_pose(kf_id))

    def apply_corrections(self, poses: dict[int, np.ndarray]) -> int:
        """Re-anchor keyframes to corrected poses, matched by keyframe stamp (ns). Returns how
        many keyframes moved. Poses may be Sim(3)."""
        self._settle()
        by_stamp = {kf.stamp_ns: kf_id for kf_id, kf in self._keyframes.items()}
        moved = 0
        for stamp, T in poses.items():
            kf_id = by_stamp.get(int(stamp))
            if kf_id is None or kf_id not in self.map:
                continue
            T = np.asarray(T, dtype=np.float64)
            if T.shape != (4, 4) or not np.all(np.isfinite(T)):
                log.warning("ignoring a non-finite correction for keyframe %d", kf_id)
                continue
            if np.allclose(self.map.pose(kf_id), T, rtol=0.0, atol=1e-9):
                continue  # already there: no re-fusion
            self.map.set_pose(kf_id, T)
            moved += 1
        if moved:
            self._repose_surface()
        return moved

    def _repose_budget(self) -> Optional[float]:
        b = self.cfg.map.repose_budget_ms
        return b if b > 0 else None

    def _repose_surface(self) -> int:
        """Move the fused frames of the surface map to their corrected poses (within the
        re-fusion budget now, the rest after the next frames; see ``map.repose_budget_ms``)."""
        stored = self.surface.stored_poses()
        return self.surface.repose({st: T for st, T in self._frame_poses(True) if st in stored},
                                   budget_ms=self._repose_budget())

    def replace_depth_at(self, stamp_ns: int, points_cam: np.ndarray) -> bool:
        """Swap in a refined pointmap for the keyframe stamped ``stamp_ns`` (the refiner node's
        output); pixels stay valid where they were valid and the refined point is finite.
        Returns False when no such keyframe is in the map."""
        self._settle()
        kf_id = next((i for i, kf in self._keyframes.items() if kf.stamp_ns == int(stamp_ns)), None)
        if kf_id is None:
            return False
        kf = self._keyframes[kf_id]
        pts = np.asarray(points_cam, dtype=np.float32)
        if pts.shape != kf.points_cam.shape:
            raise UserInputError(f"refined pointmap of keyframe {kf_id} has shape {pts.shape}, "
                                 f"expected {kf.points_cam.shape}")
        return self.replace_depth(kf_id, pts, kf.valid & np.all(np.isfinite(pts), axis=-1))

    def replace_depth(self, kf_id: int, points_cam: np.ndarray, valid: np.ndarray) -> bool:
        """Swap a keyframe's pointmap for a refined one (same resolution, keyframe frame)."""
        self._settle()
        if kf_id not in self.map:
            return False
        self.map.replace_points(kf_id, points_cam, valid)
        kf = self._keyframes.get(kf_id)
        if kf is not None:
            kf.points_cam = np.asarray(points_cam, dtype=np.float32)
            kf.valid = np.asarray(valid, dtype=bool)
        return True

    # ------------------------------------------------------------------ outputs
    def trajectory(self, corrected: bool = True) -> list[tuple[int, np.ndarray]]:
        """(stamp_ns, T_world_cam) of every processed frame, metric, rigid. With ``corrected``
        each frame follows the refinement corrections of the keyframes around it, interpolated
        in time between the keyframe it was tracked after and the next one; without, these are
        the frontend's poses."""
        self._settle()
        return [(st, rigid_part(T)) for st, T in self._frame_poses(corrected)]

    def _frame_poses(self, corrected: bool) -> list[tuple[int, np.ndarray]]:
        """(stamp_ns, T_world_cam) of every processed frame as a Sim(3) that maps the frame's
        fused depth (built at its scale) into the current world; see :meth:`trajectory`."""
        # this run's keyframes (a loaded map's come from another clock)
        anchors = sorted((kf.stamp_ns, k) for k, kf in self._keyframes.items()
                         if k in self._kf_raw and k >= self._first_own_id)
        corrections = {k: self._correction(k) for _, k in anchors} if corrected else {}
        return [(e.stamp_ns, self._entry_pose(e, anchors, corrections, corrected)) for e in self._traj]

    def _entry_pose(self, e: _TrajEntry, anchors: list, corrections: dict, corrected: bool) -> np.ndarray:
        """One frame's pose (see :meth:`_frame_poses`); ``anchors`` (stamp, id) sorted by
        stamp and their ``corrections``, for the interpolation between keyframes."""
        applied = self.scale if (e.anchor is None or e.anchor not in self._kf_raw) else self._kf_raw[e.anchor][2]
        T = make_T(np.eye(3), np.zeros(3), applied / e.s_built) @ scale_pose(e.T_raw, e.s_built)
        if corrected and e.anchor is not None and e.anchor in self._kf_raw:
            T = self._interpolated_correction(e.stamp_ns, e.anchor, anchors, corrections) @ T
        return T

    def _live_correction(self, e: _TrajEntry) -> Optional[np.ndarray]:
        """The Sim(3) that takes the newest frame from the frontend's world into the corrected
        one (None when there is nothing to correct). The frame is after every keyframe of its
        run, so this is its keyframe's correction, as :meth:`_frame_poses` will give it."""
        if e.anchor is None or e.anchor not in self._kf_raw:
            return None
        C = self._correction(e.anchor)
        applied = self._kf_raw[e.anchor][2]
        if applied != e.s_built:
            C = C @ make_T(np.eye(3), np.zeros(3), applied / e.s_built)
        return None if np.allclose(C, np.eye(4), rtol=0.0, atol=1e-12) else C

    def _interpolated_correction(self, stamp_ns: int, anchor: int, anchors: list, corrections: dict) -> np.ndarray:
        """The correction at ``stamp_ns``: the anchor keyframe's, blended towards the next
        keyframe's by elapsed time (rotation by its axis-angle, translation and scale linearly)."""
        C_a = corrections.get(anchor)
        if C_a is None:
            return self._correction(anchor)
        t_a = self._keyframes[anchor].stamp_ns if anchor in self._keyframes else stamp_ns
        i = bisect.bisect_right(anchors, (stamp_ns, float("inf")))
        if i >= len(anchors) or stamp_ns <= t_a:
            return C_a
        t_b, k_b = anchors[i]
        alpha = (stamp_ns - t_a) / float(t_b - t_a)
        D = invert_T(C_a) @ corrections[k_b]
        s_d, R_d, t_d = sim3_decompose(D)
        step = make_T(rotvec_to_matrix(alpha * matrix_to_rotvec(R_d)), alpha * t_d, s_d ** alpha)
        return C_a @ step

    def keyframes(self, frontend_poses: bool = False) -> list[Keyframe]:
        """The keyframes still in the map, with their current (possibly Sim(3)) map poses, or
        with :meth:`frontend_pose` (what the refiner expects) when ``frontend_poses``."""
        self._settle()
        out = []
        for kf_id in self.map.keyframe_ids():
            kf = self._keyframes.get(kf_id)
            if kf is None:
                continue
            T = self.frontend_pose(kf_id) if frontend_poses else self.map.pose(kf_id)
            out.append(dataclasses.replace(kf, T_world_cam=T))
        return out

    def fused_cloud(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fused map (zero crossings of the TSDF volume): xyz (N,3) float32, rgb (N,3)
        uint8, confidence (N,) float32 (the accumulated fusion weight)."""
        self._settle()
        return self._products().fused_cloud()

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The triangle mesh of the volume in ``recon_world``: vertices (V,3), faces (F,3),
        vertex colours (V,3) uint8, vertex normals (V,3)."""
        self._settle()
        return self._products().mesh()

    def occupancy(self, T_map_recon: Optional[np.ndarray] = None):
        """The 2-D occupancy grid of the surface, cut from the height band of ``map.occupancy``
        in the z-up ``map`` frame (``T_map_recon`` defaults to the static optical -> z-up rotation)."""
        self._settle()
        return self._products().occupancy(T_map_recon)

    def _products(self) -> MapSnapshot:
        """The live volume behind the product methods (no copy)."""
        return MapSnapshot(self.surface, self.cfg)

    def map_snapshot(self) -> "MapSnapshot":
        """The map products of this moment, to be extracted on another thread (a copy of the
        volume; the Reconstructor goes on fusing meanwhile)."""
        self._settle()
        return MapSnapshot(self.surface.snapshot(), self.cfg)

    def stats(self) -> dict:
        ms = self.map.stats()
        sc = self.scaler.state()
        out = {
            "frames": self._frames,
            "keyframes": ms.keyframes,
            "map_points": self.surface.last_point_count,  # of the latest extracted surface
            "map_voxels": ms.voxels,
            "map_bytes": ms.bytes,
            **{f"surface_{k}": v for k, v in dataclasses.asdict(self.surface.stats()).items()},
            "scale": self.scale,
            "scale_std": 0.0 if self.frontend.metric else float(sc.uncertainty),
            "scale_known": bool(self.frontend.metric or sc.known),
            "skipped": sum(self._skips.values()),
            "tracking": self.frontend.status.state,
            "tracking_reason": self.frontend.status.reason,
            "lost_frames": self._lost,
        }
        out.update({f"skipped_{k}": v for k, v in self._skips.items()})
        out.update({f"frontend_{k}": v for k, v in self.frontend.stats().items()
                    if isinstance(v, (int, float, bool))})
        out.update({f"ms_{k}": v for k, v in self._last_ms.items()})
        return out

    def save(self, directory) -> dict[str, Path]:
        """Write map.ply, mesh.ply, the occupancy grid, trajectory.tum, keyframes.tum,
        keyframes/ and state/ (as configured by ``output``); a folder with both keyframes/
        and state/ can be continued (:meth:`load_map`)."""
        return self.save_snapshot().write(directory)

    def save_snapshot(self) -> SaveSnapshot:
        """What :meth:`save` writes, frozen now (a copy of the volume; the keyframes, poses and
        relocalization database as they are), to be written on another thread."""
        self._settle()
        self.surface.work()  # a saved map has every correction applied
        reloc = self.frontend.export_map() if self.cfg.output.map_state else None
        return SaveSnapshot(self.surface.snapshot(), copy.deepcopy(self.cfg), poses=self.trajectory(),
                            keyframe_list=self.keyframes(), frontend=self.frontend.name, relocalization=reloc)
