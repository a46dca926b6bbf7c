"""Test helper for the refine tests: a textured box room ray-cast by the package's caster.

This is test support, not a reconstruction: it renders images and exact pointmaps of a
small axis-aligned box room (optionally with solid boxes inside it, one of which may move)
from known cameras, and builds :class:`~recon_ros.mapping.frame.Keyframe` records from them.

:class:`DriftingFrontendDouble` is a *test double* for a learned frontend: it takes the
ground-truth keyframes and returns copies whose poses follow an accumulated Sim(3) drift of
the world frame (rotation, translation and scale random walk with a bias) and whose pointmaps
carry multiplicative depth noise, the failure modes the global alignment and MVS must fix.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from recon_ros.geometry.camera import PixelMap, make_K
from recon_ros.geometry.transforms import make_T, rotvec_to_matrix, transform_points
from recon_ros.io.synth.scene import cast_rays
from recon_ros.io.synth.shapes import Box as SolidBox
from recon_ros.io.synth.shapes import Room
from recon_ros.mapping.frame import Keyframe

TEXELS_PER_M = 64.0
TEX_SIZE = 512


def _texture(rng: np.random.Generator, flat: bool) -> np.ndarray:
    if flat:
        return np.full((TEX_SIZE, TEX_SIZE), 128.0, dtype=np.float32)
    tex = np.zeros((TEX_SIZE, TEX_SIZE), np.float32)
    for sigma, amp in ((1.0, 0.6), (2.5, 1.0), (6.0, 1.2), (14.0, 1.0)):
        noise = rng.standard_normal((TEX_SIZE, TEX_SIZE)).astype(np.float32)
        noise = gaussian_filter(noise, sigma, mode="wrap")
        tex += amp * noise / (noise.std() + 1e-6)
    tex = (tex - tex.mean()) / (tex.std() + 1e-6)
    return np.clip(128.0 + 45.0 * tex, 5.0, 250.0).astype(np.float32)


@dataclass
class Box:
    """A solid axis-aligned box seen from outside (``lo`` < ``hi``), textured with ``texture``."""

    lo: np.ndarray
    hi: np.ndarray
    texture: int


@dataclass
class BoxRoom:
    """Room interior [lo, hi] with one texture per wall (6) plus textures for solid boxes."""

    lo: np.ndarray = field(default_factory=lambda: np.array([-3.0, -1.5, -3.0]))
    hi: np.ndarray = field(default_factory=lambda: np.array([3.0, 1.5, 3.0]))
    seed: int = 0
    flat_walls: tuple = ()  # indices (0..5) of walls without texture
    boxes: list = field(default_factory=list)
    textures: list = field(default_factory=list)
    tints: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.textures = [_texture(rng, i in self.flat_walls) for i in range(8)]
        self.tints = rng.uniform(0.75, 1.0, size=(8, 3))

    def add_box(self, lo, hi, texture: int = 6) -> int:
        self.boxes.append(Box(np.asarray(lo, float), np.asarray(hi, float), texture))
        return len(self.boxes) - 1

    # ------------------------------------------------------------------ ray casting
    def cast(self, origin: np.ndarray, dirs: np.ndarray,
             box_offsets: Optional[dict] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hit distance t (along ``dirs``), hit point and colour per ray (N,), ray-cast by
        ``recon_ros.io.synth.scene.cast_rays``; ``box_offsets`` displaces boxes by index."""
        box_offsets = box_offsets or {}
        solids = [Room(lo=self.lo, hi=self.hi)] + [SolidBox(center=(b.lo + b.hi) / 2, half=(b.hi - b.lo) / 2)
                                                   for b in self.boxes]
        offsets = [np.zeros(3)] + [np.asarray(box_offsets.get(bi, np.zeros(3)), float)
                                   for bi in range(len(self.boxes))]
        hits = cast_rays(solids, origin, dirs, offsets)
        t, pts = hits.t, hits.points
        axis = np.argmax(np.abs(hits.normals), axis=1)  # the face's axis
        # room walls: 2 * axis + 1 for the wall at hi (its inward normal points to -axis); boxes: their texture
        wall = 2 * axis + (hits.normals[np.arange(len(t)), axis] < 0)
        box_tex = np.array([b.texture for b in self.boxes] + [0], dtype=np.int64)
        tex_id = np.where(hits.solid == 0, wall, box_tex[hits.solid - 1])
        rgb = np.zeros((len(t), 3), np.float32)
        for a in range(3):
            sel = axis == a
            if not np.any(sel):
                continue
            others = [b for b in range(3) if b != a]
            uv = pts[sel][:, others] * TEXELS_PER_M
            ids = tex_id[sel]
            g = np.zeros(int(sel.sum()), np.float32)
            for tid in np.unique(ids):
                m = ids == tid
                g[m] = _bilinear_wrap(self.textures[int(tid)], uv[m])
            rgb[sel] = g[:, None] * self.tints[tex_id[sel]]
        return t, pts, rgb


