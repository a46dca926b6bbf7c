"""The refiner's keyframe store: keyframes rebuilt from recon_node's topics. Pure Python.

recon_node publishes, per keyframe, an organised PointCloud2 (points in the keyframe's camera
frame) and a CameraInfo with the same stamp, and its pose as the ``~/path`` entry with that stamp.
The three arrive independently; a keyframe is usable once all three are known. Poses are
replaced whenever a new path arrives (recon_node re-anchors after corrections).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np

from recon_ros.errors import DataFormatError
from recon_ros.geometry.camera import PixelMap
from recon_ros.mapping.frame import Keyframe


@dataclass
class _Entry:
    xyz: Optional[np.ndarray] = None
    rgb: Optional[np.ndarray] = None
    conf: Optional[np.ndarray] = None
    K: Optional[np.ndarray] = None
    frame_id: str = ""
    kf_id: int = -1


class KeyframeStore:
    """Keyframes by stamp, bounded to ``max_keyframes`` and ``max_bytes`` (oldest dropped first).

    The byte bound counts the stored arrays plus ``extra_bytes_per_keyframe`` (what the refine
    stages cache and need per keyframe: features, edges, working memory), so one cap in MiB bounds
    the refiner's memory.
    ``clear()`` starts a new session (``session`` counts them).
    """

    def __init__(self, max_keyframes: int, max_bytes: Optional[int] = None,
                 extra_bytes_per_keyframe: int = 0) -> None:
        self.max_keyframes = max_keyframes
        self.max_bytes = max_bytes
        self.extra_bytes_per_keyframe = int(extra_bytes_per_keyframe)
        self._entries: "OrderedDict[int, _Entry]" = OrderedDict()
        self._poses: dict[int, np.ndarray] = {}
        self._next_id = 0
        self.version = 0  # bumped on every change (results carry the version they used)
        self.session = 0
        self.evicted = 0

    def _entry(self, stamp_ns: int) -> _Entry:
        e = self._entries.get(stamp_ns)
        if e is None:
            e = self._entries[stamp_ns] = _Entry(kf_id=self._next_id)
            self._next_id += 1
            self._evict()
        return e

    @staticmethod
    def _entry_bytes(e: _Entry) -> int:
        return sum(a.nbytes for a in (e.xyz, e.rgb, e.conf, e.K) if a is not None)

    def array_bytes(self) -> int:
        """Bytes of the kept keyframes' arrays."""
        return sum(self._entry_bytes(e) for e in self._entries.values())

    def nbytes(self) -> int:
        """Memory charged to the kept keyframes: their arrays and ``extra_bytes_per_keyframe`` each."""
        return self.array_bytes() + self.extra_bytes_per_keyframe * len(self._entries)

    def _evict(self) -> None:
        def over() -> bool:
            if len(self._entries) > self.max_keyframes:
                return True
            return self.max_bytes is not None and len(self._entries) > 2 and self.nbytes() > self.max_bytes
        while over():
            old, _ = self._entries.popitem(last=False)
            self._poses.pop(old, None)
            self.evicted += 1

    def set_budget(self, max_bytes: Optional[int]) -> int:
        """Change the byte bound (None: none); drops the oldest keyframes beyond it. Returns how
        many were dropped."""
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        before = self.evicted
        self._evict()
        if self.evicted != before:
            self.version += 1
        return self.evicted - before

    def clear(self) -> None:
        """Forget every keyframe and pose: a new session (recon_node reset its map)."""
        self._entries.clear()
        self._poses.clear()
        self.session += 1
        self.version += 1

    def ids(self) -> list[int]:
        """Ids of the kept keyframes (complete or not)."""
        return [e.kf_id for e in self._entries.values()]

    def add_cloud(self, stamp_ns: int, frame_id: str, xyz: np.ndarray, rgb: np.ndarray,
                  conf: np.ndarray) -> None:
        if xyz.ndim != 3 or xyz.shape[-1] != 3:
            raise DataFormatError(f"keyframe cloud must be organised (H x W points), got shape {xyz.shape}")
        e = self._entry(stamp_ns)
        e.xyz, e.rgb, e.conf, e.frame_id = xyz, rgb, conf, frame_id
        self._evict()
        self.version += 1

    def add_info(self, stamp_ns: int, K: np.ndarray) -> None:
        self._entry(stamp_ns).K = np.asarray(K, dtype=np.float64)
        self.version += 1

    def set_poses(self, poses: dict[int, np.ndarray]) -> None:
        """Poses (stamp_ns -> T_map_cam) from a path; stamps of unknown keyframes are kept too
        (bounded: poses far beyond the kept keyframes are dropped)."""
        self._poses.update(poses)
        excess = len(self._poses) - 2 * self.max_keyframes
        if excess > 0:
            for stamp in sorted(s for s in self._poses if s not in self._entries)[:excess]:
                del self._poses[stamp]
        self.version += 1

    def frame_id(self, stamp_ns: int) -> str:
        """The camera frame of a keyframe ("" once it was dropped)."""
        e = self._entries.get(stamp_ns)
        return e.frame_id if e is not None else ""

    def __len__(self) -> int:
        return len(self._entries)

    def keyframes(self) -> list[Keyframe]:
        """Every complete keyframe (cloud + info + pose), in stamp order."""
        out = []
        for stamp in sorted(self._entries):
            e = self._entries[stamp]
            T = self._poses.get(stamp)
            if e.xyz is None or e.K is None or T is None:
                continue
            h, w = e.xyz.shape[:2]
            valid = np.all(np.isfinite(e.xyz), axis=-1)
            pts = np.where(valid[..., None], e.xyz, 0.0).astype(np.float32)
            conf = np.where(np.isfinite(e.conf), e.conf, 0.0).astype(np.float32)
            out.append(Keyframe(
                id=e.kf_id, stamp_ns=stamp, rgb=e.rgb, points_cam=pts, confidence=conf,
                colors=e.rgb, K=e.K, K_image=e.K, pixel_map=PixelMap.identity(w, h),
                T_world_cam=np.asarray(T, dtype=np.float64), valid=valid))
        return out
