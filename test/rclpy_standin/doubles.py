"""Test doubles of the core for the node tests: FakeCoreConfig, FakeReconstructor, FakeRefiner.

They follow the contracts the nodes are written against (``Reconstructor.process`` -> StepResult,
``fused_cloud``, ``keyframes``, ``apply_corrections``, ``save`` ...; ``Refiner.align`` /
``refine``) with trivially predictable outputs: the camera of frame i sits at
``(0, 0, step_m * i)`` in ``recon_world`` (forward along the optical axis) and sees a small
fronto-parallel grid of points 2 m ahead. They are not reconstructions; they let the tests
compute every expected output independently.
"""
from __future__ import annotations

import dataclasses

import io
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from recon_ros.config import group, param
from recon_ros.geometry.camera import PixelMap, make_K
from recon_ros.geometry.transforms import make_T, transform_points
from recon_ros.io.atomic import write_text_atomic
from recon_ros.mapping.frame import Frame, FrameEstimate, Keyframe
from recon_ros.mapping.occupancy import OccupancyGrid

GRID_H, GRID_W = 4, 5


@dataclass
class _FakeModel:
    """Model."""

    device: str = param("cpu", "torch device")
    checkpoint: str = param("", "checkpoint path")


@dataclass
class _FakeMap:
    """Map."""

    voxel_size_m: float = param(0.02, "voxel edge", min=0.001, max=1.0, dynamic=True)
    max_points: int = param(100000, "cap", min=1, max=10_000_000, dynamic=True)


@dataclass
class FakeCoreConfig:
    """Test double of the core ReconConfig (two groups, one dynamic parameter each)."""

    model: _FakeModel = group(_FakeModel)
    map: _FakeMap = group(_FakeMap)


@dataclass
class FakeStepResult:
    estimates: list
    provisional: Optional[FrameEstimate]
    new_keyframes: list
    map_changed: bool
    timings_ms: dict = field(default_factory=dict)
    tracking: str = "tracking"  # as the core's StepResult: tracking / lost / relocalized
    tracking_reason: str = ""
    skipped: Optional[str] = None
    keyframes_moved: bool = False


def camera_pose(i: int, step_m: float = 0.1) -> np.ndarray:
    """T_recon_cam of frame number i (after the last reset)."""
    return make_T(np.eye(3), [0.0, 0.0, step_m * i])


def grid_points_cam() -> np.ndarray:
    u, v = np.meshgrid(np.arange(GRID_W, dtype=np.float32), np.arange(GRID_H, dtype=np.float32))
    return np.stack([0.1 * u, 0.1 * v, np.full_like(u, 2.0)], axis=-1)


@dataclass
class FakeMapSnapshot:
    """Test double of the core's MapSnapshot: the products of the frames fused so far (a
    frozen list of their points). ``threads`` records which thread extracted them."""

    points: list
    threads: list = field(default_factory=list)

    def fused_cloud(self):
        self.threads.append(threading.current_thread().name)
        if not self.points:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.float32)
        xyz = np.concatenate(self.points).astype(np.float32)
        return xyz, np.full((len(xyz), 3), 200, np.uint8), np.full(len(xyz), 3.0, np.float32)

    def mesh(self):
        """One triangle per fused frame's first three grid points."""
        tris = [p[:3] for p in self.points]
        verts = np.concatenate(tris).astype(np.float32) if tris else np.zeros((0, 3), np.float32)
        faces = np.arange(len(verts), dtype=np.int64).reshape(-1, 3)
        return verts, faces, np.full((len(verts), 3), 200, np.uint8), np.zeros_like(verts)

    def occupancy(self, T_map_recon=None):
        """A 2 x 3 grid with one occupied cell per fused frame (capped), origin at the map origin."""
        data = np.zeros((2, 3), np.int8)
        data.reshape(-1)[:min(len(self.points), 6)] = 100
        return OccupancyGrid(data=data, resolution=0.1, origin=(0.0, 0.0, 0.0))