def _bilinear_wrap(tex: np.ndarray, uv: np.ndarray) -> np.ndarray:
    n = tex.shape[0]
    x, y = uv[:, 0], uv[:, 1]
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    x0 = x0.astype(np.int64) % n
    y0 = y0.astype(np.int64) % n
    x1 = (x0 + 1) % n
    y1 = (y0 + 1) % n
    return ((1 - fx) * (1 - fy) * tex[y0, x0] + fx * (1 - fy) * tex[y0, x1]
            + (1 - fx) * fy * tex[y1, x0] + fx * fy * tex[y1, x1]).astype(np.float32)


def render(room: BoxRoom, T_world_cam: np.ndarray, K: np.ndarray, width: int, height: int,
           supersample: int = 1, box_offsets: Optional[dict] = None) -> tuple[np.ndarray, np.ndarray]:
    """(rgb float (H, W, 3), points in the camera frame (H, W, 3)) at pixel centres."""
    s = supersample
    offs = (np.arange(s) + 0.5) / s - 0.5
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    R = T_world_cam[:3, :3]
    origin = T_world_cam[:3, 3]
    acc = np.zeros((height, width, 3), np.float32)
    pts_cam = None
    for du in offs:
        for dv in offs:
            x = (u + du - K[0, 2]) / K[0, 0]
            y = (v + dv - K[1, 2]) / K[1, 1]
            rays = np.stack([x, y, np.ones_like(x)], -1).reshape(-1, 3)
            dirs = rays @ R.T
            t, pts, rgb = room.cast(origin, dirs, box_offsets)
            acc += rgb.reshape(height, width, 3)
            if abs(du) < 1e-9 and abs(dv) < 1e-9 or pts_cam is None:
                pts_cam = (rays * t[:, None]).reshape(height, width, 3)
    return acc / (s * s), pts_cam.astype(np.float32)


def crop_resize_map(width: int, height: int, model: int) -> PixelMap:
    """Centre square crop of the image resized to ``model`` x ``model`` pixels."""
    side = min(width, height)
    x0 = (width - side) / 2.0
    y0 = (height - side) / 2.0
    s = model / side
    return PixelMap(s, s, -x0 * s, -y0 * s, (width, height), (model, model))


