"""Every message conversion and the input matcher the nodes use, in one place.

The conversions themselves are the pure functions of :mod:`recon_ros.io.messages` and the
matching is :class:`recon_ros.io.sync.ApproximateTimeMatcher`; this module adapts them to what
the nodes need (keyframe clouds and infos, paths, matchers); frames are decoded by
:class:`recon_ros.io.frames.FrameDecoder`, as in the bag reader. Builders take
a :class:`~recon_ros.io.messages.MessageTypes`: ``rclpy_types()`` in the nodes, ``rosbags_types()``
in the tests.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from recon_ros.errors import DataFormatError
from recon_ros.io import messages as M
from recon_ros.io.messages import MessageTypes, rclpy_types, rosbags_types  # noqa: F401 (re-export)
from recon_ros.io.sync import ApproximateTimeMatcher
from recon_ros.mapping.frame import Keyframe

stamp_to_ns = M.stamp_to_ns
transform_to_matrix = M.transform_to_matrix


# -- inputs ------------------------------------------------------------------------------------
def K_from_camera_info(msg: Any) -> np.ndarray:
    return M.camera_info_to_model(msg).K


def make_matcher(secondaries: Sequence[str], slop_s: float, queue_size: int) -> ApproximateTimeMatcher:
    """Matcher of the 'image' stream with the named secondary streams (camera_info, depth)."""
    return ApproximateTimeMatcher("image", list(secondaries), slop_ns=int(round(slop_s * 1e9)),
                                  max_queue=queue_size)


def matcher_counts(matcher: ApproximateTimeMatcher) -> dict[str, int]:
    """Counters of a matcher for logs and diagnostics."""
    st = matcher.stats
    out = {"sync_matched": st.matched, "sync_unmatched_images": st.unmatched,
           "sync_out_of_order": st.out_of_order, "sync_overflow": st.overflow}
    out.update({f"sync_unused_{k}": v for k, v in st.unused.items()})
    return out


# -- outputs -----------------------------------------------------------------------------------
def pose_stamped(t: MessageTypes, T: np.ndarray, stamp_ns: int, frame_id: str) -> Any:
    return M.make_pose_stamped(t, T, frame_id, stamp_ns)


def transform_stamped(t: MessageTypes, T: np.ndarray, stamp_ns: int, parent: str, child: str) -> Any:
    return M.make_transform_stamped(t, T, parent, child, stamp_ns)


def path(t: MessageTypes, poses: Sequence[tuple[int, np.ndarray]], stamp_ns: int, frame_id: str) -> Any:
    return M.make_path(t, poses, frame_id, stamp_ns)


def path_poses(msg: Any) -> dict[int, np.ndarray]:
    """stamp_ns -> 4x4 of a nav_msgs/Path."""
    stamps, poses = M.path_to_arrays(msg)
    return {int(s): T for s, T in zip(stamps, poses)}


def odometry(t: MessageTypes, T: np.ndarray, stamp_ns: int, frame_id: str, child: str) -> Any:
    """Odometry of a pose; covariances 'unknown' (large), since the network reports none."""
    return M.make_odometry(t, T, frame_id, child, stamp_ns)


def cloud(t: MessageTypes, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray, stamp_ns: int,
          frame_id: str) -> Any:
    """PointCloud2 (x y z rgb confidence); organised when the arrays are H x W (x 3)."""
    return M.make_pointcloud2(t, np.asarray(xyz, dtype=np.float32), stamp_ns, frame_id,
                              colors=np.asarray(rgb, dtype=np.uint8), confidence=np.asarray(conf, np.float32))


def cloud_arrays(msg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyz, rgb, confidence) of a cloud written by :func:`cloud` (organised shapes kept)."""
    d = M.pointcloud2_to_xyz(msg)
    xyz = d["points"]
    rgb = d.get("colors")
    conf = d.get("confidence")
    if rgb is None or conf is None:
        raise DataFormatError("keyframe clouds need rgb and confidence fields (recon_node's ~/keyframes)")
    if int(msg.height) <= 1:
        raise DataFormatError("keyframe clouds must be organised (height > 1)")
    return xyz, rgb, conf


def image(t: MessageTypes, arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    return M.make_image(t, arr, encoding, stamp_ns, frame_id)


def keyframe_info(t: MessageTypes, kf: Keyframe, frame_id: str) -> Any:
    """CameraInfo of a keyframe's pointmap grid (its K, no distortion), stamped like the keyframe."""
    h, w = kf.points_cam.shape[:2]
    return M.make_camera_info(t, kf.K, w, h, kf.stamp_ns, frame_id)


def keyframe_cloud(t: MessageTypes, kf: Keyframe, frame_id: str) -> Any:
    """Organised PointCloud2 of a keyframe in its own camera frame (invalid pixels are NaN)."""
    xyz = np.asarray(kf.points_cam, dtype=np.float32).copy()
    xyz[~np.asarray(kf.valid, dtype=bool)] = np.nan
    return cloud(t, xyz, kf.colors, kf.confidence, kf.stamp_ns, frame_id)


def mesh_marker(t: MessageTypes, verts: np.ndarray, faces: np.ndarray, colors: np.ndarray, stamp_ns: int,
                frame_id: str) -> bytes:
    """The serialized Marker TRIANGLE_LIST (:func:`recon_ros.io.messages.mesh_marker_cdr`) in
    the layout of this ROS distribution's Marker; publishers take the bytes as they are."""
    texture_fields = M.message_has_field(t["visualization_msgs/msg/Marker"], "mesh_file")
    return M.mesh_marker_cdr(verts, faces, stamp_ns, frame_id, colors=colors, texture_fields=texture_fields)


def occupancy_grid(t: MessageTypes, grid: Any, stamp_ns: int, frame_id: str) -> Any:
    """nav_msgs/OccupancyGrid of a :class:`recon_ros.mapping.occupancy.OccupancyGrid`."""
    return M.make_occupancy_grid(t, grid.data, grid.resolution, grid.origin, stamp_ns, frame_id)
