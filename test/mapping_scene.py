"""Test helper: a tiny analytic RGB-D scene for the mapping tests (not a scene generator).

A textured box room (inside view) with a few textured boxes standing in it, ray-cast exactly
by the package's caster (``recon_ros.io.synth.scene.cast_rays``). World frame = optical
convention (x right, y down, z forward), the floor at y = +half_y. ``render`` returns the colour image, z-depth and ground-truth surface distance
helpers; ``loop_trajectory`` gives camera poses along a closed loop. Kept deliberately small;
the full synthetic-scene generator lives in ``recon_ros.io.synth``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recon_ros.geometry.camera import make_K
from recon_ros.geometry.transforms import make_T, rotvec_to_matrix
from recon_ros.io.synth.scene import cast_rays
from recon_ros.io.synth.shapes import Box, Room


@dataclass
class BoxRoom:
    half: tuple = (2.5, 1.3, 3.0)  # room half extents (x, y, z) in metres
    boxes: list = field(default_factory=lambda: [
        ((-1.2, 0.7, 1.4), (0.35, 0.6, 0.35)),   # (centre, half extents)
        ((1.3, 0.9, -1.0), (0.4, 0.4, 0.5)),
        ((0.9, 0.5, 1.9), (0.25, 0.8, 0.25)),
        ((-1.5, 0.95, -1.6), (0.5, 0.35, 0.3)),
    ])

    def solids(self) -> list:
        """The room and its boxes as the synthetic scene's solids (index 0 is the room)."""
        h = np.array(self.half, dtype=np.float64)
        return [Room(lo=-h, hi=h)] + [Box(center=np.array(c, dtype=np.float64), half=np.array(e, dtype=np.float64))
                                      for c, e in self.boxes]

    def render(self, K: np.ndarray, T_world_cam: np.ndarray, width: int, height: int):
        """(rgb uint8 H x W x 3, depth float32 H x W) seen from ``T_world_cam``."""
        u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
        d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
        R, o = T_world_cam[:3, :3], T_world_cam[:3, 3]
        d = d_cam.reshape(-1, 3) @ R.T  # z-depth equals the ray parameter since d_cam.z = 1
        hits = cast_rays(self.solids(), o, d)
        # 0..2 room walls (by the axis of their normal), 3+ boxes
        kind = np.where(hits.solid == 0, np.argmax(np.abs(hits.normals), axis=1), 2 + hits.solid)
        tex = self._texture(hits.points, kind)
        rgb = np.clip(tex, 0, 255).astype(np.uint8).reshape(height, width, 3)
        return rgb, hits.t.astype(np.float32).reshape(height, width)

    @staticmethod
    def _texture(p: np.ndarray, kind: np.ndarray) -> np.ndarray:
        base = np.array([[200, 170, 140], [150, 180, 210], [180, 200, 150], [220, 120, 90],
                         [90, 140, 220], [230, 210, 80], [140, 90, 170]], dtype=np.float64)
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        pat = (np.sin(7.0 * x + 3.0 * np.sin(2.0 * z)) * np.cos(6.0 * y + 1.3 * z)
               + 0.6 * np.sin(11.0 * z - 5.0 * x) + 0.5 * np.sign(np.sin(4.0 * (x + y + z))))
        return base[kind % len(base)] * (0.65 + 0.15 * pat[:, None])

    def distance_to_surface(self, pts: np.ndarray) -> np.ndarray:
        """Distance of world points to the nearest scene surface (walls or box faces)."""
        p = np.asarray(pts, dtype=np.float64)
        h = np.array(self.half)
        dist = np.min(h - np.abs(p), axis=1)  # inside the room: to the nearest wall
        dist = np.abs(dist)
        for c, e in self.boxes:
            q = np.abs(p - np.array(c)) - np.array(e)
            outside = np.linalg.norm(np.maximum(q, 0), axis=1)
            inside = np.minimum(np.max(q, axis=1), 0)
            dist = np.minimum(dist, np.abs(outside + inside))
        return dist


def loop_trajectory(n: int, radius: float = 0.6, turns: float = 1.0) -> list[np.ndarray]:
    """``n`` camera poses on a closed horizontal circle, looking outwards and slightly down."""
    out = []
    for i in range(n):
        a = 2 * np.pi * turns * i / n
        pos = np.array([radius * np.cos(a), 0.1 * np.sin(3 * a), radius * np.sin(a)])
        yaw = a + 0.9  # look ahead of the radial direction
        R = rotvec_to_matrix(np.array([0.0, -yaw, 0.0])) @ rotvec_to_matrix(np.array([-0.25, 0.0, 0.0]))
        out.append(make_T(R, pos))
    return out


def camera(width: int, height: int) -> np.ndarray:
    """Intrinsics of a 60-degree-ish horizontal field of view at this size."""
    f = 0.85 * width
    return make_K(f, f, (width - 1) / 2.0, (height - 1) / 2.0)


def ate_rmse(est: np.ndarray, gt: np.ndarray) -> float:
    """RMSE of camera positions after rigidly aligning the first poses (both start at gt[0])."""
    e = np.array([p[:3, 3] for p in est])
    g = np.array([p[:3, 3] for p in gt])
    return float(np.sqrt(np.mean(np.sum((e - g) ** 2, axis=1))))


def rgbd_sequence(width: int, height: int, n: int, noise: float, seed: int = 0):
    """(room, true poses, Frames with Gaussian depth noise of std ``noise``) along the loop."""
    from recon_ros.mapping.frame import Frame

    room = BoxRoom()
    K = camera(width, height)
    traj = loop_trajectory(n)
    rng = np.random.default_rng(seed)
    frames = []
    for i, T in enumerate(traj):
        rgb, depth = room.render(K, T, width, height)
        depth = depth + rng.normal(0, noise, depth.shape).astype(np.float32)
        frames.append(Frame(stamp_ns=int(i * 33_333_333), rgb=rgb, K=K, depth=depth, index=i))
    return room, traj, frames


def quick_rgbd_config(**values):
    """A ReconConfig for the rgbd frontend at reduced tracking and fusion resolution (tests
    need speed, not millimetres); ``values`` set further parameters by dotted name."""
    from recon_ros.config import set_value
    from recon_ros.mapping.reconstructor import ReconConfig

    cfg = ReconConfig()
    for name, value in {"frontend.name": "rgbd", "tracking.max_width": 80, "tracking.pyramid_levels": 3,
                        "map.voxel_size_m": 0.04, "map.fusion_max_width": 160, **values}.items():
        set_value(cfg, name, value)
    return cfg
