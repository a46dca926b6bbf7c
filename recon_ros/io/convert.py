"""Write camera frames to a rosbag2 and convert datasets (ScanNet, ARKitScenes, images) to bags.

:func:`write_camera_bag` is the reusable writer: colour (rgb8 Image, or a jpeg CompressedImage on
``<image>/compressed``), CameraInfo, aligned depth (16UC1 mm) with its CameraInfo, a static TF
chain ``base_link -> camera_link -> camera_color_optical_frame`` on /tf_static
(transient-local), and ground-truth camera poses as TF ``gt/world -> gt/camera`` on /tf, a
separate tree that RViz can show and that readers use only as ground truth. Log times equal the
header stamps. The bag appears under its final name only once complete.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from recon_ros.errors import UserInputError
from recon_ros.geometry.transforms import R_BODY_OPTICAL, make_T
from recon_ros.io import messages as M
from recon_ros.io import topics as T
from recon_ros.io.bag_writer import BagWriter
from recon_ros.io.sources import FrameSource, open_source, parse_size, resize_frame
from recon_ros.mapping.frame import Frame

logger = logging.getLogger(__name__)

StaticTf = tuple[str, str, np.ndarray]  # (parent, child, T_parent_child)


def camera_static_tf(frames: T.CameraFrames = T.CameraFrames(),
                     T_base_link: Optional[np.ndarray] = None) -> list[StaticTf]:
    """The usual camera chain: base -> camera_link (``T_base_link``, default identity) and
    camera_link (x forward, z up) -> optical frame (x right, y down, z forward)."""
    return [(frames.base, frames.camera_link, np.eye(4) if T_base_link is None else np.asarray(T_base_link)),
            (frames.camera_link, frames.optical, make_T(R_BODY_OPTICAL, np.zeros(3)))]


def write_camera_bag(out_path: Union[str, os.PathLike], frames: Iterable[Frame], *,
                     gt_poses: Union[Sequence[np.ndarray], Mapping[int, np.ndarray], None] = None,
                     topics: T.CameraTopics = T.CameraTopics(),
                     frame_ids: T.CameraFrames = T.CameraFrames(), storage: str = "sqlite3",
                     version: int = 8, compress: bool = False, jpeg_quality: int = 90,
                     extra_static_tf: Optional[Sequence[StaticTf]] = None, write_depth: bool = True,
                     overwrite: bool = False, progress: Union[bool, Callable[[int], None]] = False,
                     total: Optional[int] = None) -> Path:
    """Write ``frames`` to a new bag at ``out_path`` and return the path.

    ``gt_poses`` (camera-to-world 4x4, by frame position or by stamp) override
    ``Frame.extras['T_world_cam_gt']``. Frames whose stamp does not increase are skipped with a
    warning. ``progress`` shows a tqdm bar (True) or calls a function with the count written.
    """
    bag = BagWriter(out_path, storage=storage, version=version, overwrite=overwrite)
    types = bag.types
    image_topic = topics.compressed_image if compress else topics.image
    image_type = T.COMPRESSED_IMAGE_TYPE if compress else T.IMAGE_TYPE
    bar = None
    if progress is True:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="frame", desc=f"writing {Path(out_path).name}")
    n = 0
    last_stamp: Optional[int] = None
    skipped = 0
    try:
        with bag:
            bag.add_topic(topics.tf_static, T.TF_TYPE, qos="latched")
            bag.add_topic(image_topic, image_type, qos="reliable")
            bag.add_topic(topics.camera_info, T.CAMERA_INFO_TYPE, qos="reliable")
            statics = camera_static_tf(frame_ids) + list(extra_static_tf or [])
            for pos, frame in enumerate(frames):
                s = int(frame.stamp_ns)
                if last_stamp is None:
                    msg = M.make_tf_message(types, [M.make_transform_stamped(types, Tm, p, c, s)
                                                    for p, c, Tm in statics])
                    bag.write(topics.tf_static, msg, s)
                elif s <= last_stamp:
                    skipped += 1
                    logger.warning("frame %d: stamp %d does not increase; skipped", pos, s)
                    continue
                last_stamp = s
                _write_frame(bag, types, frame, pos, topics, frame_ids, image_topic, compress,
                             jpeg_quality, write_depth, gt_poses)
                n += 1
                if bar is not None:
                    bar.update(1)
                elif callable(progress):
                    progress(n)
            if n == 0:
                raise UserInputError("no frames to write: the input produced none (see the warnings above)")
    finally:
        if bar is not None:
            bar.close()
    logger.info("%s: %d frames written%s", out_path, n, f", {skipped} skipped" if skipped else "")
    return Path(out_path)


def _gt_for(frame: Frame, pos: int, gt_poses: Any) -> Optional[np.ndarray]:
    if gt_poses is None:
        return frame.extras.get("T_world_cam_gt")
    if isinstance(gt_poses, Mapping):
        return gt_poses.get(int(frame.stamp_ns))
    return gt_poses[pos] if pos < len(gt_poses) else None


def _write_frame(bag: BagWriter, types: M.MessageTypes, frame: Frame, pos: int, topics: T.CameraTopics,
                 ids: T.CameraFrames, image_topic: str, compress: bool, jpeg_quality: int,
                 write_depth: bool, gt_poses: Any) -> None:
    frame.validate()
    s = int(frame.stamp_ns)
    fid = frame.frame_id if frame.frame_id and frame.frame_id != "camera" else ids.optical
    if compress:
        img = M.make_compressed_image(types, frame.rgb, s, fid, fmt="jpeg", jpeg_quality=jpeg_quality)
    else:
        img = M.make_image(types, frame.rgb, "rgb8", s, fid)
    bag.write(image_topic, img, s)
    if frame.K is not None:
        bag.write(topics.camera_info, M.make_camera_info(types, frame.K, frame.width, frame.height, s, fid), s)
    if write_depth and frame.depth is not None and topics.depth:
        if not bag.has_topic(topics.depth):
            bag.add_topic(topics.depth, T.IMAGE_TYPE)
            if topics.depth_info:
                bag.add_topic(topics.depth_info, T.CAMERA_INFO_TYPE)
        bag.write(topics.depth, M.make_depth_image(types, frame.depth, s, fid, "16UC1"), s)
        if topics.depth_info and frame.K is not None:
            bag.write(topics.depth_info, M.make_camera_info(types, frame.K, frame.width, frame.height, s, fid), s)
    gt = _gt_for(frame, pos, gt_poses)
    if gt is not None and np.all(np.isfinite(gt)):
        if not bag.has_topic(topics.tf):
            bag.add_topic(topics.tf, T.TF_TYPE)
        tf = M.make_tf_message(types, [M.make_transform_stamped(types, gt, ids.gt_world, ids.gt_camera, s)])
        bag.write(topics.tf, tf, s)


def iter_resized(frames: Iterable[Frame], size: Optional[tuple[int, int]]) -> Iterable[Frame]:
    for f in frames:
        yield resize_frame(f, size) if size else f


def convert_to_bag(kind: str, src: Union[str, os.PathLike], out: Union[str, os.PathLike], *,
                   storage: str = "sqlite3", version: int = 8, compress: bool = False,
                   max_frames: Optional[int] = None, stride: int = 1,
                   resize: Union[str, tuple[int, int], None] = None, overwrite: bool = False,
                   progress: bool = False, source_opts: Optional[dict] = None) -> tuple[Path, FrameSource]:
    """Convert a dataset folder (``kind`` = scannet | arkitscenes | images | video) to a bag.

    Returns the bag path and the source (whose ``skips`` say what was left out).
    """
    if kind not in ("scannet", "arkitscenes", "images", "video"):
        raise UserInputError(f"cannot convert {kind!r}; choose scannet, arkitscenes or images")
    size = parse_size(resize)
    src_path = Path(src)
    if not src_path.exists():
        raise UserInputError(f"{src_path} does not exist")
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise UserInputError(f"{out_path} already exists; remove it or pass --overwrite")
    source = open_source(src_path, kind=kind, stride=stride, max_frames=max_frames, **(source_opts or {}))
    with source:
        path = write_camera_bag(out_path, iter_resized(source, size), storage=storage, version=version,
                                compress=compress, overwrite=overwrite, progress=progress,
                                total=len(source) or None)
    if source.skips.total:
        logger.warning("%s: skipped %d input frames (%s)", src_path, source.skips.total, source.skips.summary())
    return path, source
