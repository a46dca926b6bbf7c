"""Test double for tf2_ros: a buffer backed by the package's own TF buffer, and recording
broadcasters and listeners.

``Buffer`` stores what ``set_transform`` / ``set_transform_static`` are given in a
:class:`recon_ros.io.tf_buffer.TfBuffer`, so lookups walk TF chains (any depth, through the common
ancestor) and interpolate dynamic transforms between samples, as tf2 does. As in tf2, a time
outside a dynamic transform's samples raises ExtrapolationException (no extrapolation), and
``Time()`` (0) asks for the latest time all transforms of the chain share.
"""
from __future__ import annotations

import threading

from recon_ros.io import messages as M
from recon_ros.io.tf_buffer import TfBuffer, TransformLookupError


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
        self._tf = TfBuffer(max_extrapolation_ns=0)
        self._lock = threading.Lock()
        self._types = M.rosbags_types()
        self.cleared = 0

    def set_transform(self, tf, authority: str = "") -> bool:
        with self._lock:
            self._tf.add(str(tf.header.frame_id), str(tf.child_frame_id), M.stamp_to_ns(tf.header.stamp),
                         M.transform_to_matrix(tf), static=False)
        return True

    def set_transform_static(self, tf, authority: str = "") -> bool:
        with self._lock:
            self._tf.add(str(tf.header.frame_id), str(tf.child_frame_id), M.stamp_to_ns(tf.header.stamp),
                         M.transform_to_matrix(tf), static=True)
        return True

    def clear(self) -> None:
        """Forget the dynamic transforms (static ones stay), like tf2's Buffer.clear."""
        with self._lock:
            old = self._tf
            self._tf = TfBuffer(max_extrapolation_ns=0)
            for child, edge in old._edges.items():
                if edge.static:
                    self._tf._edges[child] = edge
            self.cleared += 1

    def _latest_common_ns(self, target: str, source: str) -> int:
        """tf2's "latest common time" of the chain target <- source (0 when all are static)."""
        tf = self._tf
        chain = set(tf._chain(target)) ^ set(tf._chain(source))
        newest = [tf._edges[f].stamps[-1] for f in chain if f in tf._edges and not tf._edges[f].static]
        return min(newest) if newest else 0

    def lookup_transform(self, target_frame: str, source_frame: str, time, timeout=None):
        t_ns = int(getattr(time, "nanoseconds", 0))
        with self._lock:
            try:
                if t_ns == 0:
                    t_ns = self._latest_common_ns(target_frame, source_frame)
                T = self._tf.lookup(target_frame, source_frame, t_ns)
            except TransformLookupError as exc:
                text = str(exc)
                if "not in the TF data" in text:
                    raise LookupException(text) from None
                if "not connected" in text or "loop" in text:
                    raise ConnectivityException(text) from None
                raise ExtrapolationException(text) from None
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
        self.registered = True

    def unregister(self) -> None:
        self.registered = False


class TransformBroadcaster:
    def __init__(self, node, qos=None) -> None:
        self.sent: list = []
        self._lock = threading.Lock()

    def sendTransform(self, transform) -> None:
        with self._lock:
            self.sent.extend(transform if isinstance(transform, list) else [transform])


class StaticTransformBroadcaster(TransformBroadcaster):
    pass
