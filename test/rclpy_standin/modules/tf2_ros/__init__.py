"""Test double for tf2_ros: a buffer with explicit transforms and recording broadcasters.

The buffer answers ``lookup_transform(target, source, time)`` from transforms given with
``set_transform`` (dynamic, sampled: the sample nearest to the requested time is returned, and a
time after the newest sample raises ExtrapolationException, as waiting for TF would) or
``set_transform_static``. Only direct parent/child pairs (either direction) are resolved.
"""
from __future__ import annotations

import threading

import numpy as np

from recon_ros.geometry.transforms import invert_T
from recon_ros.io import messages as M


class TransformException(Exception):
    pass


class LookupException(TransformException):
    pass


class ConnectivityException(TransformException):
    pass


class ExtrapolationException(TransformException):
    pass


class Buffer:
    def __init__(self, cache_time=None, node=None) -> None:
        self._dynamic: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = {}
        self._static: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()
        self._types = M.rosbags_types()
        self.cleared = 0

    def set_transform(self, tf, authority: str = "") -> bool:
        key = (str(tf.header.frame_id), str(tf.child_frame_id))
        with self._lock:
            self._dynamic.setdefault(key, []).append((M.stamp_to_ns(tf.header.stamp), M.transform_to_matrix(tf)))
            self._dynamic[key].sort(key=lambda s: s[0])
        return True

    def set_transform_static(self, tf, authority: str = "") -> bool:
        with self._lock:
            self._static[(str(tf.header.frame_id), str(tf.child_frame_id))] = M.transform_to_matrix(tf)
        return True

    def clear(self) -> None:
        with self._lock:
            self._dynamic.clear()
            self.cleared += 1

    def _get(self, parent: str, child: str, t_ns: int):
        if (parent, child) in self._static:
            return self._static[(parent, child)]
        samples = self._dynamic.get((parent, child))
        if not samples:
            return None
        if t_ns == 0:
            return samples[-1][1]
        if t_ns > samples[-1][0]:
            raise ExtrapolationException(f"{parent} -> {child}: requested time is after the newest sample")
        best = min(samples, key=lambda s: abs(s[0] - t_ns))
        return best[1]

    def lookup_transform(self, target_frame: str, source_frame: str, time, timeout=None):
        t_ns = int(getattr(time, "nanoseconds", 0))
        with self._lock:
            T = self._get(target_frame, source_frame, t_ns)
            if T is None:
                inv = self._get(source_frame, target_frame, t_ns)
                T = None if inv is None else invert_T(inv)
        if T is None:
            raise LookupException(f"no transform {target_frame} <- {source_frame}")
        return M.make_transform_stamped(self._types, T, target_frame, source_frame, max(t_ns, 0))

    def can_transform(self, target_frame, source_frame, time, timeout=None) -> bool:
        try:
            self.lookup_transform(target_frame, source_frame, time)
            return True
        except TransformException:
            return False


class TransformListener:
    def __init__(self, buffer, node, *, spin_thread: bool = False, qos=None, static_qos=None) -> None:
        self.buffer, self.spin_thread = buffer, spin_thread


class TransformBroadcaster:
    def __init__(self, node, qos=None) -> None:
        self.sent: list = []
        self._lock = threading.Lock()

    def sendTransform(self, transform) -> None:
        with self._lock:
            self.sent.extend(transform if isinstance(transform, list) else [transform])


class StaticTransformBroadcaster(TransformBroadcaster):
    pass