def look_at(eye, target, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """Camera-to-world pose of an optical camera (z forward, y down) at ``eye`` looking at ``target``."""
    eye = np.asarray(eye, float)
    z = np.asarray(target, float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(-np.asarray(up, float), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return make_T(np.stack([x, y, z], axis=1), eye)


def circle_poses(n: int, radius: float = 0.8, turns: float = 1.0, height: float = 0.0,
                 look_out: float = 2.0, wobble: float = 0.1) -> list[np.ndarray]:
    """Cameras on a horizontal circle looking outwards (a loop when ``turns`` = 1)."""
    poses = []
    for k in range(n):
        a = 2 * np.pi * turns * k / n
        eye = np.array([radius * np.cos(a), height + wobble * np.sin(3 * a), radius * np.sin(a)])
        dirn = np.array([np.cos(a + 0.5), 0.0, np.sin(a + 0.5)])
        poses.append(look_at(eye, eye + look_out * dirn))
    return poses


def strafe_poses(n: int, step: float = 0.15, distance: float = 1.8, yaw_deg: float = 20.0,
                 target: Optional[np.ndarray] = None) -> list[np.ndarray]:
    """Cameras translating sideways in front of the z = +3 wall, alternately yawed (wide baselines),
    or all looking at ``target`` when given."""
    poses = []
    for k in range(n):
        x = -0.5 * step * (n - 1) + step * k
        eye = np.array([x, 0.1 * np.sin(k), 3.0 - distance])
        if target is None:
            yaw = np.radians(yaw_deg) * np.sin(0.7 * k)
            poses.append(look_at(eye, eye + np.array([np.sin(yaw), 0.05, np.cos(yaw)])))
        else:
            poses.append(look_at(eye, np.asarray(target, float)))
    return poses


def make_keyframes(room: BoxRoom, poses: list, width: int = 160, height: int = 120, model: int = 96,
                   fov_deg: float = 70.0, stamp_step_ns: int = 500_000_000,
                   box_offsets_per_kf: Optional[list] = None) -> list[Keyframe]:
    """Ground-truth keyframes: rgb at ``width`` x ``height``, pointmaps on a centre-crop model grid."""
    f = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
    K_image = make_K(f, f, (width - 1) / 2.0, (height - 1) / 2.0)
    pm = crop_resize_map(width, height, model)
    K_model = pm.K_to_model(K_image)
    out = []
    for i, T in enumerate(poses):
        offs = box_offsets_per_kf[i] if box_offsets_per_kf is not None else None
        rgb, _ = render(room, T, K_image, width, height, supersample=2, box_offsets=offs)
        _, pts = render(room, T, K_model, model, model, supersample=1, box_offsets=offs)
        rgb8 = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        uv = pm.to_image(np.stack(np.meshgrid(np.arange(model), np.arange(model)), -1).astype(np.float64))
        colors = cv2.remap(rgb8, uv[..., 0].astype(np.float32), uv[..., 1].astype(np.float32),
                           cv2.INTER_LINEAR)
        out.append(Keyframe(id=i, stamp_ns=i * stamp_step_ns, rgb=rgb8, points_cam=pts,
                            confidence=np.full((model, model), 5.0, np.float32), colors=colors,
                            K=K_model, K_image=K_image, pixel_map=pm, T_world_cam=T.copy(),
                            valid=np.all(np.isfinite(pts), -1)))
    return out


def smooth_field(rng: np.random.Generator, h: int, w: int, amplitude: float, cells: int = 4) -> np.ndarray:
    """A smooth random field in [-amplitude, amplitude] (bicubic upsampling of a coarse grid)."""
    coarse = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    return amplitude * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


@dataclass
class DriftingFrontendDouble:
    """Test double of a drifting frontend built from ground-truth keyframes.

    Keyframe k gets the pose ``W_k @ T_true_k`` where ``W_k`` is a Sim(3) random walk of the
    world frame (per-step rotation ``rot_deg`` about a fixed axis plus noise, translation
    ``trans_m`` plus noise, log-scale ``log_scale``); the Sim(3) scale goes into the pointmap
    (as a learned frontend does), so the pose stays rigid. ``jitter_*`` add independent
    (non-accumulating) pose noise; ``depth_noise`` is a smooth multiplicative depth error and
    ``pixel_noise`` a per-pixel one.
    """

    rot_deg: float = 0.4
    trans_m: float = 0.01
    log_scale: float = 0.006
    noise_scale: float = 0.5
    jitter_deg: float = 0.0
    jitter_m: float = 0.0
    depth_noise: float = 0.0
    pixel_noise: float = 0.0
    seed: int = 0

    def apply(self, keyframes: list[Keyframe]) -> list[Keyframe]:
        rng = np.random.default_rng(self.seed)
        axis = rng.standard_normal(3)
        axis /= np.linalg.norm(axis)
        tdir = rng.standard_normal(3)
        tdir /= np.linalg.norm(tdir)
        W = np.eye(4)
        out = []
        for k, kf in enumerate(keyframes):
            if k > 0:
                rv = np.radians(self.rot_deg) * (axis + self.noise_scale * rng.standard_normal(3))
                tv = self.trans_m * (tdir + self.noise_scale * rng.standard_normal(3))
                ls = self.log_scale * (1.0 + self.noise_scale * rng.standard_normal())
                W = W @ make_T(rotvec_to_matrix(rv), tv, np.exp(ls))
            Tw = W @ kf.T_world_cam
            s = float(np.cbrt(np.linalg.det(Tw[:3, :3])))
            T_rigid = Tw.copy()
            T_rigid[:3, :3] /= s
            if self.jitter_deg > 0 or self.jitter_m > 0:
                J = make_T(rotvec_to_matrix(np.radians(self.jitter_deg) * rng.standard_normal(3)),
                           self.jitter_m * rng.standard_normal(3))
                T_rigid = T_rigid @ J
            h, w = kf.points_cam.shape[:2]
            factor = np.exp(smooth_field(rng, h, w, self.depth_noise)
                            + self.pixel_noise * rng.standard_normal((h, w)).astype(np.float32))
            pts = kf.points_cam * (s * factor)[..., None]
            out.append(replace(kf, T_world_cam=T_rigid, points_cam=pts.astype(np.float32)))
        return out


def camera_centres(poses) -> np.ndarray:
    return np.stack([np.asarray(T)[:3, 3] for T in poses])


def ate_rmse(est_poses, true_poses) -> float:
    """ATE RMSE of camera centres after a Sim(3) Umeyama alignment of the estimate onto the truth."""
    from recon_ros.geometry.transforms import umeyama

    est = camera_centres(est_poses)
    gt = camera_centres(true_poses)
    S = umeyama(est, gt, with_scale=True)
    return float(np.sqrt(np.mean(np.sum((transform_points(S, est) - gt) ** 2, axis=1))))


def world_points(kf: Keyframe, T: Optional[np.ndarray] = None) -> np.ndarray:
    return transform_points(kf.T_world_cam if T is None else T, kf.points_cam)


__all__ = ["BoxRoom", "render", "make_keyframes", "circle_poses", "strafe_poses", "look_at", "DriftingFrontendDouble",
           "ate_rmse", "crop_resize_map", "smooth_field", "world_points"]
