"""The keyframe-anchored fused point map.

Points are stored per keyframe ("blocks") in that keyframe's camera coordinates, together
with the keyframe's current pose ``T_world_cam`` (rigid or Sim(3)). The fused cloud is the
union of all posed blocks, voxel-downsampled with confidence-weighted averaging of positions
and colours.

Incremental fusion: a global accumulator holds, per voxel (sorted int64 keys), the
confidence-weighted sums of position and colour, the weight and the point count over all
blocks. A block's per-voxel contribution under its pose is a deterministic function of its
stored points and pose, so it is recomputed when needed rather than cached (that would
triple the memory): adding a keyframe costs O(its points + voxels in the map) (a sorted
merge); re-anchoring, replacing or removing one keyframe subtracts its old contribution and
adds the new one, without touching the other blocks. ``fused()`` divides the sums (cached
until the map changes).

Storage: a block keeps only the keyframe's valid pixels with confidence >= ``min_confidence``,
averaged (confidence-weighted) on a grid of ``block_voxel_fraction x voxel_size`` in keyframe
coordinates, with each stored point's summed weight and count so that fusing it is the same
as fusing its pixels. Masked pixels never enter (they are invalid in the Keyframe).

Caps: ``fused()`` returns at most ``max_points`` voxels, dropping those with the lowest mean
confidence. When the stored bytes (blocks and accumulator) exceed ``max_bytes`` after an
insertion, the *oldest* keyframes (by insertion order) leave the map until it fits; this is
logged and counted (``evicted_keyframes``). For ``replace_points`` without new colours the
map keeps references (not copies, not counted) to the keyframe's organised colour and
confidence arrays, which the keyframe store owns anyway.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from recon_ros.errors import UserInputError
from recon_ros.geometry.transforms import transform_points
from recon_ros.mapping.frame import Keyframe
from recon_ros.mapping.schema import MapConfig

log = logging.getLogger(__name__)

_BITS = 21
_OFF = 1 << (_BITS - 1)
_LIMIT = _OFF - 1  # voxel indices must lie in [-_LIMIT, _LIMIT]


def voxel_keys(points: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """int64 voxel keys of (N, 3) points and the mask of points inside the addressable range.

    The range is +-2^20 voxels per axis (+-20 km at 2 cm); points outside it are dropped.
    """
    ijk = np.floor(np.asarray(points, dtype=np.float64) / voxel)
    ok = np.all(np.abs(ijk) <= _LIMIT, axis=1)
    ijk = ijk[ok].astype(np.int64) + _OFF
    keys = (ijk[:, 0] << (2 * _BITS)) | (ijk[:, 1] << _BITS) | ijk[:, 2]
    return keys, ok


def _reduce(keys: np.ndarray, values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum ``values`` (N, C) and ``counts`` (N,) per unique key: (sorted keys, sums, counts)."""
    uk, inv = np.unique(keys, return_inverse=True)
    inv = inv.reshape(-1)
    sums = np.empty((len(uk), values.shape[1]), dtype=np.float64)
    for c in range(values.shape[1]):
        sums[:, c] = np.bincount(inv, weights=values[:, c], minlength=len(uk))
    cnt = np.bincount(inv, weights=counts, minlength=len(uk)).astype(np.int64)
    return uk, sums, cnt


@dataclass
class MapStats:
    keyframes: int
    stored_points: int  # points kept in keyframe blocks
    voxels: int  # voxels in the accumulator (before the max_points cap)
    bytes: int  # memory of blocks and accumulator
    evicted_keyframes: int
    dropped_points: int  # points outside the addressable voxel range
    last_update_ms: float


@dataclass
class _Block:
    order: int
    points: np.ndarray  # (N, 3) float32, keyframe coordinates
    colors: np.ndarray  # (N, 3) uint8
    weight: np.ndarray  # (N,) float32, summed confidence of the pixels this point stands for
    count: np.ndarray  # (N,) int32, number of those pixels
    T: np.ndarray  # 4x4 float64, the keyframe's pose
    src_colors: Optional[np.ndarray] = None  # organised keyframe colours (for replace_points)
    src_conf: Optional[np.ndarray] = None
    T_added: Optional[np.ndarray] = None  # the pose its points are in the accumulator with

    @property
    def nbytes(self) -> int:
        return int(self.points.nbytes + self.colors.nbytes + self.weight.nbytes + self.count.nbytes
                   + self.T.nbytes)


