"""What a reconstruction leaves behind: map PLY, trajectories, keyframes, and an output bag.

``save_reconstruction`` writes the files (each atomically); ``ReconBagRecorder`` writes the
output rosbag2 that ``ros2 bag play`` + RViz (fixed frame ``map``) shows: the fused map
(``/recon/map_cloud``), optional per-frame clouds, the camera pose and keyframe path, TF
``map -> recon_camera`` and the static ``map -> recon_world``. The frame conventions are the
ROS node's: ``map`` is z-up, ``recon_world`` the first camera's optical frame.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from recon_ros.geometry.transforms import map_from_optical, rigid_part, transform_points
from recon_ros.io.atomic import atomic_path
from recon_ros.io.ply import write_ply
from recon_ros.io.trajectory import write_tum

log = logging.getLogger(__name__)

MAP_FRAME = "map"
RECON_FRAME = "recon_world"
CAMERA_FRAME = "recon_camera"
TOPICS = {
    "map_cloud": "/recon/map_cloud",
    "frame_cloud": "/recon/frame_cloud",
    "pose": "/recon/pose",
    "path": "/recon/path",
    "image": "/recon/image",
}


def _stack(poses: list) -> tuple[list[int], np.ndarray]:
    stamps = [int(s) for s, _ in poses]
    arr = np.stack([T for _, T in poses]) if poses else np.zeros((0, 4, 4))
    return stamps, arr


def save_keyframes(keyframes: list, directory: Path) -> Path:
    """One ``<id>.npz`` per keyframe (rgb, points_cam, confidence, valid, K, K_image, pose,
    stamp) in ``directory``, written as a whole (atomically)."""
    with atomic_path(directory) as tmp:
        tmp.mkdir(parents=True)
        for kf in keyframes:
            np.savez_compressed(
                tmp / f"{kf.id:06d}.npz", rgb=kf.rgb, points_cam=kf.points_cam,
                confidence=kf.confidence, colors=kf.colors, valid=kf.valid, K=kf.K,
                K_image=kf.K_image, T_world_cam=kf.T_world_cam, stamp_ns=np.int64(kf.stamp_ns))
    return directory


def save_reconstruction(recon: Any, directory: Path, keyframes: bool = True) -> dict[str, Path]:
    """Write map.ply, trajectory.tum and keyframes.tum (+ keyframes/) under ``directory``.

    Coordinates are those of ``recon_world`` (first camera's optical frame, metric when the
    scale is known), as the evaluation expects.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    xyz, rgb, conf = recon.fused_cloud()
    out = {"map": write_ply(directory / "map.ply", xyz, rgb, conf)}
    stamps, poses = _stack(recon.trajectory())
    out["trajectory"] = write_tum(directory / "trajectory.tum", stamps, poses,
                                  header="camera poses in recon_world (T_world_cam)")
    kfs = recon.keyframes()
    kstamps, kposes = _stack([(kf.stamp_ns, rigid_part(kf.T_world_cam)) for kf in kfs])
    out["keyframe_trajectory"] = write_tum(directory / "keyframes.tum", kstamps, kposes,
                                           header="keyframe poses in recon_world (T_world_cam)")
    if keyframes:
        out["keyframes"] = save_keyframes(kfs, directory / "keyframes")
    return out


class ReconBagRecorder:
    """Writes reconstruction results to a rosbag2 as the ROS node would publish them."""

    def __init__(self, writer: Any, frame_clouds: bool = False, images: bool = False) -> None:
        self.writer = writer
        self.types = writer.types
        self.frame_clouds = frame_clouds
        self.images = images
        self.T_map_recon = map_from_optical()
        w = writer
        w.add_topic(TOPICS["map_cloud"], "sensor_msgs/msg/PointCloud2", qos="latched")
        w.add_topic(TOPICS["pose"], "geometry_msgs/msg/PoseStamped")
        w.add_topic(TOPICS["path"], "nav_msgs/msg/Path", qos="latched")
        w.add_topic("/tf", "tf2_msgs/msg/TFMessage")
        w.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", qos="latched")
        if frame_clouds:
            w.add_topic(TOPICS["frame_cloud"], "sensor_msgs/msg/PointCloud2")
        if images:
            w.add_topic(TOPICS["image"], "sensor_msgs/msg/Image")
        self._static_written = False
        self._last_stamp: Optional[int] = None

    def _static(self, stamp_ns: int) -> None:
        from recon_ros.io.messages import make_tf_message, make_transform_stamped
        if self._static_written:
            return
        tf = make_transform_stamped(self.types, self.T_map_recon, MAP_FRAME, RECON_FRAME, stamp_ns)
        self.writer.write("/tf_static", make_tf_message(self.types, [tf]), stamp_ns)
        self._static_written = True

    def estimate(self, est: Any) -> None:
        """Pose, TF and (optionally) the frame's cloud and image of one final estimate."""
        from recon_ros.io.messages import (make_image, make_pointcloud2, make_pose_stamped,
                                           make_tf_message, make_transform_stamped)
        stamp = int(est.stamp_ns)
        self._static(stamp)
        T_map_cam = rigid_part(self.T_map_recon @ est.T_world_cam)
        self.writer.write(TOPICS["pose"], make_pose_stamped(self.types, T_map_cam, MAP_FRAME, stamp), stamp)
        tf = make_transform_stamped(self.types, T_map_cam, MAP_FRAME, CAMERA_FRAME, stamp)
        self.writer.write("/tf", make_tf_message(self.types, [tf]), stamp)
        if self.frame_clouds:
            ok = est.valid_mask()
            xyz = transform_points(self.T_map_recon, est.points[ok].astype(np.float32))
            msg = make_pointcloud2(self.types, xyz, stamp, MAP_FRAME, colors=est.colors[ok],
                                   confidence=est.confidence[ok])
            self.writer.write(TOPICS["frame_cloud"], msg, stamp)
        if self.images and est.frame is not None:
            self.writer.write(TOPICS["image"], make_image(self.types, est.frame.rgb, "rgb8", stamp,
                                                          CAMERA_FRAME), stamp)
        self._last_stamp = stamp

    def map(self, recon: Any, stamp_ns: Optional[int] = None) -> None:
        """The fused map and the keyframe path at ``stamp_ns`` (default: the last estimate)."""
        from recon_ros.io.messages import make_path, make_pointcloud2
        stamp = int(stamp_ns if stamp_ns is not None else (self._last_stamp or 0))
        self._static(stamp)
        xyz, rgb, conf = recon.fused_cloud()
        xyz = transform_points(self.T_map_recon, np.asarray(xyz, dtype=np.float32))
        self.writer.write(TOPICS["map_cloud"],
                          make_pointcloud2(self.types, xyz, stamp, MAP_FRAME, colors=rgb, confidence=conf), stamp)
        poses = [(kf.stamp_ns, rigid_part(self.T_map_recon @ kf.T_world_cam)) for kf in recon.keyframes()]
        self.writer.write(TOPICS["path"], make_path(self.types, poses, MAP_FRAME, stamp), stamp)