class FakeReconstructor:
    """Test double of the core Reconstructor. ``delay_s`` makes ``estimate`` slow like a GPU model;
    frames whose stamps are in ``lost`` come back as the core reports a lost frame: state
    ``lost``, no estimate, nothing entering the map. ``gaps`` counts ``notify_gap`` calls;
    ``on_finish`` (if set) is called by ``finish``, the second half of a step."""

    loaded_from = None  # no saved map (the core's Reconstructor.loaded_from)
    localizing = False

    def __init__(self, cfg, delay_s: float = 0.0, keyframe_every: int = 2) -> None:
        self.cfg = cfg
        self.lost: set[int] = set()
        self.delay_s = delay_s
        self.keyframe_every = keyframe_every
        self.processed: list[int] = []  # stamps, in processing order
        self.frames: list[Frame] = []
        self.resets = 0
        self.gaps = 0
        self.corrections: list[dict] = []
        self.threads: set[str] = set()
        self._kfs: list[Keyframe] = []
        self._front: dict[int, np.ndarray] = {}  # keyframe id -> pose before corrections
        self.refined: list = []  # (stamp_ns, points) handed to replace_depth_at
        self._points: list[np.ndarray] = []
        self._n = 0
        self.on_finish: Optional[Callable[[], None]] = None

    @property
    def scale(self) -> float:
        return 1.0

    def process(self, frame: Frame) -> FakeStepResult:
        return self.finish(self.estimate(frame))

    def finish(self, result: FakeStepResult) -> FakeStepResult:
        if self.on_finish is not None:
            self.on_finish()
        return result

    def estimate(self, frame: Frame) -> FakeStepResult:
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        if frame.stamp_ns in self.lost:
            self.processed.append(frame.stamp_ns)
            return FakeStepResult([], None, [], False, {"total": 1.0}, tracking="lost",
                                  tracking_reason="test double: frame marked lost")
        i = self._n
        self._n += 1
        self.processed.append(frame.stamp_ns)
        self.frames.append(frame)
        T = camera_pose(i)
        pts_cam = grid_points_cam()
        pts = transform_points(T, pts_cam)
        conf = np.full((GRID_H, GRID_W), 3.0, np.float32)
        colors = np.full((GRID_H, GRID_W, 3), 200, np.uint8)
        K = make_K(10.0, 10.0, 2.0, 1.5)
        est = FrameEstimate(stamp_ns=frame.stamp_ns, index=i, points=pts, confidence=conf, colors=colors,
                            T_world_cam=T, K_model=K, pixel_map=PixelMap.identity(GRID_W, GRID_H), frame=frame)
        self._points.append(pts.reshape(-1, 3))
        new = []
        if i % self.keyframe_every == 0:
            kf = Keyframe(id=len(self._kfs), stamp_ns=frame.stamp_ns, rgb=colors, points_cam=pts_cam,
                          confidence=conf, colors=colors, K=K, K_image=K,
                          pixel_map=PixelMap.identity(GRID_W, GRID_H), T_world_cam=T,
                          valid=np.ones((GRID_H, GRID_W), bool))
            self._kfs.append(kf)
            self._front[kf.id] = T
            new.append(kf)
        return FakeStepResult([est], None, new, True, {"total": 1.0})

    def notify_gap(self) -> None:
        self.gaps += 1

    def map_snapshot(self) -> "FakeMapSnapshot":
        return FakeMapSnapshot(list(self._points))

    def mesh(self):
        return self.map_snapshot().mesh()

    def occupancy(self, T_map_recon=None):
        return self.map_snapshot().occupancy(T_map_recon)

    def flush(self) -> FakeStepResult:
        return FakeStepResult([], None, [], False)

    def reset(self) -> None:
        self.resets += 1
        self._n = 0
        self._kfs, self._points = [], []
        self._front = {}

    def fused_cloud(self):
        return self.map_snapshot().fused_cloud()

    def trajectory(self):
        return [(kf.stamp_ns, kf.T_world_cam) for kf in self._kfs]

    def keyframes(self, frontend_poses: bool = False):
        if not frontend_poses:
            return list(self._kfs)
        return [dataclasses.replace(kf, T_world_cam=self._front[kf.id]) for kf in self._kfs]

    def replace_depth_at(self, stamp_ns: int, points_cam) -> bool:
        self.refined.append((stamp_ns, np.asarray(points_cam)))
        return any(kf.stamp_ns == stamp_ns for kf in self._kfs)

    def apply_corrections(self, poses: dict) -> int:
        self.corrections.append(poses)
        n = 0
        for kf in self._kfs:
            if kf.stamp_ns in poses:
                kf.T_world_cam = poses[kf.stamp_ns]
                n += 1
        return n

    def save(self, directory) -> dict:
        return self.save_snapshot().write(directory)

    def save_snapshot(self) -> "FakeSaveSnapshot":
        """Like the core: the map frozen now, written later (by the caller's thread)."""
        xyz, _, _ = self.fused_cloud()
        return FakeSaveSnapshot(np.array(xyz), list(self.trajectory()))

    def stats(self) -> dict:
        return {"frames": float(self._n), "keyframes": float(len(self._kfs)),
                "map_points": float(sum(len(p) for p in self._points)), "scale": 1.0}


