"""What a reconstruction leaves behind: map PLY, mesh PLY, occupancy grid, trajectories,
keyframes, and an output bag.

``save_reconstruction`` writes the files (each atomically); ``ReconBagRecorder`` writes the
output rosbag2 that ``ros2 bag play`` + RViz (fixed frame ``map``) shows: the fused map
(``/recon/map_cloud``), at the end the mesh (``/recon/map_mesh``, a Marker TRIANGLE_LIST) and
the occupancy grid (``/recon/occupancy``), optional per-frame clouds, the camera pose and
keyframe path, the node's TF (``map -> <camera frame>``, ``map -> base`` or ``map -> odom``) and
the static ``map -> recon_world``. The frame conventions are the ROS node's: ``map`` is z-up,
``recon_world`` the first camera's optical frame. The occupancy grid is cut in ``map`` (z-up); map.ply and mesh.ply are in
``recon_world`` like the trajectories, as the evaluation expects.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from recon_ros.io.arrays import write_npz
from recon_ros.io.atomic import write_bytes_atomic, write_text_atomic

from recon_ros.geometry.transforms import rigid_part, transform_points
from recon_ros.io.atomic import atomic_path
from recon_ros.io.ply import write_ply
from recon_ros.io.trajectory import write_tum

log = logging.getLogger(__name__)

CAMERA_FRAME = "recon_camera"  # the camera frame of inputs whose frames carry no frame id
TOPICS = {
    "map_cloud": "/recon/map_cloud",
    "frame_cloud": "/recon/frame_cloud",
    "pose": "/recon/pose",
    "path": "/recon/path",
    "image": "/recon/image",
    "map_mesh": "/recon/map_mesh",
    "occupancy": "/recon/occupancy",
}


def _stack(poses: list) -> tuple[list[int], np.ndarray]:
    stamps = [int(s) for s, _ in poses]
    arr = np.stack([T for _, T in poses]) if poses else np.zeros((0, 4, 4))
    return stamps, arr


def save_keyframes(keyframes: list, directory: Path) -> Path:
    """One ``<id>.npz`` per keyframe (rgb, points_cam, confidence, colors, valid, K, K_image,
    pose, stamp, pixel map, depth source, mask) in ``directory``, written as a whole
    (atomically). :func:`load_keyframes` reads them back."""
    with atomic_path(directory) as tmp:
        tmp.mkdir(parents=True)
        for kf in keyframes:
            pm = kf.pixel_map
            extra = {} if kf.mask is None else {"mask": kf.mask}
            write_npz(tmp / f"{kf.id:06d}.npz", dict(
                rgb=kf.rgb, points_cam=kf.points_cam, confidence=kf.confidence, colors=kf.colors,
                valid=kf.valid, K=kf.K, K_image=kf.K_image, T_world_cam=kf.T_world_cam,
                stamp_ns=np.int64(kf.stamp_ns), id=np.int64(kf.id), depth_source=np.str_(kf.depth_source),
                pixel_map=np.array([pm.sx, pm.sy, pm.tx, pm.ty, *pm.image_size, *pm.model_size],
                                   dtype=np.float64), **extra))
    return directory


def load_keyframes(directory: Path) -> list:
    """The keyframes :func:`save_keyframes` wrote, in id order. A file that is unreadable or
    lacks a field raises :class:`~recon_ros.errors.DataFormatError` naming it."""
    from recon_ros.errors import DataFormatError
    from recon_ros.geometry.camera import PixelMap
    from recon_ros.mapping.frame import Keyframe

    out = []
    for path in sorted(Path(directory).glob("*.npz")):
        try:
            with np.load(path, allow_pickle=False) as z:
                pm = z["pixel_map"].tolist()
                out.append(Keyframe(
                    id=int(z["id"]), stamp_ns=int(z["stamp_ns"]), rgb=z["rgb"], points_cam=z["points_cam"],
                    confidence=z["confidence"], colors=z["colors"], K=z["K"], K_image=z["K_image"],
                    pixel_map=PixelMap(pm[0], pm[1], pm[2], pm[3], (int(pm[4]), int(pm[5])),
                                       (int(pm[6]), int(pm[7]))),
                    T_world_cam=z["T_world_cam"], valid=z["valid"], depth_source=str(z["depth_source"]),
                    mask=z["mask"] if "mask" in z.files else None))
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise DataFormatError(f"keyframe record {path} is unreadable ({exc})") from None
    return sorted(out, key=lambda kf: kf.id)


def save_reconstruction(recon: Any, directory: Path, keyframes: bool = True) -> dict[str, Path]:
    """Write map.ply, trajectory.tum and keyframes.tum (+ keyframes/) under ``directory``.

    Coordinates are those of ``recon_world`` (first camera's optical frame, metric when the
    scale is known), as the evaluation expects.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    xyz, normals, rgb, weight = recon.surface.points()
    out = {"map": write_ply(directory / "map.ply", xyz, rgb, weight, normals=normals)}
    verts, faces, vrgb, vnormals = recon.mesh()
    out["mesh"] = write_ply(directory / "mesh.ply", verts, vrgb, faces=faces, normals=vnormals)
    grid = map_occupancy(recon)
    out.update(write_occupancy(directory / "occupancy", grid, recon.cfg.map.occupancy))
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


