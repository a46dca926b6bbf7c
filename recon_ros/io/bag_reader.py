"""Read camera frames from a rosbag2 (sqlite3 or MCAP, any metadata version) with ``rosbags``.

Frames are built from header stamps, never from bag receive times (recordings are often played
back slower or faster than real time). The colour stream drives the output; aligned depth is
matched by approximate time (:mod:`recon_ros.io.sync`); CameraInfo is taken from the message
nearest in stamp; /tf and /tf_static are read first into a :class:`TfBuffer` so that an
odometry prior ``T_odom_cam`` (and a ground-truth pose from the ``gt/`` TF namespace the
converters write) can be looked up at every image stamp.
"""
from __future__ import annotations

import bisect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.io import messages as M
from recon_ros.io import topics as T
from recon_ros.io.frames import FrameDecoder, FrameSkip
from recon_ros.io.sources import FrameSource
from recon_ros.io.sync import ApproximateTimeMatcher
from recon_ros.io.tf_buffer import TfBuffer, TransformLookupError
from recon_ros.mapping.frame import Frame

logger = logging.getLogger(__name__)

_IMAGE_TYPES = (T.IMAGE_TYPE, T.COMPRESSED_IMAGE_TYPE)


def open_bag_reader(path: Union[str, os.PathLike]) -> Any:
    """An opened ``rosbags.rosbag2.Reader``; DataFormatError for anything unreadable."""
    from rosbags.rosbag2 import Reader

    p = Path(path)
    if p.is_file() and p.name == "metadata.yaml":
        p = p.parent
    if not p.exists():
        raise UserInputError(f"bag {p} does not exist")
    try:
        reader = Reader(p)
        reader.open()
    except Exception as exc:  # rosbags raises several types for broken files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataFormatError(f"cannot open bag {p}: {msg} (is it complete? a bag still being "
                              "recorded or cut short cannot be read)") from None
    return reader


def bag_typestore(reader: Any) -> Any:
    """A typestore with the standard types plus any message definitions the bag carries."""
    from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    extra: dict = {}
    for conn in reader.connections:
        if conn.msgtype in store.types or not getattr(conn, "msgdef", None):
            continue
        try:
            fmt = getattr(conn.msgdef, "format", None)
            text = getattr(conn.msgdef, "data", "")
            if text:
                if getattr(fmt, "name", "") == "IDL":
                    extra.update(get_types_from_idl(text))
                else:
                    extra.update(get_types_from_msg(text, conn.msgtype))
        except Exception as exc:  # a custom type we cannot parse is only a problem if it is used
            logger.debug("cannot register %s: %s", conn.msgtype, exc)
    if extra:
        store = get_typestore(Stores.EMPTY)
        store.register(get_typestore(Stores.ROS2_JAZZY).fielddefs)
        try:
            store.register(extra)
        except Exception as exc:
            logger.debug("cannot register the bag's own types: %s", exc)
    return store


@dataclass
class ResolvedTopics:
    image: str
    image_type: str
    camera_info: Optional[str]
    depth: Optional[str]


def resolve_camera_topics(available: dict[str, str], image_topic: Optional[str] = None,
                          camera_info_topic: Optional[str] = None,
                          depth_topic: Union[str, bool, None] = None,
                          defaults: T.CameraTopics = T.CameraTopics()) -> ResolvedTopics:
    """Choose image / camera_info / depth topics from ``available`` (topic -> type).

    Explicit names win. Otherwise the defaults of :class:`CameraTopics` are used when present,
    else the bag's only colour image topic (and its sibling ``camera_info``, and its only
    depth image topic). ``depth_topic=False`` disables depth.
    """
    def listing() -> str:
        return ", ".join(f"{t} [{ty.split('/')[-1]}]" for t, ty in sorted(available.items())) or "none"

    images = {t: ty for t, ty in available.items() if ty in _IMAGE_TYPES}
    colour = {t: ty for t, ty in images.items() if "depth" not in t.lower()}
    if image_topic:
        if image_topic not in available:
            alt = T.compressed_topic(image_topic)
            if alt in images:
                image_topic = alt
            else:
                raise UserInputError(f"image topic {image_topic} is not in the bag; topics: {listing()}")
        if available[image_topic] not in _IMAGE_TYPES:
            raise UserInputError(f"{image_topic} is {available[image_topic]}, not an Image or CompressedImage")
    elif defaults.image in images:
        image_topic = defaults.image
    elif defaults.compressed_image in images:
        image_topic = defaults.compressed_image
    elif len(colour) == 1:
        image_topic = next(iter(colour))
    elif not colour:
        raise UserInputError(f"the bag has no colour image topic; topics: {listing()}")
    else:
        raise UserInputError(f"the bag has several image topics ({', '.join(sorted(colour))}); "
                             "choose one with --image-topic")
    infos = [t for t, ty in available.items() if ty == T.CAMERA_INFO_TYPE]
    if camera_info_topic:
        if camera_info_topic not in available:
            raise UserInputError(f"camera_info topic {camera_info_topic} is not in the bag; topics: {listing()}")
        info = camera_info_topic
    else:
        sib = T.sibling_topic(image_topic, "camera_info")
        non_depth = [t for t in infos if "depth" not in t.lower()]
        info = sib if sib in infos else (non_depth[0] if len(non_depth) == 1 else None)
    depth: Optional[str] = None
    if depth_topic is not False:
        depths = [t for t, ty in available.items() if ty == T.IMAGE_TYPE and "depth" in t.lower()]
        if isinstance(depth_topic, str) and depth_topic:
            if depth_topic not in available:
                raise UserInputError(f"depth topic {depth_topic} is not in the bag; topics: {listing()}")
            depth = depth_topic
        elif defaults.depth and defaults.depth in depths:
            depth = defaults.depth
        elif len(depths) == 1:
            depth = depths[0]
        elif len(depths) > 1:
            logger.warning("several depth topics (%s); none used; choose one with --depth-topic",
                           ", ".join(depths))
    return ResolvedTopics(image=image_topic, image_type=available[image_topic], camera_info=info,
                          depth=depth)