@dataclass
class FakeSaveSnapshot:
    """Test double of the core's SaveSnapshot: map.ply (ASCII points) and trajectory.tum."""

    xyz: np.ndarray
    traj: list

    @property
    def surface(self) -> Any:
        return types.SimpleNamespace(last_point_count=len(self.xyz))

    def write(self, directory) -> dict:
        directory = Path(directory)
        buf = io.StringIO()
        np.savetxt(buf, self.xyz, fmt="%.6f")
        ply = write_text_atomic(directory / "map.ply", "ply\nformat ascii 1.0\nelement vertex %d\n"
                                "property float x\nproperty float y\nproperty float z\nend_header\n"
                                % len(self.xyz) + buf.getvalue())
        rows = np.array([[s * 1e-9, T[0, 3], T[1, 3], T[2, 3], 0, 0, 0, 1] for s, T in self.traj]).reshape(-1, 8)
        buf = io.StringIO()
        np.savetxt(buf, rows, fmt="%.9f")
        tum = write_text_atomic(directory / "trajectory.tum", buf.getvalue())
        return {"map": ply, "trajectory": tum}


@dataclass
class FakeAlignResult:
    corrections: dict
    stats: dict


@dataclass
class FakeRefinedDepth:
    depth: np.ndarray
    points_cam: np.ndarray
    replaced: np.ndarray


class FakeRefiner:
    """Test double of refine.stages.Refiner: a fixed correction (a shift) for every keyframe;
    ``refine`` returns each keyframe's depth plus ``depth_offset_m``; ``transients`` drops the
    first pixel column when ``drop_first_column``. ``gate`` (an Event), when given, holds
    ``align`` until it is set, to observe the busy state. ``during_stage``, when given, is
    called inside ``align`` and ``refine`` (e.g. to make a FakeResidentMemory hold working memory)."""

    def __init__(self, cfg, shift=(0.0, 0.0, 0.5), depth_offset_m: float = 0.1,
                 gate: Optional[threading.Event] = None, drop_first_column: bool = False,
                 during_stage: Optional[Callable[[], None]] = None) -> None:
        self.cfg = cfg
        self.during_stage = during_stage
        self.drop_first_column = drop_first_column
        self.C = make_T(np.eye(3), shift)
        self.depth_offset_m = depth_offset_m
        self.gate = gate
        self.calls: list[str] = []
        self.cached: set = set()  # ids "cached" by align/refine, dropped by forget (like the real caches)
        self.forgets: list[list[int]] = []

    def forget(self, keep_ids) -> None:
        self.forgets.append(sorted(keep_ids))
        self.cached &= set(keep_ids)

    def align(self, keyframes, masks=None) -> FakeAlignResult:
        self.calls.append("align")
        self.cached |= {kf.id for kf in keyframes}
        if self.during_stage is not None:
            self.during_stage()
        if self.gate is not None:
            self.gate.wait(10.0)
        return FakeAlignResult({kf.id: self.C for kf in keyframes}, {"keyframes": len(keyframes)})

    def refine(self, keyframes, masks=None) -> dict:
        self.calls.append("refine")
        self.cached |= {kf.id for kf in keyframes}
        if self.during_stage is not None:
            self.during_stage()
        out = {}
        for kf in keyframes:
            pts = kf.points_cam * ((kf.points_cam[..., 2:] + self.depth_offset_m) / kf.points_cam[..., 2:])
            out[kf.id] = FakeRefinedDepth(depth=np.where(kf.valid, pts[..., 2], np.nan).astype(np.float32),
                                          points_cam=pts.astype(np.float32), replaced=kf.valid.copy())
        return out

    def transients(self, keyframes, masks=None) -> dict:
        """``drop_first_column``: the first pixel column of every keyframe is a transient."""
        self.calls.append("transients")
        if not self.drop_first_column:
            return {}
        out = {}
        for kf in keyframes:
            drop = np.zeros(kf.valid.shape, bool)
            drop[:, 0] = True
            out[kf.id] = drop
        return out


class FakeResidentMemory:
    """Test double of the resident-set probe (``recon_ros.ros.memory.rss_bytes``): ``base`` bytes
    plus what ``held()`` returns (e.g. the keyframe store's bytes) plus ``working``.
    ``hold_working(n)`` makes a stage's working memory visible to one sample of the probe, then
    gives it back, as a stage that allocates and frees would."""

    def __init__(self, base: int, held: Optional[Callable[[], int]] = None) -> None:
        self.base = int(base)
        self.held = held or (lambda: 0)
        self.working = 0
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.base + int(self.held()) + self.working

    def hold_working(self, n: int, timeout_s: float = 5.0) -> None:
        self.working = int(n)
        seen = self.reads
        deadline = time.monotonic() + timeout_s
        while self.reads == seen and time.monotonic() < deadline:
            time.sleep(0.005)
        self.working = 0
