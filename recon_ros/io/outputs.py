"""What a reconstruction leaves behind: map PLY, mesh PLY, occupancy grid, trajectories,
keyframes, and an output bag.

``save_reconstruction`` writes the files (each atomically); :class:`BagSink` records the
output rosbag2 that ``ros2 bag play`` + RViz (fixed frame ``map``) shows, with the messages
recon_node would publish (built by :class:`recon_ros.pipeline.outputs.ResultPublisher`): the
fused map (``/recon/map_cloud``), the mesh (``/recon/map_mesh``, a Marker TRIANGLE_LIST) and the
occupancy grid (``/recon/occupancy``), optional per-frame clouds, the camera pose, keyframe path
and tracking state, the node's TF (``map -> <camera frame>``, ``map -> base`` or
``map -> odom``) and the static ``map -> recon_world``. The frame conventions are the ROS
node's: ``map`` is z-up, ``recon_world`` the first camera's optical frame. The occupancy grid is
cut in ``map`` (z-up); map.ply and mesh.ply are in ``recon_world`` like the trajectories, as
the evaluation expects.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from recon_ros.geometry.transforms import rigid_part
from recon_ros.io.arrays import write_npz
from recon_ros.io.atomic import atomic_path, write_bytes_atomic, write_text_atomic
from recon_ros.io.ply import write_ply
from recon_ros.io.trajectory import write_tum

log = logging.getLogger(__name__)

TOPICS = {  # of the output bag
    "map_cloud": "/recon/map_cloud",
    "frame_cloud": "/recon/frame_cloud",
    "pose": "/recon/pose",
    "path": "/recon/path",
    "tracking_state": "/recon/tracking_state",
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


class BagSink:
    """A :class:`recon_ros.pipeline.outputs.Sink` that writes recon_node's outputs into a
    rosbag2 (``writer``: an open :class:`~recon_ros.io.bag_writer.BagWriter`) under
    :data:`TOPICS`, TF as ``tf2_msgs/TFMessage`` on ``/tf`` and ``/tf_static``. Per-frame
    clouds only with ``frame_clouds``; the node's other per-frame and keyframe topics are not
    recorded."""

    RECORDED = {  # topic key -> (bag topic, message type, QoS)
        "pose": (TOPICS["pose"], "geometry_msgs/msg/PoseStamped", "reliable"),
        "path": (TOPICS["path"], "nav_msgs/msg/Path", "latched"),
        "tracking_state": (TOPICS["tracking_state"], "std_msgs/msg/String", "latched"),
        "map_cloud": (TOPICS["map_cloud"], "sensor_msgs/msg/PointCloud2", "latched"),
        "map_mesh": (TOPICS["map_mesh"], "visualization_msgs/msg/Marker", "latched"),
        "occupancy": (TOPICS["occupancy"], "nav_msgs/msg/OccupancyGrid", "latched"),
        "tf": ("/tf", "tf2_msgs/msg/TFMessage", "reliable"),
        "tf_static": ("/tf_static", "tf2_msgs/msg/TFMessage", "latched"),
        "frame_cloud": (TOPICS["frame_cloud"], "sensor_msgs/msg/PointCloud2", "reliable"),
    }

    def __init__(self, writer: Any, frame_clouds: bool = False) -> None:
        self.writer = writer
        self.types = writer.types
        self._keys = {k for k in self.RECORDED if k != "frame_cloud" or frame_clouds}
        for key in sorted(self._keys):
            topic, msgtype, qos = self.RECORDED[key]
            writer.add_topic(topic, msgtype, qos=qos)

    def wants(self, key: str) -> bool:
        return key in self._keys

    def emit(self, key: str, msg: Any, stamp_ns: int) -> None:
        from recon_ros.io.messages import make_tf_message
        topic = self.RECORDED[key][0]
        if key == "map_mesh":
            self.writer.write_raw(topic, msg, stamp_ns)
        elif key in ("tf", "tf_static"):
            self.writer.write(topic, make_tf_message(self.types, [msg]), stamp_ns)
        else:
            self.writer.write(topic, msg, stamp_ns)
