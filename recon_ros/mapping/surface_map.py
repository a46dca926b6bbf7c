"""The fused surface map: every tracked frame fused into one sparse TSDF volume.

:class:`SurfaceMap` owns a :class:`recon_ros.mapping.tsdf.TSDFVolume` and turns frontend
estimates into depth images along each pixel's ray (RGB-D: the measured depth; Spann3R: the
pointmap's z in the frame's own camera, its confidence as weight), fused at
``map.fusion_max_width``. Weight of a reading at a voxel of depth z: confidence /
(sigma(min(z, d)) / sigma(1 m))^2 with the depth noise model of the map config; truncation
``max(truncation_voxels * voxel, truncation_sigmas * sigma(d))``.

Loop closure without rebuilding: the map keeps each fused frame (its fused-resolution depth,
colours and weights, and the pose it was fused with) in a frame store bounded by
``map.frame_store_mib``. When background refinement moves keyframes, :meth:`repose` receives
the new poses of the frames; a frame whose pose changed is removed from the volume (fused
again with negative weight, exact because every update is additive) and fused under its new
pose. Only moved frames are touched. Frames released from the store keep their fused pose.
Re-fusing can be spread over time: :meth:`repose` with a budget queues what it has no time
for, and :meth:`work` continues it (the Reconstructor calls it after every frame).

Bounded memory: when the volume exceeds ``map.max_memory_mib`` the least recently seen blocks
leave it, are counted and logged, and are written to ``map.evict_directory`` when set.
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from recon_ros.geometry.transforms import sim3_decompose
from recon_ros.io.arrays import write_npz
from recon_ros.mapping.frame import FrameEstimate
from recon_ros.mapping.schema import NOISE_POWER, MapConfig
from recon_ros.mapping.tsdf import BLOCK, VPB, TransientRule, TSDFVolume

log = logging.getLogger(__name__)


def resolve_device(name: str, model_device: Optional[str] = None) -> torch.device:
    """The torch device of the volume for the ``map.device`` setting."""
    if name in ("", "auto"):
        if model_device not in (None, "", "auto"):
            return torch.device(model_device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def noise_std(depth: np.ndarray | torch.Tensor, sigma_1m: float, model: str):
    """Depth noise standard deviation at ``depth`` for a sensor with ``sigma_1m`` at 1 m."""
    if model == "quadratic":
        return sigma_1m * depth * depth
    if model == "linear":
        return sigma_1m * depth
    return sigma_1m + 0.0 * depth


@dataclass
class FusedFrame:
    """One frame as it was fused: what :meth:`SurfaceMap.repose` needs to move it."""

    stamp_ns: int
    depth: np.ndarray  # (h, w) float16 camera z (world units at fusion time), 0 = invalid
    colors: np.ndarray  # (h, w, 3) uint8
    confidence: np.ndarray  # (h, w) float16
    K: np.ndarray  # (3, 3) of the fused resolution
    T_world_cam: np.ndarray  # 4x4 (rigid or Sim(3)) it was fused with
    tick: int = 0  # the volume's integration tick it was fused at

    @property
    def nbytes(self) -> int:
        return int(self.depth.nbytes + self.colors.nbytes + self.confidence.nbytes + 200)


@dataclass
class SurfaceStats:
    frames_fused: int
    frames_stored: int
    frames_released: int  # left the frame store: can no longer be re-posed
    frames_reposed: int
    frames_pending: int  # corrected, waiting to be re-posed
    blocks: int
    bytes: int
    evicted_blocks: int
    last_fusion_ms: float


def subsample(depth: np.ndarray, colors: np.ndarray, confidence: np.ndarray, K: np.ndarray,
              max_width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images and intrinsics at ``max_width`` or less: every f-th pixel (the centre one of each
    f x f cell), so depth edges are never blurred; 0 = unchanged."""
    W = depth.shape[1]
    f = max(1, math.ceil(W / max_width)) if max_width > 0 else 1
    if f == 1:
        return depth, colors, confidence, np.asarray(K, dtype=np.float64)
    o = f // 2
    sl = (slice(o, None, f), slice(o, None, f))
    K = np.array(K, dtype=np.float64, copy=True)
    K[0, 0] /= f
    K[1, 1] /= f
    K[0, 2] = (K[0, 2] - o) / f
    K[1, 2] = (K[1, 2] - o) / f
    return (np.ascontiguousarray(depth[sl]), np.ascontiguousarray(colors[sl]),
            np.ascontiguousarray(confidence[sl]), K)