def map_occupancy(recon: Any, T_map_recon: Optional[np.ndarray] = None):
    """The occupancy grid of a reconstruction's surface in the z-up ``map`` frame
    (``T_map_recon`` defaults to the static optical -> z-up rotation)."""
    return recon.occupancy(T_map_recon)


def write_occupancy(stem: Path, grid: Any, cfg: Any) -> dict[str, Path]:
    """``stem``.pgm + ``stem``.yaml in the map_server format (trinary: occupied black 0, free
    white 254, unknown grey with the occupancy halfway between the two thresholds, so that
    map_server reads it back as unknown whatever thresholds are configured; the image's
    first row is the grid's last, +y up)."""
    stem = Path(stem)
    if not 0.0 <= cfg.free_thresh < cfg.occupied_thresh <= 1.0:
        raise ValueError(f"occupancy thresholds must satisfy 0 <= free_thresh ({cfg.free_thresh}) "
                         f"< occupied_thresh ({cfg.occupied_thresh}) <= 1")
    unknown = int(round(255.0 * (1.0 - 0.5 * (cfg.free_thresh + cfg.occupied_thresh))))
    pix = np.full(grid.data.shape, unknown, np.uint8)
    pix[grid.data == 100] = 0
    pix[grid.data == 0] = 254
    pix = pix[::-1]
    h, w = pix.shape
    pgm = write_bytes_atomic(stem.with_suffix(".pgm"), f"P5\n{w} {h}\n255\n".encode("ascii") + pix.tobytes())
    x, y, yaw = grid.origin
    text = (f"image: {pgm.name}\nmode: trinary\nresolution: {grid.resolution:.6g}\n"
            f"origin: [{x:.6f}, {y:.6f}, {yaw:.6f}]\nnegate: 0\n"
            f"occupied_thresh: {cfg.occupied_thresh:.6g}\nfree_thresh: {cfg.free_thresh:.6g}\n")
    yml = write_text_atomic(stem.with_suffix(".yaml"), text)
    return {"occupancy_image": pgm, "occupancy": yml}


def read_pgm(path: Path) -> np.ndarray:
    """A binary (P5, 8-bit) PGM image as a (rows, cols) uint8 array."""
    from recon_ros.errors import DataFormatError

    data = Path(path).read_bytes()
    tokens, pos = [], 0
    while len(tokens) < 4:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while end < len(data) and not data[end:end + 1].isspace():
            end += 1
        tokens.append(data[pos:end])
        pos = end
    if tokens[0] != b"P5" or int(tokens[3]) > 255:
        raise DataFormatError(f"{path} is not an 8-bit binary PGM")
    w, h = int(tokens[1]), int(tokens[2])
    body = data[pos + 1:pos + 1 + w * h]
    if len(body) != w * h:
        raise DataFormatError(f"{path} is truncated")
    return np.frombuffer(body, dtype=np.uint8).reshape(h, w)


