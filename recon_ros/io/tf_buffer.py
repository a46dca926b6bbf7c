"""A small TF buffer for offline use: store /tf and /tf_static, look transforms up at a stamp.

Each frame has one parent (as in tf2). A lookup walks both frames up to their common ancestor
and composes the edges, interpolating every dynamic edge at the requested stamp (linear for the
translation, slerp for the rotation). Stamps outside an edge's recorded range are accepted up to
``max_extrapolation_ns`` (the nearest sample is used, never extrapolated further).
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np

from recon_ros.errors import DataFormatError
from recon_ros.geometry.transforms import make_T, matrix_to_quat, quat_to_matrix

logger = logging.getLogger(__name__)


class TransformLookupError(DataFormatError):
    """A transform is not available (unknown frames, no common root, or stamp out of range)."""


def slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions (x, y, z, w), shortest path."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + a * (q1 - q0)
    else:
        th = np.arccos(min(d, 1.0))
        q = (np.sin((1 - a) * th) * q0 + np.sin(a * th) * q1) / np.sin(th)
    return q / np.linalg.norm(q)


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    poses: list[np.ndarray] = field(default_factory=list)  # (7,) tx ty tz qx qy qz qw
    _sorted: bool = True

    def add(self, stamp_ns: int, pose7: np.ndarray) -> None:
        if self.stamps and stamp_ns < self.stamps[-1]:
            self._sorted = False
        self.stamps.append(int(stamp_ns))
        self.poses.append(pose7)

    def _sort(self) -> None:
        if not self._sorted:
            order = np.argsort(np.asarray(self.stamps), kind="stable")
            self.stamps = [self.stamps[i] for i in order]
            self.poses = [self.poses[i] for i in order]
            self._sorted = True

    def at(self, stamp_ns: int, tol_ns: int) -> Optional[np.ndarray]:
        if self.static:
            return self.poses[-1]
        self._sort()
        j = bisect.bisect_left(self.stamps, stamp_ns)
        if j < len(self.stamps) and self.stamps[j] == stamp_ns:
            return self.poses[j]
        if j == 0:
            return self.poses[0] if self.stamps[0] - stamp_ns <= tol_ns else None
        if j == len(self.stamps):
            return self.poses[-1] if stamp_ns - self.stamps[-1] <= tol_ns else None
        t0, t1 = self.stamps[j - 1], self.stamps[j]
        a = (stamp_ns - t0) / float(t1 - t0)
        p0, p1 = self.poses[j - 1], self.poses[j]
        out = np.empty(7)
        out[:3] = (1 - a) * p0[:3] + a * p1[:3]
        out[3:] = slerp(p0[3:], p1[3:], a)
        return out


def _pose7(T: np.ndarray) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    return np.concatenate([T[:3, 3], matrix_to_quat(T[:3, :3])])


def _T(p: np.ndarray) -> np.ndarray:
    return make_T(quat_to_matrix(p[3:]), p[:3])


class TfBuffer:
    """Transforms by (parent, child) with time history; ``lookup(target, source, stamp)``."""

    def __init__(self, max_extrapolation_ns: int = 50_000_000) -> None:
        self.max_extrapolation_ns = int(max_extrapolation_ns)
        self._edges: dict[str, _Edge] = {}
        self.parent_conflicts = 0

    @property
    def frames(self) -> set[str]:
        out = set(self._edges)
        out.update(e.parent for e in self._edges.values())
        return out

    def edges(self) -> list[tuple[str, str, bool]]:
        """(parent, child, static) for every stored edge."""
        return [(e.parent, c, e.static) for c, e in self._edges.items()]

    def add(self, parent: str, child: str, stamp_ns: int, T_parent_child: np.ndarray,
            static: bool = False) -> None:
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if parent == child:
            return
        pose = _pose7(T_parent_child)
        edge = self._edges.get(child)
        if edge is None:
            edge = self._edges[child] = _Edge(parent=parent, static=static)
        elif edge.parent != parent:
            self.parent_conflicts += 1
            logger.warning("TF frame %s already has parent %s; ignoring a transform from %s",
                           child, edge.parent, parent)
            return
        if static:
            edge.static = True
            edge.stamps, edge.poses = [int(stamp_ns)], [pose]
        elif not edge.static:
            edge.add(stamp_ns, pose)

    def add_message(self, tf_msg: Any, static: bool = False) -> int:
        """Add every TransformStamped of a tf2_msgs/TFMessage; returns how many."""
        from recon_ros.io.messages import stamp_to_ns, transform_to_matrix

        n = 0
        for ts in tf_msg.transforms:
            self.add(str(ts.header.frame_id), str(ts.child_frame_id), stamp_to_ns(ts.header.stamp),
                     transform_to_matrix(ts), static=static)
            n += 1
        return n

    def has_frame(self, frame: str) -> bool:
        return frame.lstrip("/") in self.frames

    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        seen = {frame}
        while chain[-1] in self._edges:
            p = self._edges[chain[-1]].parent
            if p in seen:
                raise TransformLookupError(f"TF tree has a loop through {p}")
            chain.append(p)
            seen.add(p)
        return chain

    def _to_ancestor(self, chain: list[str], upto: int, stamp_ns: int) -> np.ndarray:
        T = np.eye(4)
        for child in chain[:upto]:
            edge = self._edges[child]
            p = edge.at(stamp_ns, self.max_extrapolation_ns)
            if p is None:
                lo, hi = edge.stamps[0], edge.stamps[-1]
                raise TransformLookupError(
                    f"no transform {edge.parent} -> {child} at {stamp_ns * 1e-9:.6f} s (known from "
                    f"{lo * 1e-9:.6f} to {hi * 1e-9:.6f} s)")
            T = _T(p) @ T
        return T

    def lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """T_target_source at ``stamp_ns`` (maps source coordinates into target)."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        for f in (target, source):
            if f not in self.frames:
                raise TransformLookupError(f"frame {f!r} is not in the TF data (known frames: "
                                           f"{', '.join(sorted(self.frames)) or 'none'})")
        ct, cs = self._chain(target), self._chain(source)
        common = next((f for f in cs if f in set(ct)), None)
        if common is None:
            raise TransformLookupError(f"frames {target!r} and {source!r} are not connected in TF")
        T_anc_source = self._to_ancestor(cs, cs.index(common), stamp_ns)
        T_anc_target = self._to_ancestor(ct, ct.index(common), stamp_ns)
        return np.linalg.inv(T_anc_target) @ T_anc_source

    def can_transform(self, target: str, source: str, stamp_ns: int) -> bool:
        try:
            self.lookup(target, source, stamp_ns)
            return True
        except TransformLookupError:
            return False

    def add_many(self, items: Iterable[tuple[str, str, int, np.ndarray, bool]]) -> None:
        for parent, child, stamp, T, static in items:
            self.add(parent, child, stamp, T, static)