def estimate_depth(est: FrameEstimate, min_confidence: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An estimate as a depth image along its pixel rays: (depth (h, w) float32, the camera z
    of each point, 0 = invalid; colours (h, w, 3) uint8; confidence (h, w) float32 (0 where
    invalid); K (3, 3)) at model resolution."""
    pts = np.asarray(est.points, dtype=np.float32)
    s, R, t = sim3_decompose(np.asarray(est.T_world_cam, dtype=np.float64))
    ok = est.valid_mask()
    conf = np.asarray(est.confidence, dtype=np.float32)
    if min_confidence > 0:
        ok &= conf >= min_confidence
    r3 = (R[:, 2] / s).astype(np.float32)  # camera z = row 3 of R^T (p - t) / s
    z = ((pts[..., 0] - np.float32(t[0])) * r3[0] + (pts[..., 1] - np.float32(t[1])) * r3[1]
         + (pts[..., 2] - np.float32(t[2])) * r3[2])
    ok &= np.isfinite(z) & (z > 0)
    return (np.where(ok, z, 0.0).astype(np.float32), np.asarray(est.colors, dtype=np.uint8),
            np.where(ok, conf, 0.0).astype(np.float32), np.asarray(est.K_model, dtype=np.float64))


class SurfaceMap:
    """Every tracked frame fused into one TSDF volume (see the module docstring)."""

    def __init__(self, config: Optional[MapConfig] = None, device: str | torch.device = "cpu") -> None:
        self.config = config if config is not None else MapConfig()
        self.device = torch.device(device)
        self.voxel = float(self.config.voxel_size_m)
        self.volume = TSDFVolume(self.voxel, device=self.device, min_weight=self.config.min_weight,
                                 violation_truncations=self.config.transients.violation_truncations)
        self._reset_counters()
        self._sync_rules()

    def _reset_counters(self) -> None:
        self._frames: OrderedDict[int, FusedFrame] = OrderedDict()
        self._pending: OrderedDict[int, np.ndarray] = OrderedDict()  # stamp -> pose to re-fuse at
        self._store_bytes = 0
        self._fused = 0
        self._released = 0
        self._reposed = 0
        self._evicted = 0
        self._evict_files = 0
        self._last_ms = 0.0
        self._cache: dict[str, tuple] = {}
        self.last_point_count = 0  # points of the latest extraction (stats without extracting)

    def clear(self) -> None:
        self.volume.clear()
        self._reset_counters()

    # ------------------------------------------------------------------ fusion
    def _tensors(self, depth: np.ndarray, colors: np.ndarray, conf: np.ndarray):
        cfg = self.config
        d = torch.as_tensor(np.asarray(depth, dtype=np.float32), device=self.device)
        c = torch.as_tensor(np.asarray(conf, dtype=np.float32), device=self.device)
        if cfg.max_depth_m > 0:
            d = torch.where(d <= cfg.max_depth_m, d, torch.zeros_like(d))
        sig = noise_std(d, cfg.depth_noise_m, cfg.depth_noise_model)
        valid = d > 0
        w = torch.where(valid, c, torch.zeros_like(c))
        lo = cfg.truncation_voxels * self.voxel
        hi = max(lo, cfg.truncation_max_voxels * self.voxel)
        trunc = torch.clamp(cfg.truncation_sigmas * sig, min=lo, max=hi)
        col = torch.as_tensor(np.asarray(colors), device=self.device).to(torch.float32)
        n = torch.where(valid, c.clamp(max=1.0), torch.zeros_like(c))
        return d, col, w, n, trunc

    def _integrate(self, fr: FusedFrame, T: np.ndarray, sign: float) -> int:
        """Fuse (sign 1: records the tick in ``fr``) or remove (sign -1) a stored frame."""
        d, col, w, n, trunc = self._tensors(fr.depth.astype(np.float32), fr.colors,
                                            fr.confidence.astype(np.float32))
        tick = self.volume.integrate(d, fr.K, T, trunc, colors=col, weights=w, counts=n, sign=sign,
                                     noise_power=NOISE_POWER[self.config.depth_noise_model],
                                     fused_at=fr.tick)
        if sign > 0:
            fr.tick = tick
        return tick

    def integrate(self, est: FrameEstimate) -> bool:
        """Fuse one final, tracked, metric estimate. Returns False when it had no valid depth."""
        depth, colors, conf, K = estimate_depth(est, self.config.min_confidence)
        return self.integrate_depth(int(est.stamp_ns), depth, colors, conf, K, est.T_world_cam)

    def integrate_depth(self, stamp_ns: int, depth: np.ndarray, colors: np.ndarray,
                        confidence: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray) -> bool:
        """Fuse one depth image (H, W camera z, <= 0 or NaN invalid) with its colours
        (H, W, 3 uint8), per-pixel confidence (H, W; 0 = ignore) and intrinsics, seen from
        ``T_world_cam`` (rigid or Sim(3)). Returns False when it had no valid depth."""
        t0 = time.perf_counter()
        depth, colors, confidence, K = subsample(np.asarray(depth, dtype=np.float32),
                                                 np.asarray(colors, dtype=np.uint8),
                                                 np.asarray(confidence, dtype=np.float32), K,
                                                 self.config.fusion_max_width)
        depth = np.nan_to_num(depth, nan=0.0)
        if not np.any(depth > 0):
            return False
        fr = FusedFrame(int(stamp_ns), depth.astype(np.float16), colors, confidence.astype(np.float16), K,
                        np.array(T_world_cam, dtype=np.float64))
        # fuse exactly what is stored (float16), so that removing it later is exact
        self._integrate(fr, fr.T_world_cam, 1.0)
        self._fused += 1
        self._cache.clear()
        self._store(fr)
        self._enforce_memory()
        self._last_ms = (time.perf_counter() - t0) * 1e3
        return True

    def _store(self, fr: FusedFrame) -> None:
        cap = self.config.frame_store_mib * 1024 * 1024
        if fr.stamp_ns in self._frames:
            self._store_bytes -= self._frames.pop(fr.stamp_ns).nbytes
        self._frames[fr.stamp_ns] = fr
        self._store_bytes += fr.nbytes
        while self._frames and self._store_bytes > cap:
            _, old = self._frames.popitem(last=False)
            self._store_bytes -= old.nbytes
            self._released += 1
            if self._released == 1 or self._released % 500 == 0:
                log.info("map frame store over %.0f MiB: the oldest fused frames keep their pose "
                         "from now on (%d released so far)", self.config.frame_store_mib, self._released)

    def stored_poses(self) -> dict[int, np.ndarray]:
        """Pose each stored frame was fused with, by stamp."""
        return {s: fr.T_world_cam for s, fr in self._frames.items()}

    def repose(self, poses: dict[int, np.ndarray], tolerance_m: Optional[float] = None,
               budget_ms: Optional[float] = None) -> int:
        """Move stored frames to new poses (by stamp): each frame whose pose moved by more than
        ``tolerance_m`` (default 5 % of a voxel) anywhere within its depth range is removed
        and fused again. With ``budget_ms`` only that much time is spent now and the rest is
        queued for :meth:`work` (so that a large correction does not stall the caller);
        without, everything is done at once. Returns how many frames moved."""
        tolerance_m = 0.05 * self.voxel if tolerance_m is None else float(tolerance_m)
        moved = 0
        for stamp, T in poses.items():
            fr = self._frames.get(int(stamp))
            if fr is None:
                continue
            T = np.asarray(T, dtype=np.float64)
            if _pose_change(fr.T_world_cam, T, float(fr.depth.max())) <= tolerance_m:
                self._pending.pop(fr.stamp_ns, None)  # back where it is fused
                continue
            self._pending[fr.stamp_ns] = T.copy()
            moved += 1
        if moved:
            log.info("map: %d fused frames to re-pose (%d pending)", moved, len(self._pending))
        self.work(budget_ms)
        return moved

    @property
    def pending(self) -> int:
        """Frames waiting to be re-posed (see :meth:`repose`)."""
        return len(self._pending)

    def work(self, budget_ms: Optional[float] = None) -> int:
        """Re-pose queued frames, oldest correction first, until ``budget_ms`` is spent (at
        least one frame; all of them when None). Returns how many were re-posed."""
        t0 = time.perf_counter()
        done = 0
        while self._pending:
            if budget_ms is not None and done and (time.perf_counter() - t0) * 1e3 >= budget_ms:
                break
            stamp, T = self._pending.popitem(last=False)
            fr = self._frames.get(stamp)
            if fr is None:
                continue  # released from the store meanwhile: it keeps its fused pose
            self._integrate(fr, fr.T_world_cam, -1.0)
            self._integrate(fr, T, 1.0)
            fr.T_world_cam = T
            done += 1
        if done:
            self._reposed += done
            self._cache.clear()
            self._enforce_memory()
            log.debug("map: %d frames re-posed in %.0f ms (%d pending)", done,
                      (time.perf_counter() - t0) * 1e3, len(self._pending))
        return done

    # ------------------------------------------------------------------ memory
    def _enforce_memory(self) -> None:
        cap = self.config.max_memory_mib * 1024 * 1024
        vol = self.volume
        if vol.nbytes <= cap:
            return
        per_block = vol.nbytes / max(vol.n, 1)
        target = int(0.9 * cap / per_block)  # leave headroom so that eviction is not per frame
        n_out = vol.n - target
        if n_out <= 0:
            return
        order = torch.argsort(vol.last_seen[:vol.n])
        out = vol.remove_blocks(order[:n_out])
        self._evicted += n_out
        self._cache.clear()
        directory = self.config.evict_directory
        where = "dropped"
        if directory:
            from recon_ros.io.atomic import atomic_path
            path = Path(directory).expanduser() / f"blocks_{self._evict_files:06d}.npz"
            with atomic_path(path, suffix=".npz") as tmp:
                write_npz(tmp, out, compress_floats=True)  # mostly empty voxels
            self._evict_files += 1
            where = f"written to {path}"
        log.info("map over %.0f MiB: %d least recently seen blocks left the live map (%s; %d so far)",
                 self.config.max_memory_mib, n_out, where, self._evicted)

    # ------------------------------------------------------------------ saving
    def export_volume(self) -> dict[str, np.ndarray]:
        """Every block of the volume as arrays (coords, tsdf, weight, count, colour uint8,
        voxel size), the layout of the evicted-block files."""
        return self.volume.block_arrays()

    def load_volume(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the volume by saved blocks (what :meth:`export_volume` wrote). The loaded
        surface has no stored frames: corrections move only what is fused after it."""
        n = len(np.asarray(arrays["coords"]))
        shapes = {"coords": (n, 3), "tsdf": (n, VPB), "weight": (n, VPB), "count": (n, VPB),
                  "color": (n, VPB, 3), "free": (n, VPB)}
        for name, shape in shapes.items():
            if name == "free" and name not in arrays:
                continue  # saved before violations were kept: none
            if np.shape(arrays[name]) != shape:
                raise ValueError(f"volume: {name} has shape {np.shape(arrays[name])}, expected {shape}")
        if int(arrays["block"]) != BLOCK or not np.isclose(float(arrays["voxel_size"]), self.voxel):
            raise ValueError(f"volume: blocks of {int(arrays['block'])} voxels of "
                             f"{float(arrays['voxel_size'])} m, expected {BLOCK} of {self.voxel} m")
        self.clear()
        self.volume.insert_blocks(arrays)
        self._enforce_memory()

    def snapshot(self) -> "SurfaceMap":
        """A copy of the volume alone (no stored frames, nothing pending), whose products
        (:meth:`points`, :meth:`mesh`) can be extracted on another thread."""
        out = SurfaceMap.__new__(SurfaceMap)
        out.config, out.device, out.voxel = self.config, self.device, self.voxel
        out.volume = self.volume.snapshot()
        out._reset_counters()
        out._cache = dict(self._cache)  # products already extracted are immutable: share them
        return out

    # ------------------------------------------------------------------ products
    def _sync_rules(self) -> None:
        """The extraction rules of the volume from the (dynamic) map config."""
        self.volume.min_weight = float(self.config.min_weight)
        tc = self.config.transients
        rule = TransientRule(min_violations=float(tc.min_violations), vote_ratio=float(tc.vote_ratio),
                             radius=int(tc.radius_voxels)) if tc.enabled else None
        if rule != self.volume.transients:
            self.volume.transients = rule
            self._cache.pop("points", None)
            self._cache.pop("mesh", None)

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Surface points: xyz float32 (N, 3), normals float32 (N, 3), rgb uint8 (N, 3),
        weight float32 (N,) (cached until the map changes)."""
        self._sync_rules()
        if "points" not in self._cache:
            self._cache["points"] = self.volume.extract_points()
            self.last_point_count = int(len(self._cache["points"][0]))
        return self._cache["points"]

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Triangle mesh: vertices (V, 3), faces (F, 3), rgb (V, 3), normals (V, 3)."""
        self._sync_rules()
        if "mesh" not in self._cache:
            self._cache["mesh"] = self.volume.extract_mesh()
        return self._cache["mesh"]

    def stats(self) -> SurfaceStats:
        return SurfaceStats(frames_fused=self._fused, frames_stored=len(self._frames),
                            frames_released=self._released, frames_reposed=self._reposed,
                            frames_pending=len(self._pending),
                            blocks=self.volume.n, bytes=self.volume.nbytes + self._store_bytes,
                            evicted_blocks=self._evicted, last_fusion_ms=self._last_ms)


def _pose_change(A: np.ndarray, B: np.ndarray, depth: float) -> float:
    """Largest displacement of a point within ``depth`` of the camera between poses A and B."""
    D = np.asarray(B) @ np.linalg.inv(np.asarray(A))
    s, R, t = sim3_decompose(D)
    # a point p (|p - c| <= depth around the camera centre c) moves by (sR - I) p + t
    c = np.asarray(A)[:3, 3]
    M = s * R - np.eye(3)
    return float(np.linalg.norm(M @ c + t) + np.linalg.norm(M, 2) * depth)