class ReconBagRecorder:
    """Writes reconstruction results to a rosbag2 as recon_node publishes them, with the same
    frames (``frames``: an :class:`recon_ros.ros.schema.OutputFramesConfig`; pose and TF come
    from :func:`recon_ros.ros.tf.estimate_outputs`, as in the node): with a base frame the map
    starts at the body's first pose (the camera mounting ``frame.extras['T_base_cam']``) and the
    body's pose is written, with an odom frame ``map -> odom`` from ``frame.T_odom_cam``."""

    def __init__(self, writer: Any, frame_clouds: bool = False, images: bool = False,
                 frames: Any = None) -> None:
        from recon_ros.ros.schema import OutputFramesConfig
        self.writer = writer
        self.types = writer.types
        self.frame_clouds = frame_clouds
        self.images = images
        self.frames = frames if frames is not None else OutputFramesConfig()
        self.T_map_recon: Optional[np.ndarray] = None  # fixed at the first estimate
        self.T_base_cam: Optional[np.ndarray] = None
        w = writer
        w.add_topic(TOPICS["map_cloud"], "sensor_msgs/msg/PointCloud2", qos="latched")
        w.add_topic(TOPICS["pose"], "geometry_msgs/msg/PoseStamped")
        w.add_topic(TOPICS["path"], "nav_msgs/msg/Path", qos="latched")
        w.add_topic(TOPICS["map_mesh"], "visualization_msgs/msg/Marker", qos="latched")
        w.add_topic(TOPICS["occupancy"], "nav_msgs/msg/OccupancyGrid", qos="latched")
        w.add_topic("/tf", "tf2_msgs/msg/TFMessage")
        w.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", qos="latched")
        if frame_clouds:
            w.add_topic(TOPICS["frame_cloud"], "sensor_msgs/msg/PointCloud2")
        if images:
            w.add_topic(TOPICS["image"], "sensor_msgs/msg/Image")
        self._last_stamp: Optional[int] = None

    def _anchor(self, stamp_ns: int, T_base_cam: Optional[np.ndarray] = None) -> np.ndarray:
        """``T_map_recon``, fixed (and written as static TF) at the first estimate."""
        from recon_ros.io.messages import make_tf_message, make_transform_stamped
        from recon_ros.ros.tf import map_from_recon
        if self.T_map_recon is None:
            f = self.frames
            if f.base_frame and T_base_cam is None:
                log.warning("output bag: no mounting of the camera in %s (no TF in the input): "
                            "the map starts at the camera's first pose", f.base_frame)
            self.T_base_cam = T_base_cam if f.base_frame else None
            self.T_map_recon = map_from_recon(self.T_base_cam)
            tf = make_transform_stamped(self.types, self.T_map_recon, f.map_frame, f.recon_frame, stamp_ns)
            self.writer.write("/tf_static", make_tf_message(self.types, [tf]), stamp_ns)
        return self.T_map_recon

    def estimate(self, est: Any) -> None:
        """Pose, TF and (optionally) the frame's cloud and image of one final estimate."""
        from recon_ros.io.messages import (make_image, make_pointcloud2, make_pose_stamped,
                                           make_tf_message, make_transform_stamped)
        from recon_ros.ros.tf import estimate_outputs
        stamp = int(est.stamp_ns)
        frame = est.frame
        camera_frame = (frame.frame_id if frame is not None and frame.frame_id else CAMERA_FRAME)
        extras = frame.extras if frame is not None and frame.extras else {}
        T_map_recon = self._anchor(stamp, extras.get("T_base_cam"))
        o = estimate_outputs(self.frames, T_map_recon, est.T_world_cam, camera_frame, self.T_base_cam,
                             frame.T_odom_cam if frame is not None else None)
        map_frame = self.frames.map_frame
        self.writer.write(TOPICS["pose"], make_pose_stamped(self.types, o.T_map_base, map_frame, stamp), stamp)
        if o.tf is not None:
            tf = make_transform_stamped(self.types, o.tf[2], o.tf[0], o.tf[1], stamp)
            self.writer.write("/tf", make_tf_message(self.types, [tf]), stamp)
        if self.frame_clouds:
            ok = est.valid_mask()
            xyz = transform_points(T_map_recon, est.points[ok].astype(np.float32))
            msg = make_pointcloud2(self.types, xyz, stamp, map_frame, colors=est.colors[ok],
                                   confidence=est.confidence[ok])
            self.writer.write(TOPICS["frame_cloud"], msg, stamp)
        if self.images and frame is not None:
            self.writer.write(TOPICS["image"], make_image(self.types, frame.rgb, "rgb8", stamp, camera_frame), stamp)
        self._last_stamp = stamp

    def map(self, recon: Any, stamp_ns: Optional[int] = None, products: bool = False) -> None:
        """The fused map and the keyframe path at ``stamp_ns`` (default: the last estimate);
        with ``products`` also the mesh and the occupancy grid."""
        from recon_ros.io.messages import make_path, make_pointcloud2
        stamp = int(stamp_ns if stamp_ns is not None else (self._last_stamp or 0))
        T_map_recon = self._anchor(stamp)
        map_frame = self.frames.map_frame
        xyz, rgb, conf = recon.fused_cloud()
        xyz = transform_points(T_map_recon, np.asarray(xyz, dtype=np.float32))
        self.writer.write(TOPICS["map_cloud"],
                          make_pointcloud2(self.types, xyz, stamp, map_frame, colors=rgb, confidence=conf), stamp)
        poses = [(kf.stamp_ns, rigid_part(T_map_recon @ kf.T_world_cam)) for kf in recon.keyframes()]
        self.writer.write(TOPICS["path"], make_path(self.types, poses, map_frame, stamp), stamp)
        if products:
            from recon_ros.io.messages import make_occupancy_grid, mesh_marker_cdr, message_has_field
            verts, faces, vrgb, _ = recon.mesh()
            verts = transform_points(T_map_recon, np.asarray(verts, dtype=np.float32))
            marker = self.types["visualization_msgs/msg/Marker"]
            self.writer.write_raw(TOPICS["map_mesh"], mesh_marker_cdr(
                verts, faces, stamp, map_frame, colors=vrgb,
                texture_fields=message_has_field(marker, "mesh_file")), stamp)
            grid = map_occupancy(recon, T_map_recon)
            self.writer.write(TOPICS["occupancy"], make_occupancy_grid(self.types, grid.data, grid.resolution,
                                                                       grid.origin, stamp, map_frame), stamp)
