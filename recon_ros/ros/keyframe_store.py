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
    """Keyframes by stamp, bounded to ``max_keyframes`` (oldest dropped first)."""

    def __init__(self, max_keyframes: int) -> None:
        self.max_keyframes = max_keyframes
        self._entries: "OrderedDict[int, _Entry]" = OrderedDict()
        self._poses: dict[int, np.ndarray] = {}
        self._next_id = 0
        self.version = 0  # bumped on every change (results carry the version they used)

    def _entry(self, stamp_ns: int) -> _Entry:
        e = self._entries.get(stamp_ns)
        if e is None:
            e = self._entries[stamp_ns] = _Entry(kf_id=self._next_id)
            self._next_id += 1
            while len(self._entries) > self.max_keyframes:
                old, _ = self._entries.popitem(last=False)
                self._poses.pop(old, None)
        return e

    def add_cloud(self, stamp_ns: int, frame_id: str, xyz: np.ndarray, rgb: np.ndarray,
                  conf: np.ndarray) -> None:
        if xyz.ndim != 3 or xyz.shape[-1] != 3:
            raise DataFormatError(f"keyframe cloud must be organised (H x W points), got shape {xyz.shape}")
        e = self._entry(stamp_ns)
        e.xyz, e.rgb, e.conf, e.frame_id = xyz, rgb, conf, frame_id
        self.version += 1

    def add_info(self, stamp_ns: int, K: np.ndarray) -> None:
        self._entry(stamp_ns).K = np.asarray(K, dtype=np.float64)
        self.version += 1

    def set_poses(self, poses: dict[int, np.ndarray]) -> None:
        """Poses (stamp_ns -> T_map_cam) from a path; stamps of unknown keyframes are kept too."""
        self._poses.update(poses)
        self.version += 1

    def frame_id(self, stamp_ns: int) -> str:
        return self._entries[stamp_ns].frame_id

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