class KeyframeMap:
    """Per-keyframe point blocks, fused on demand (see the module docstring)."""

    def __init__(self, config: Optional[MapConfig] = None) -> None:
        self.config = config if config is not None else MapConfig()
        self.voxel = float(self.config.voxel_size_m)
        self.clear()

    def clear(self) -> None:
        self._blocks: dict[int, _Block] = {}
        self._order = 0
        self._keys = np.zeros(0, dtype=np.int64)
        self._sums = np.zeros((0, 7), dtype=np.float64)
        self._counts = np.zeros(0, dtype=np.int64)
        self._cache: Optional[tuple] = None
        self._stale: set[int] = set()  # blocks whose pose changed since they were accumulated
        self._evicted = 0
        self._dropped = 0
        self._last_ms = 0.0

    # -- queries -------------------------------------------------------------------------------
    def __contains__(self, kf_id: int) -> bool:
        return kf_id in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def keyframe_ids(self) -> list[int]:
        return sorted(self._blocks, key=lambda k: self._blocks[k].order)

    def pose(self, kf_id: int) -> np.ndarray:
        return self._block(kf_id).T.copy()

    def block_points_world(self, kf_id: int) -> np.ndarray:
        """The stored points of one keyframe in the world frame (float32)."""
        b = self._block(kf_id)
        return transform_points(b.T, b.points)

    def stats(self) -> MapStats:
        self._settle()
        return MapStats(keyframes=len(self._blocks),
                        stored_points=int(sum(len(b.points) for b in self._blocks.values())),
                        voxels=int(len(self._keys)), bytes=self.nbytes,
                        evicted_keyframes=self._evicted, dropped_points=self._dropped,
                        last_update_ms=self._last_ms)

    @property
    def nbytes(self) -> int:
        return int(sum(b.nbytes for b in self._blocks.values())
                   + self._keys.nbytes + self._sums.nbytes + self._counts.nbytes)

    def fused(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fused cloud: (xyz float32 (N, 3), rgb uint8 (N, 3), mean confidence float32 (N,))."""
        self._settle()
        if self._cache is None:
            w = self._sums[:, 6]
            ok = w > 0
            keys_w = w[ok]
            xyz = (self._sums[ok, :3] / keys_w[:, None]).astype(np.float32)
            rgb = np.clip(np.rint(self._sums[ok, 3:6] / keys_w[:, None]), 0, 255).astype(np.uint8)
            conf = (keys_w / np.maximum(self._counts[ok], 1)).astype(np.float32)
            cap = int(self.config.max_points)
            if len(conf) > cap:
                keep = np.sort(np.argpartition(-conf, cap - 1)[:cap])
                xyz, rgb, conf = xyz[keep], rgb[keep], conf[keep]
            self._cache = (xyz, rgb, conf)
        xyz, rgb, conf = self._cache
        return xyz.copy(), rgb.copy(), conf.copy()

    # -- updates -------------------------------------------------------------------------------
    def add_keyframe(self, kf: Keyframe) -> int:
        """Insert (or replace) a keyframe's block; returns the number of points stored."""
        n = self.add_points(kf.id, kf.points_cam, kf.colors, kf.confidence, kf.valid, kf.T_world_cam)
        b = self._blocks.get(kf.id)
        if b is not None:
            b.src_colors, b.src_conf = kf.colors, kf.confidence
        return n

    def add_points(self, kf_id: int, points_cam: np.ndarray, colors: np.ndarray, confidence: np.ndarray,
                   valid: Optional[np.ndarray], T_world_cam: np.ndarray) -> int:
        """Insert (or replace) the block of ``kf_id`` from organised or flat arrays."""
        t0 = time.perf_counter()
        T = self._check_T(T_world_cam)
        pts, col, w, cnt = self._prepare(points_cam, colors, confidence, valid)
        if kf_id in self._blocks:
            self._subtract(self._blocks.pop(kf_id))
        blk = _Block(order=self._order, points=pts, colors=col, weight=w, count=cnt, T=T)
        self._order += 1
        self._blocks[kf_id] = blk
        self._add(blk)
        self._enforce_bytes()
        self._last_ms = 1000.0 * (time.perf_counter() - t0)
        return len(pts)

    def set_pose(self, kf_id: int, T_world_cam: np.ndarray) -> None:
        """Re-anchor one keyframe (rigid or Sim(3) pose). Cheap: its voxels are moved when the
        fused cloud or the statistics are next asked for (corrections arrive in batches on
        the mapping thread; the cloud is rarely needed)."""
        b = self._block(kf_id)
        b.T = self._check_T(T_world_cam)
        self._stale.add(kf_id)
        self._cache = None

    def _settle(self) -> None:
        """Move the voxels of the blocks re-anchored since they were accumulated."""
        if not self._stale:
            return
        t0 = time.perf_counter()
        for kf_id in sorted(self._stale):
            b = self._blocks.get(kf_id)
            if b is not None:
                self._subtract(b)
                self._add(b)
        self._stale.clear()
        self._last_ms = 1000.0 * (time.perf_counter() - t0)

    def apply_correction(self, kf_id: int, S: np.ndarray) -> None:
        """Left-multiply one keyframe's pose by a correction ``S`` (world -> corrected world)."""
        self.set_pose(kf_id, self._check_T(S) @ self._block(kf_id).T)

    def replace_points(self, kf_id: int, points_cam: np.ndarray, valid: np.ndarray,
                       colors: Optional[np.ndarray] = None, confidence: Optional[np.ndarray] = None) -> int:
        """Swap one keyframe's points (e.g. refined depth), keeping its pose.

        ``points_cam`` (h x w x 3) must match the keyframe's organised colours and confidence
        unless ``colors`` / ``confidence`` are given.
        """
        b = self._block(kf_id)
        colors = b.src_colors if colors is None else colors
        confidence = b.src_conf if confidence is None else confidence
        if colors is None or confidence is None:
            raise UserInputError(f"replace_points: keyframe {kf_id} was added without organised colours; "
                                 "pass colors= and confidence=")
        n = self.add_points(kf_id, points_cam, colors, confidence, valid, b.T)
        nb = self._blocks[kf_id]
        nb.src_colors, nb.src_conf = colors, confidence
        return n

    def remove(self, kf_id: int) -> None:
        """Remove one keyframe's block from the map."""
        self._subtract(self._blocks.pop(kf_id))

    # -- internals ---------------------------------------------------------------------------
    def _block(self, kf_id: int) -> _Block:
        try:
            return self._blocks[kf_id]
        except KeyError:
            raise KeyError(f"keyframe {kf_id} is not in the map") from None

    @staticmethod
    def _check_T(T: np.ndarray) -> np.ndarray:
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)) or abs(np.linalg.det(T[:3, :3])) < 1e-12:
            raise UserInputError(f"map pose must be a finite, invertible 4x4 matrix, got {T!r}")
        return T.copy()

    def _prepare(self, points_cam, colors, confidence, valid):
        pts = np.asarray(points_cam, dtype=np.float32).reshape(-1, 3)
        col = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        conf = np.asarray(confidence, dtype=np.float32).reshape(-1)
        if not (len(pts) == len(col) == len(conf)):
            raise UserInputError(f"map block: {len(pts)} points, {len(col)} colours and {len(conf)} "
                                 "confidences must match")
        ok = np.all(np.isfinite(pts), axis=1) & np.isfinite(conf) & (conf >= self.config.min_confidence)
        ok &= conf > 0
        if valid is not None:
            v = np.asarray(valid, dtype=bool).reshape(-1)
            if len(v) != len(pts):
                raise UserInputError(f"map block: valid mask has {len(v)} entries for {len(pts)} points")
            ok &= v
        pts, col, conf = pts[ok], col[ok], conf[ok]
        cnt = np.ones(len(pts), dtype=np.int32)
        frac = self.config.block_voxel_fraction
        if frac > 0 and len(pts):
            keys, inside = voxel_keys(pts, self.voxel * frac)
            self._dropped += int(len(pts) - np.count_nonzero(inside))
            pts, col, conf = pts[inside], col[inside], conf[inside]
            vals = np.concatenate([pts * conf[:, None], col * conf[:, None], conf[:, None]], axis=1)
            _, sums, counts = _reduce(keys, vals.astype(np.float64), np.ones(len(pts)))
            w = sums[:, 6]
            pts = (sums[:, :3] / w[:, None]).astype(np.float32)
            col = np.clip(np.rint(sums[:, 3:6] / w[:, None]), 0, 255).astype(np.uint8)
            return pts, col, w.astype(np.float32), counts.astype(np.int32)
        return pts, col, conf.astype(np.float32), cnt

    def _contribution(self, b: _Block, T: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Per-voxel sums of one block under pose ``T``: (sorted keys, (M, 7) sums, (M,) counts,
        number of stored points outside the addressable range).

        Deterministic, so the same block and pose always give bit-identical sums (which is
        what lets ``_subtract`` remove exactly what ``_add`` added).
        """
        pts, col, w, cnt = b.points, b.colors, b.weight, b.count
        if len(pts) == 0:
            return np.zeros(0, np.int64), np.zeros((0, 7)), np.zeros(0, np.int64), 0
        pw = transform_points(T, pts.astype(np.float64))
        keys, inside = voxel_keys(pw, self.voxel)
        if not np.all(inside):
            pw, col, w, cnt = pw[inside], col[inside], w[inside], cnt[inside]
        wd = w.astype(np.float64)[:, None]
        vals = np.concatenate([pw * wd, col.astype(np.float64) * wd, wd], axis=1)
        return (*_reduce(keys, vals, cnt.astype(np.float64)), int(len(pts) - len(keys)))

    def _add(self, b: _Block) -> None:
        """Accumulate a block under its pose (and remember that pose)."""
        self._cache = None
        b.T_added = b.T.copy()
        keys, sums, counts, dropped = self._contribution(b, b.T_added)
        if dropped:
            self._dropped += dropped
            log.warning("map: %d points of a keyframe lie outside the addressable voxel range", dropped)
        if len(keys) == 0:
            return
        pos = np.searchsorted(self._keys, keys)
        found = pos < len(self._keys)
        found[found] = self._keys[pos[found]] == keys[found]
        self._sums[pos[found]] += sums[found]
        self._counts[pos[found]] += counts[found]
        new = ~found
        if np.any(new):
            at = pos[new]
            self._keys = np.insert(self._keys, at, keys[new])
            self._sums = np.insert(self._sums, at, sums[new], axis=0)
            self._counts = np.insert(self._counts, at, counts[new])

    def _subtract(self, b: _Block) -> None:
        """Remove a block from the accumulator, under the pose it was accumulated with."""
        self._cache = None
        keys, sums, counts, _ = self._contribution(b, b.T_added)
        if len(keys) == 0:
            return
        pos = np.searchsorted(self._keys, keys)
        self._sums[pos] -= sums
        self._counts[pos] -= counts
        gone = self._counts[pos] <= 0
        if np.any(gone):
            keep = np.ones(len(self._keys), dtype=bool)
            keep[pos[gone]] = False
            self._keys, self._sums, self._counts = self._keys[keep], self._sums[keep], self._counts[keep]

    def _enforce_bytes(self) -> None:
        cap = int(self.config.max_bytes)
        while self._blocks and self.nbytes > cap:
            oldest = min(self._blocks, key=lambda k: self._blocks[k].order)
            self.remove(oldest)
            self._evicted += 1
            log.info("map over %d bytes: keyframe %d left the map (%d evicted so far)",
                     cap, oldest, self._evicted)
