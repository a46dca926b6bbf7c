"""Write rosbag2 bags (sqlite3 or MCAP) with ``rosbags``, atomically.

The bag is written inside a hidden temporary directory beside the target and moved to its
final name when :meth:`close` succeeds, so a crash never leaves a partial bag under the final name. Metadata version 8 (the
default) is what Humble's ``ros2 bag play`` parses; Jazzy reads 8 and 9. Topics carry their
offered QoS: ``"latched"`` (reliable, transient-local; for /tf_static, maps, paths),
``"reliable"`` (the default) or ``"sensor"`` (best effort).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

from recon_ros.errors import UserInputError
from recon_ros.io.messages import MessageTypes, rosbags_types, stamp_to_ns

logger = logging.getLogger(__name__)

STORAGES = ("sqlite3", "mcap")
VERSIONS = (8, 9)
_INF = (9223372036, 854775807)  # rosbag2's "infinite" duration


def make_qos(kind: str = "reliable", depth: int = 10) -> Any:
    """A rosbags Qos profile: 'reliable', 'latched' (reliable + transient-local) or 'sensor'."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)

    if kind not in ("reliable", "latched", "sensor"):
        raise ValueError(f"unknown QoS kind {kind!r}")
    inf = QosTime(*_INF)
    return Qos(history=QosHistory.KEEP_LAST, depth=1 if kind == "latched" else int(depth),
               reliability=QosReliability.BEST_EFFORT if kind == "sensor" else QosReliability.RELIABLE,
               durability=QosDurability.TRANSIENT_LOCAL if kind == "latched" else QosDurability.VOLATILE,
               deadline=inf, lifespan=inf, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=inf, avoid_ros_namespace_conventions=False)


def check_storage(storage: str, version: int) -> None:
    if storage not in STORAGES:
        raise UserInputError(f"unknown bag storage {storage!r}; choose sqlite3 or mcap")
    if int(version) not in VERSIONS:
        raise UserInputError(f"rosbag2 metadata version must be 8 (Humble) or 9 (Jazzy), not {version}")


class BagWriter:
    """Write arbitrary messages to a new rosbag2.

    Example::

        with BagWriter(out, storage="mcap") as bag:
            bag.add_topic("/map", "sensor_msgs/msg/PointCloud2", qos="latched")
            bag.write("/map", cloud_msg)            # log time = header stamp
        # the bag appears under ``out`` only here

    ``types`` are the message classes to build messages with (:attr:`types`), from the
    Humble typestore for version 8 and Jazzy for version 9 unless given.
    """

    def __init__(self, path: Union[str, os.PathLike], *, storage: str = "sqlite3", version: int = 8,
                 types: Optional[MessageTypes] = None, overwrite: bool = False) -> None:
        check_storage(storage, version)
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise UserInputError(f"{self.path} already exists; choose another output or allow "
                                 "overwriting")
        self.storage = storage
        self.version = int(version)
        self.types = types or rosbags_types("humble" if self.version == 8 else "jazzy")
        self._store = getattr(self.types, "typestore", None)
        if self._store is None:
            raise UserInputError("BagWriter needs rosbags message types (rosbags_types())")
        self._tmpdir: Optional[Path] = None
        self._writer: Any = None
        self._conns: dict[str, tuple[Any, str]] = {}
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> "BagWriter":
        from rosbags.rosbag2 import StoragePlugin, Writer

        # rosbag2 names the storage file after the bag directory, so the bag is written with its
        # final name inside a hidden temporary directory and moved out when complete.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial",
                                             dir=self.path.parent))
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        try:
            self._writer = Writer(self._tmpdir / self.path.name, version=self.version, storage_plugin=plugin)
            self._writer.open()
        except BaseException:
            self._cleanup()
            raise
        return self

    def close(self) -> Path:
        """Finish the bag and move it to its final name."""
        if self._writer is None:
            raise RuntimeError("bag is not open")
        try:
            self._writer.close()
            self._writer = None
            assert self._tmpdir is not None
            if self.path.is_dir() and not self.path.is_symlink():
                shutil.rmtree(self.path)
            elif self.path.exists():
                self.path.unlink()
            os.replace(self._tmpdir / self.path.name, self.path)
        finally:
            self._cleanup()
        logger.info("wrote %s (%s)", self.path,
                    ", ".join(f"{t}: {n}" for t, n in self.counts.items()) or "no messages")
        return self.path

    def _cleanup(self) -> None:
        self._writer = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def abort(self) -> None:
        """Discard everything written so far."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._cleanup()

    def __enter__(self) -> "BagWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort()

    # ------------------------------------------------------------------ writing
    def add_topic(self, topic: str, msgtype: str, qos: Union[str, Any] = "reliable") -> None:
        """Declare a topic (once); ``qos`` is a kind for :func:`make_qos` or a rosbags Qos."""
        if self._writer is None:
            raise RuntimeError("open the bag before adding topics")
        if topic in self._conns:
            if self._conns[topic][1] != msgtype:
                raise UserInputError(f"topic {topic} is already {self._conns[topic][1]}, not {msgtype}")
            return
        profile = make_qos(qos) if isinstance(qos, str) else qos
        conn = self._writer.add_connection(topic, msgtype, typestore=self._store,
                                           offered_qos_profiles=[profile])
        self._conns[topic] = (conn, msgtype)
        self.counts[topic] = 0

    def has_topic(self, topic: str) -> bool:
        return topic in self._conns

    def write_raw(self, topic: str, data: bytes, stamp_ns: int) -> None:
        """Write an already serialized (CDR) message onto a declared ``topic``."""
        if topic not in self._conns:
            raise UserInputError(f"declare topic {topic} with add_topic() first")
        self._writer.write(self._conns[topic][0], int(stamp_ns), bytes(data))
        self.counts[topic] += 1

    def write(self, topic: str, msg: Any, stamp_ns: Optional[int] = None) -> None:
        """Serialise ``msg`` (CDR) onto ``topic``; the log time defaults to its header stamp."""
        if topic not in self._conns:
            msgtype = getattr(msg, "__msgtype__", None)
            if msgtype is None:
                raise UserInputError(f"declare topic {topic} with add_topic() first")
            self.add_topic(topic, msgtype)
        conn, msgtype = self._conns[topic]
        if stamp_ns is None:
            if hasattr(msg, "header"):
                stamp_ns = stamp_to_ns(msg.header.stamp)
            elif hasattr(msg, "transforms") and len(msg.transforms):
                stamp_ns = stamp_to_ns(msg.transforms[0].header.stamp)
            else:
                raise UserInputError(f"a log time is needed for a {msgtype} without a header")
        data = self._store.serialize_cdr(msg, msgtype)
        self._writer.write(conn, int(stamp_ns), data)
        self.counts[topic] += 1