class BagFrameSource(FrameSource):
    """Frames from a rosbag2 camera recording.

    Options: topic names (auto-detected when omitted), ``use_depth``, ``slop_s`` (depth-to-image
    matching tolerance), ``odom_frame`` (fill ``T_odom_cam`` from TF; ``camera_frame`` defaults
    to the image's frame_id), ``base_frame`` (``Frame.extras['T_base_cam']``, the camera's
    mounting on the body, from TF), ``read_gt`` (``Frame.extras['T_world_cam_gt']`` from the ``gt/``
    TF frames when present), ``undistort`` (remove plumb_bob / rational distortion so K is a
    pinhole), ``K`` (intrinsics to use when the bag has no CameraInfo).
    """

    kind = "bag"

    def __init__(self, path: Union[str, os.PathLike], *, image_topic: Optional[str] = None,
                 camera_info_topic: Optional[str] = None, depth_topic: Optional[str] = None,
                 use_depth: bool = True, slop_s: float = 0.02, odom_frame: Optional[str] = None,
                 base_frame: Optional[str] = None, camera_frame: Optional[str] = None, tf_tolerance_s: float = 0.05,
                 read_gt: bool = True, gt_frames: tuple[str, str] = (T.GT_WORLD_FRAME, T.GT_CAMERA_FRAME),
                 undistort: bool = True, K: Optional[np.ndarray] = None, stride: int = 1,
                 max_frames: Optional[int] = None, topics: T.CameraTopics = T.CameraTopics()) -> None:
        super().__init__(path, stride=stride, max_frames=max_frames)
        if slop_s < 0:
            raise UserInputError(f"slop must be >= 0 s, got {slop_s}")
        self.reader = open_bag_reader(path)
        self.store = bag_typestore(self.reader)
        self.available = {c.topic: c.msgtype for c in self.reader.connections}
        self.topics = resolve_camera_topics(self.available, image_topic, camera_info_topic,
                                            False if not use_depth else depth_topic, topics)
        self.slop_ns = int(round(slop_s * 1e9))
        self.odom_frame = odom_frame
        self.base_frame = base_frame
        self.camera_frame = camera_frame
        self.read_gt = read_gt
        self.gt_frames = gt_frames
        self.undistort = undistort
        self.K_override = None if K is None else np.asarray(K, dtype=np.float64).reshape(3, 3)
        self.tf = TfBuffer(max_extrapolation_ns=int(round(tf_tolerance_s * 1e9)))
        self._infos: list[tuple[int, M.CameraModel]] = []
        self._info_stamps: list[int] = []
        self._prepass_done = False
        self.matcher_stats: dict[str, Any] = {}
        logger.info("bag %s: image %s, camera_info %s, depth %s", self.path, self.topics.image,
                    self.topics.camera_info or "none", self.topics.depth or "none")

    # ------------------------------------------------------------------ helpers
    def _count_inputs(self) -> Optional[int]:
        for c in self.reader.connections:
            if c.topic == self.topics.image:
                return int(c.msgcount)
        return None

    def close(self) -> None:
        if getattr(self, "reader", None) is not None:
            try:
                self.reader.close()
            except Exception:  # closing a broken bag must not mask the original error
                pass

    def _conns(self, names: list[Optional[str]]) -> list[Any]:
        wanted = {n for n in names if n}
        return [c for c in self.reader.connections if c.topic in wanted]

    def _messages(self, conns: list[Any]) -> Iterator[tuple[Any, int, Any]]:
        """(connection, log time, raw) with broken-file errors turned into DataFormatError."""
        it = self.reader.messages(connections=conns)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as exc:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DataFormatError(f"bag {self.path} is corrupt or truncated: {msg}") from None
            yield item

    def _decode(self, conn: Any, raw: Any) -> Optional[Any]:
        try:
            return self.store.deserialize_cdr(raw, conn.msgtype)
        except Exception as exc:
            self.skips.skip("undecodable_message", f"{conn.topic}: {exc}")
            return None

    def _prepass(self) -> None:
        """Read TF, TF static and CameraInfo (small messages) before the images."""
        if self._prepass_done:
            return
        conns = self._conns([T.TF_TOPIC, T.TF_STATIC_TOPIC, self.topics.camera_info])
        for conn, _, raw in self._messages(conns):
            msg = self._decode(conn, raw)
            if msg is None:
                continue
            if conn.msgtype == T.TF_TYPE:
                self.tf.add_message(msg, static=conn.topic == T.TF_STATIC_TOPIC)
            elif conn.msgtype == T.CAMERA_INFO_TYPE:
                try:
                    model = M.camera_info_to_model(msg)
                except DataFormatError as exc:
                    self.skips.skip("bad_camera_info", str(exc))
                    continue
                self._infos.append((M.stamp_to_ns(msg.header.stamp), model))
        self._infos.sort(key=lambda x: x[0])
        self._info_stamps = [s for s, _ in self._infos]
        self._prepass_done = True

    def camera_model_at(self, stamp_ns: int) -> Optional[M.CameraModel]:
        self._prepass()
        if not self._infos:
            return None
        j = bisect.bisect_left(self._info_stamps, stamp_ns)
        cands = [k for k in (j - 1, j) if 0 <= k < len(self._infos)]
        k = min(cands, key=lambda k: abs(self._info_stamps[k] - stamp_ns))
        return self._infos[k][1]

    # ------------------------------------------------------------------ iteration
    def _frames(self) -> Iterator[Frame]:
        self._prepass()
        if not self._infos and self.K_override is None:
            logger.warning("bag %s has no usable CameraInfo on %s: frames carry no intrinsics",
                           self.path, self.topics.camera_info or "any topic")
        secondaries = [self.topics.depth] if self.topics.depth else []
        matcher = ApproximateTimeMatcher(self.topics.image, secondaries, self.slop_ns)
        conns = self._conns([self.topics.image, self.topics.depth])
        state = {"decoder": FrameDecoder(self.undistort, self.K_override), "n_in": 0}
        try:
            for conn, _, raw in self._messages(conns):
                msg = self._decode(conn, raw)
                if msg is None:
                    continue
                for m in matcher.push(conn.topic, M.stamp_to_ns(msg.header.stamp), msg):
                    frame = self._make_frame(m, state)
                    if frame is not None:
                        yield frame
            for m in matcher.flush():
                frame = self._make_frame(m, state)
                if frame is not None:
                    yield frame
        finally:
            st = matcher.stats
            self.matcher_stats = st.as_dict()
            if st.unmatched:
                self.skips.counts["no_depth_within_slop"] += st.unmatched
            if st.out_of_order:
                self.skips.counts["stamp_went_backwards"] += st.out_of_order
            if st.overflow:
                self.skips.counts["sync_queue_overflow"] += st.overflow

    def _make_frame(self, m: Any, state: dict) -> Optional[Frame]:
        i = state["n_in"]
        state["n_in"] += 1
        if not self._keep(i):
            return None
        img_msg = m.items[self.topics.image]
        stamp = m.stamp_ns
        depth = m.items[self.topics.depth] if self.topics.depth else None
        try:
            frame = state["decoder"].decode(img_msg, self.camera_model_at(stamp), depth)
        except FrameSkip as exc:
            self.skips.skip(exc.reason, str(exc))
            return None
        frame_id = frame.frame_id
        frame.extras["topic"] = self.topics.image
        if self.odom_frame:
            cam = self.camera_frame or frame_id
            try:
                frame.T_odom_cam = self.tf.lookup(self.odom_frame, cam, stamp)
            except TransformLookupError as exc:
                self.skips.counts["no_odometry_tf"] += 1
                if self.skips.counts["no_odometry_tf"] <= 3:
                    logger.warning("%s: no odometry prior: %s", self.path.name, exc)
        if self.base_frame:
            cam = self.camera_frame or frame_id
            try:
                frame.extras["T_base_cam"] = self.tf.lookup(self.base_frame, cam, stamp)
            except TransformLookupError as exc:
                self.skips.counts["no_mounting_tf"] += 1
                if self.skips.counts["no_mounting_tf"] <= 3:
                    logger.warning("%s: no mounting of %s on %s: %s", self.path.name, cam, self.base_frame, exc)
        if self.read_gt and self.tf.has_frame(self.gt_frames[1]):
            try:
                frame.extras["T_world_cam_gt"] = self.tf.lookup(self.gt_frames[0], self.gt_frames[1], stamp)
            except TransformLookupError:
                self.skips.counts["no_ground_truth_tf"] += 1
        return frame
