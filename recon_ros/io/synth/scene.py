"""A procedural textured room with objects, rendered by vectorised ray casting.

World frame: z up, floor at z = 0, room centred on the origin in x and y. Cameras follow
REP-103 optical axes (x right, y down, z forward). Depth is z-depth in metres.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from recon_ros.errors import UserInputError
from recon_ros.io.synth.config import SynthConfig
from recon_ros.io.synth.shapes import Box, Cylinder, Room, Sphere, dot3
from recon_ros.io.synth.texture import make_palettes, shade_texture

Solid = Union[Room, Box, Sphere, Cylinder]

CONTACT_EPS = 1e-5  # surface samples this close inside another solid are hidden by contact
AMBIENT = 0.4
MAX_SOLIDS = 16


class RayHits(NamedTuple):
    """Nearest hit per ray: parameter ``t`` (inf = none), world point, normal facing the ray
    origin, and the index of the solid in ``Scene.solids`` (-1 = none)."""

    t: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    solid: np.ndarray


class SurfaceSamples(NamedTuple):
    """Points on the static surface with their outward (visible-side) normals and colours."""

    points: np.ndarray  # (N, 3) float64
    normals: np.ndarray  # (N, 3) float64, unit
    colors: np.ndarray  # (N, 3) uint8


@dataclass(frozen=True, eq=False)
class Motion:
    """Back-and-forth translation of a solid from ``start`` to ``end`` and back over ``period_s``."""

    start: np.ndarray
    end: np.ndarray
    period_s: float

    def offset(self, t: float) -> np.ndarray:
        s = 0.5 - 0.5 * np.cos(2.0 * np.pi * t / self.period_s)
        return self.start + s * (self.end - self.start)


@dataclass(frozen=True, eq=False)
class Scene:
    """Solids (index 0 is the room), their texture palettes and the optional moving solid."""

    solids: Tuple[Solid, ...]
    palettes: np.ndarray  # (MAX_SOLIDS + 6, 3, 3): one per solid, then one per room face
    texture_seed: int
    texture_scale: float = 1.0
    shading: bool = True
    light: np.ndarray = field(default_factory=lambda: np.zeros(3))
    dynamic_index: int = -1  # index in ``solids`` of the moving solid, -1 when none
    motion: Optional[Motion] = None

    @property
    def room(self) -> Room:
        return self.solids[0]  # type: ignore[return-value]

    def offsets(self, t: float) -> List[np.ndarray]:
        offs = [np.zeros(3) for _ in self.solids]
        if self.dynamic_index >= 0 and self.motion is not None:
            offs[self.dynamic_index] = self.motion.offset(t)
        return offs

    # ---------------------------------------------------------------- rays
    def cast(self, origins: np.ndarray, dirs: np.ndarray, t: float = 0.0) -> RayHits:
        """Nearest intersection of rays ``origins + s * dirs`` with the scene at time ``t``.

        ``origins`` is (3,) or (N, 3), ``dirs`` (N, 3); the results are per ray.
        """
        return cast_rays(self.solids, origins, dirs, self.offsets(t))

    def _cast3(self, o: np.ndarray, d: np.ndarray, t: float
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        return cast3(self.solids, o, d, self.offsets(t))

    def camera_rays(self, T_world_cam: np.ndarray, K: np.ndarray, width: int, height: int
                    ) -> Tuple[np.ndarray, np.ndarray]:
        """Origin (3, 1) and world directions (3, H*W) whose parameter along a ray is z-depth."""
        K = np.asarray(K, dtype=np.float64)
        T = np.asarray(T_world_cam, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise UserInputError("camera pose must be a finite 4x4 matrix")
        u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
        y = (v - K[1, 2]) / K[1, 1]
        x = (u - K[0, 2] - K[0, 1] * y) / K[0, 0]
        d_cam = np.stack([x.ravel(), y.ravel(), np.ones(width * height)])
        origin = T[:3, 3:4].copy()
        if not self.room.contains_interior(origin.T, 0.0)[0]:
            raise UserInputError(f"camera position {origin.ravel().round(3).tolist()} is outside "
                                 "the synthetic room; choose a pose inside it")
        return origin, T[:3, :3] @ d_cam

    def render_depth(self, T_world_cam: np.ndarray, K: np.ndarray, width: int, height: int,
                     t: float = 0.0) -> np.ndarray:
        """Noise-free z-depth (H, W) float32; 0 where a ray hits nothing."""
        o, d = self.camera_rays(T_world_cam, K, width, height)
        t_hit, _, solid = self._cast3(o, d, t)
        return np.where(solid >= 0, t_hit, 0.0).reshape(height, width).astype(np.float32)

    def render(self, T_world_cam: np.ndarray, K: np.ndarray, width: int, height: int,
               t: float = 0.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb uint8 (H, W, 3), noise-free z-depth float32 (H, W), dynamic mask bool (H, W))."""
        o, d = self.camera_rays(T_world_cam, K, width, height)
        t_hit, n3, solid = self._cast3(o, d, t)
        ok = solid >= 0
        rgb = np.zeros((width * height, 3))
        if np.any(ok):
            sel = np.flatnonzero(ok)
            ds = d[:, sel]
            ts = t_hit[sel]
            ns = n3[:, sel]
            pts = (o + ts * ds).T
            ray_len = np.sqrt(dot3(ds, ds))
            cos_inc = np.abs(dot3(ns, ds)) / ray_len
            # metres per pixel on the surface: z / f, stretched at grazing incidence
            footprint = ts / float(K[0, 0]) * ray_len / np.maximum(cos_inc, 0.2)
            rgb[sel] = self._colour(pts, np.ascontiguousarray(ns.T), solid[sel], t, footprint)
        depth = np.where(ok, t_hit, 0.0).reshape(height, width).astype(np.float32)
        dyn = (solid == self.dynamic_index).reshape(height, width) if self.dynamic_index >= 0 \
            else np.zeros((height, width), dtype=bool)
        img = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8).reshape(height, width, 3)
        return img, depth, dyn

    def _texture_ids(self, sid: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """Palette index per point: one per solid, and one per face of the room."""
        tid = sid.copy()
        room = sid == 0
        if np.any(room):
            n = normals[room]
            axis = np.argmax(np.abs(n), axis=1)
            positive = n[np.arange(len(n)), axis] > 0
            tid[room] = MAX_SOLIDS + 2 * axis + positive
        return tid

    def _colour(self, pts: np.ndarray, normals: np.ndarray, sid: np.ndarray, t: float,
                footprint: Optional[np.ndarray]) -> np.ndarray:
        tex_pts = pts.copy()
        if self.dynamic_index >= 0 and self.motion is not None:
            moving = sid == self.dynamic_index
            tex_pts[moving] -= self.motion.offset(t)  # the texture travels with the object
        col = shade_texture(tex_pts, self._texture_ids(sid, normals), self.palettes,
                            self.texture_seed, self.texture_scale, footprint)
        if self.shading:
            to_light = self.light - pts
            to_light /= np.linalg.norm(to_light, axis=1, keepdims=True)
            lam = np.clip(np.einsum("ij,ij->i", normals, to_light), 0.0, 1.0)
            col = col * (AMBIENT + (1.0 - AMBIENT) * lam)[:, None]
        return col

    # ---------------------------------------------------------------- surface
    def sample_surface(self, spacing: float = 0.02) -> SurfaceSamples:
        """Points every ~``spacing`` metres on the static surface, minus those hidden by contact
        (box bottoms on the floor, the floor under them, the crevice where a sphere touches the
        floor): a point is dropped when it, or a step of spacing / 4 along its normal, lies in
        another solid. The moving solid is excluded."""
        if not spacing > 0:
            raise UserInputError(f"surface sample spacing must be > 0, got {spacing}")
        static = [i for i in range(len(self.solids)) if i != self.dynamic_index]
        pts_all, nrm_all, sid_all = [], [], []
        for i in static:
            p, n = self.solids[i].sample(spacing)
            ahead = p + (0.25 * spacing) * n  # a step into the free space the surface faces
            keep = np.ones(len(p), dtype=bool)
            for j in static:
                if j != i:
                    keep &= ~self.solids[j].blocks(p, CONTACT_EPS) & ~self.solids[j].blocks(ahead, 0.0)
            pts_all.append(p[keep])
            nrm_all.append(n[keep])
            sid_all.append(np.full(int(keep.sum()), i, dtype=np.int64))
        pts = np.concatenate(pts_all)
        nrm = np.concatenate(nrm_all)
        sid = np.concatenate(sid_all)
        col = self._colour(pts, nrm, sid, 0.0, None)
        rgb = np.clip(np.round(col * 255.0), 0, 255).astype(np.uint8)
        return SurfaceSamples(pts, nrm, rgb)

    def visible_mask(self, points: np.ndarray, normals: np.ndarray, poses: np.ndarray,
                     K: np.ndarray, width: int, height: int, times: Optional[np.ndarray] = None,
                     rel_tol: float = 0.02, abs_tol: float = 0.01) -> np.ndarray:
        """True for points seen (front-facing, unoccluded, in the image) by at least one camera."""
        points = np.asarray(points, dtype=np.float64)
        seen = np.zeros(len(points), dtype=bool)
        K = np.asarray(K, dtype=np.float64)
        times = np.zeros(len(poses)) if times is None else np.asarray(times, dtype=np.float64)
        p3 = np.ascontiguousarray(points.T)  # component-first: (3, 3) @ (3, N) products are fast
        n3 = np.ascontiguousarray(np.asarray(normals, dtype=np.float64).T)
        for T, t in zip(poses, times):
            todo = np.flatnonzero(~seen)  # points already seen need no more tests
            if len(todo) == 0:
                break
            depth = self.render_depth(T, K, width, height, float(t))
            R, c = T[:3, :3], T[:3, 3:4]
            rel = p3[:, todo] - c
            facing = dot3(n3[:, todo], rel) < 0
            x, y, z = R.T @ rel
            zs = np.where(z > 1e-6, z, 1.0)
            u = np.round(K[0, 0] * x / zs + K[0, 1] * y / zs + K[0, 2]).astype(np.int64)
            v = np.round(K[1, 1] * y / zs + K[1, 2]).astype(np.int64)
            inside = (z > 1e-6) & facing & (u >= 0) & (u < width) & (v >= 0) & (v < height)
            idx = np.flatnonzero(inside)
            d = depth[v[idx], u[idx]]
            ok = np.abs(d - z[idx]) <= abs_tol + rel_tol * z[idx]
            seen[todo[idx[ok]]] = True
        return seen

    def describe(self) -> dict:
        return {
            "solids": [s.describe() for s in self.solids],
            "dynamic_index": self.dynamic_index,
            "motion": None if self.motion is None else {
                "start": self.motion.start.tolist(), "end": self.motion.end.tolist(),
                "period_s": self.motion.period_s},
            "light": self.light.tolist(),
            "shading": self.shading,
        }


def cast_rays(solids: Sequence[Solid], origins: np.ndarray, dirs: np.ndarray,
              offsets: Optional[Sequence[np.ndarray]] = None) -> RayHits:
    """Nearest intersection of rays ``origins + s * dirs`` with ``solids``, each displaced by its
    entry of ``offsets`` (none by default). ``origins`` is (3,) or (N, 3), ``dirs`` (N, 3)."""
    d3 = np.ascontiguousarray(np.asarray(dirs, dtype=np.float64).reshape(-1, 3).T)
    o = np.asarray(origins, dtype=np.float64)
    o3 = o.reshape(3, 1) if o.size == 3 else np.ascontiguousarray(o.reshape(-1, 3).T)
    t_hit, n3, solid = cast3(solids, o3, d3, offsets)
    pts = (o3 + np.where(solid >= 0, t_hit, 0.0) * d3).T
    return RayHits(t_hit, pts, np.ascontiguousarray(n3.T), solid)


def cast3(solids: Sequence[Solid], o: np.ndarray, d: np.ndarray,
          offsets: Optional[Sequence[np.ndarray]] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Component-first ray casting: o (3, 1|N), d (3, N) -> t (N,), normals (3, N), solid (N,).

    Solid 0 is tested against every ray; the others only against the rays that meet their
    bounding sphere."""
    n = d.shape[1]
    best_t = np.full(n, np.inf)
    best_n = np.zeros((3, n))
    best_i = np.full(n, -1, dtype=np.int64)
    dd = dot3(d, d)
    if offsets is None:
        offsets = [np.zeros(3)] * len(solids)
    for i, (solid, off) in enumerate(zip(solids, offsets)):
        off = np.asarray(off, dtype=np.float64)
        sel = None if i == 0 else _rays_near(o, d, dd, *solid.bounding_sphere(), off)
        if sel is None:
            ti, ni = solid.intersect(o, d, off)
            closer = ti < best_t
            best_t = np.where(closer, ti, best_t)
            best_n = np.where(closer, ni, best_n)
            best_i[closer] = i
        elif len(sel):
            ti, ni = solid.intersect(o if o.shape[1] == 1 else o[:, sel], d[:, sel], off)
            closer = ti < best_t[sel]
            idx = sel[closer]
            best_t[idx] = ti[closer]
            best_n[:, idx] = ni[:, closer]
            best_i[idx] = i
    return best_t, best_n, best_i


def _rays_near(o: np.ndarray, d: np.ndarray, dd: np.ndarray, center: np.ndarray, radius: float,
               offset: np.ndarray) -> Optional[np.ndarray]:
    """Indices of the rays that meet a bounding sphere ahead of their origin (None = all)."""
    oc = o - (center + offset)[:, None]
    cc = dot3(oc, oc) - radius * radius
    if o.shape[1] == 1 and cc[0] <= 0:
        return None  # the single origin is inside the sphere
    b = dot3(d, oc)
    return np.flatnonzero((b * b - dd * cc >= 0) & ((b <= 0) | (cc <= 0)))


# -------------------------------------------------------------------- layout
def room_bounds(cfg: SynthConfig) -> Tuple[np.ndarray, np.ndarray]:
    half = np.array([cfg.room_length_m, cfg.room_width_m]) / 2.0
    return (np.array([-half[0], -half[1], 0.0]), np.array([half[0], half[1], cfg.room_height_m]))


def path_radii(cfg: SynthConfig) -> np.ndarray:
    """Radii (x, y) of the camera loop."""
    return cfg.path_radius_m * np.array([1.0, cfg.room_width_m / cfg.room_length_m])


def _dynamic_lane(cfg: SynthConfig, lo: np.ndarray, hi: np.ndarray) -> Tuple[Box, Motion]:
    """A box sliding along the +y wall, in a lane kept free of static objects."""
    half = np.array([0.25, 0.2, 0.3])
    y = hi[1] - 0.35
    span = 0.35 * (hi[0] - lo[0])
    box = Box(center=np.array([0.0, y, half[2]]), half=half)
    period = cfg.n_frames / cfg.fps
    return box, Motion(start=np.array([-span, 0.0, 0.0]), end=np.array([span, 0.0, 0.0]),
                       period_s=period)


def make_scene(cfg: SynthConfig) -> Scene:
    """The deterministic scene of ``cfg`` (same seed and room give the same static scene)."""
    rng = np.random.default_rng([cfg.seed, 0])
    lo, hi = room_bounds(cfg)
    path = path_radii(cfg)
    room_half = (hi[:2] - lo[:2]) / 2.0
    if np.any(path + 0.3 >= room_half):
        raise UserInputError(
            f"camera loop radii {path.round(2).tolist()} m do not fit in the room "
            f"{(2 * room_half).round(2).tolist()} m; lower synth.path_radius_m")
    solids: List[Solid] = [Room(lo=lo, hi=hi)]
    # Objects on an ellipse between the camera loop and the walls, leaving the +y lane free.
    ring = (path + room_half) / 2.0 + np.array([0.1, 0.1])
    gap = np.minimum(room_half - ring, ring - path).min()
    max_half = float(np.clip(gap - 0.05, 0.1, 0.45))
    angles = np.deg2rad(np.linspace(140.0, 400.0, max(cfg.n_objects, 1), endpoint=True))
    angles = angles[: cfg.n_objects] + rng.uniform(-0.12, 0.12, size=cfg.n_objects)
    kinds = ["box", "cylinder", "box", "sphere", "box", "cylinder", "sphere", "box"]
    for k, ang in enumerate(angles):
        cx, cy = ring[0] * np.cos(ang), ring[1] * np.sin(ang)
        kind = kinds[(k + cfg.seed) % len(kinds)]
        if kind == "box":
            half = np.array([rng.uniform(0.6, 1.0) * max_half, rng.uniform(0.6, 1.0) * max_half,
                             rng.uniform(0.25, 0.7)])
            half[:2] /= np.sqrt(2.0)  # any yaw stays within max_half of the centre
            solids.append(Box(center=np.array([cx, cy, half[2]]), half=half,
                              yaw=float(rng.uniform(0, np.pi))))
        elif kind == "cylinder":
            r = rng.uniform(0.6, 1.0) * max_half
            solids.append(Cylinder(center=np.array([cx, cy, 0.0]), radius=float(r),
                                   z0=0.0, z1=float(rng.uniform(0.5, 1.6))))
        else:
            r = rng.uniform(0.6, 1.0) * max_half
            solids.append(Sphere(center=np.array([cx, cy, r]), radius=float(r)))
    dynamic_index, motion = -1, None
    if cfg.dynamic_object:
        box, motion = _dynamic_lane(cfg, lo, hi)
        solids.append(box)
        dynamic_index = len(solids) - 1
    # drawn for the largest possible scene so that a solid's colours do not depend on the others
    palettes = make_palettes(MAX_SOLIDS + 6, np.random.default_rng([cfg.seed, 2]))
    light = np.array([0.3 * lo[0], 0.2 * hi[1], hi[2] - 0.3])
    return Scene(solids=tuple(solids), palettes=palettes, texture_seed=int(cfg.seed) * 1000 + 7,
                 texture_scale=cfg.texture_scale, shading=cfg.shading, light=light,
                 dynamic_index=dynamic_index, motion=motion)
