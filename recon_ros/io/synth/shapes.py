"""Analytic solids of a synthetic scene: ray intersection, containment and surface sampling.

Rays are ``o + t d`` with ``d`` not necessarily unit length, so with ``d = R [x, y, 1]`` the hit
parameter ``t`` is the camera z-depth. ``intersect`` takes rays component-first: origins (3, 1)
or (3, N) and directions (3, N), so that every operation runs over contiguous rows; it returns
t (N,) (inf = no hit) and normals (3, N) facing the ray origin. Points given to ``blocks`` and
returned by ``sample`` are (N, 3). A solid may be displaced by ``offset`` (3,) (used for the
moving object).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

import numpy as np

T_MIN = 1e-6  # hits closer than this along a ray are ignored
_NO_OFFSET = np.zeros(3)

Hit = Tuple[np.ndarray, np.ndarray]  # t (N,), normal (3, N)


def dot3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of component-first arrays (3, N) (or (3, 1) broadcast)."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _grid(n_u: int, n_v: int) -> Tuple[np.ndarray, np.ndarray]:
    """Cell centres of an n_u x n_v grid on [0, 1]^2, flattened."""
    u, v = np.meshgrid((np.arange(n_u) + 0.5) / n_u, (np.arange(n_v) + 0.5) / n_v, indexing="ij")
    return u.ravel(), v.ravel()


def _count(length: float, spacing: float) -> int:
    return max(1, int(np.ceil(length / spacing)))


def _slabs(o: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Per-axis entry/exit parameters (3, N) of rays against the slabs lo <= x <= hi."""
    d_safe = np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1 = (lo[:, None] - o) / d_safe
    t2 = (hi[:, None] - o) / d_safe
    return np.minimum(t1, t2), np.maximum(t1, t2)


def _axis_normals(axis: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(3, N) unit normals along ``axis`` (N,) pointing against the ray directions d (3, N)."""
    cols = np.arange(d.shape[1])
    n = np.zeros_like(d)
    n[axis, cols] = -np.sign(d[axis, cols])
    return n


@dataclass(frozen=True, eq=False)
class Room:
    """The inside of an axis-aligned box: floor, ceiling and four walls (normals point inwards)."""

    lo: np.ndarray
    hi: np.ndarray
    kind: str = field(default="room", init=False)

    def intersect(self, o: np.ndarray, d: np.ndarray, offset: np.ndarray = _NO_OFFSET) -> Hit:
        _, t_far = _slabs(o, d, self.lo + offset, self.hi + offset)
        axis = np.argmin(t_far, axis=0)
        t = np.min(t_far, axis=0)
        inside = self.contains_interior((o - offset[:, None]).T, 0.0)  # (1,) or (N,)
        return np.where(inside & (t > T_MIN), t, np.inf), _axis_normals(axis, d)

    def contains_interior(self, p: np.ndarray, eps: float) -> np.ndarray:
        return np.all((p > self.lo + eps) & (p < self.hi - eps), axis=-1)

    def blocks(self, p: np.ndarray, eps: float, offset: np.ndarray = _NO_OFFSET) -> np.ndarray:
        """True for points inside the walls (outside the free space shrunk by ``eps``)."""
        return ~self.contains_interior(p - offset, eps)


    def sample(self, spacing: float) -> Tuple[np.ndarray, np.ndarray]:
        pts, nrm = [], []
        size = self.hi - self.lo
        for axis in range(3):
            a, b = [k for k in range(3) if k != axis]
            u, v = _grid(_count(size[a], spacing), _count(size[b], spacing))
            for side, normal_sign in ((self.lo[axis], 1.0), (self.hi[axis], -1.0)):
                p = np.empty((len(u), 3))
                p[:, axis] = side
                p[:, a] = self.lo[a] + u * size[a]
                p[:, b] = self.lo[b] + v * size[b]
                n = np.zeros_like(p)
                n[:, axis] = normal_sign
                pts.append(p)
                nrm.append(n)
        return np.concatenate(pts), np.concatenate(nrm)

    def describe(self) -> dict:
        return {"kind": self.kind, "lo": self.lo.tolist(), "hi": self.hi.tolist()}


@dataclass(frozen=True, eq=False)
class Box:
    """A solid box with half extents ``half``, rotated by ``yaw`` about the world z axis."""

    center: np.ndarray
    half: np.ndarray
    yaw: float = 0.0
    kind: str = field(default="box", init=False)

    @property
    def R(self) -> np.ndarray:
        return _rot_z(self.yaw)

    def _local(self, p: np.ndarray, offset: np.ndarray) -> np.ndarray:
        return (self.R.T @ (p - (self.center + offset)).T).T  # R^T (p - c) per row

    def intersect(self, o: np.ndarray, d: np.ndarray, offset: np.ndarray = _NO_OFFSET) -> Hit:
        R = self.R
        ol = R.T @ (o - (self.center + offset)[:, None])
        dl = R.T @ d
        t_near, t_far = _slabs(ol, dl, -self.half, self.half)
        axis = np.argmax(t_near, axis=0)
        t_in = np.max(t_near, axis=0)
        t_out = np.min(t_far, axis=0)
        hit = (t_in <= t_out) & (t_in > T_MIN)
        return np.where(hit, t_in, np.inf), R @ _axis_normals(axis, dl)

    def blocks(self, p: np.ndarray, eps: float, offset: np.ndarray = _NO_OFFSET) -> np.ndarray:
        return np.all(np.abs(self._local(p, offset)) < self.half + eps, axis=-1)


    def sample(self, spacing: float) -> Tuple[np.ndarray, np.ndarray]:
        pts, nrm = [], []
        size = 2.0 * self.half
        for axis in range(3):
            a, b = [k for k in range(3) if k != axis]
            u, v = _grid(_count(size[a], spacing), _count(size[b], spacing))
            for sign in (-1.0, 1.0):
                p = np.empty((len(u), 3))
                p[:, axis] = sign * self.half[axis]
                p[:, a] = (u - 0.5) * size[a]
                p[:, b] = (v - 0.5) * size[b]
                n = np.zeros_like(p)
                n[:, axis] = sign
                pts.append(p)
                nrm.append(n)
        p = np.concatenate(pts)
        n = np.concatenate(nrm)
        return p @ self.R.T + self.center, n @ self.R.T

    def bounding_sphere(self) -> Tuple[np.ndarray, float]:
        return self.center, float(np.linalg.norm(self.half))

    def describe(self) -> dict:
        return {"kind": self.kind, "center": self.center.tolist(), "half": self.half.tolist(),
                "yaw": float(self.yaw)}


@dataclass(frozen=True, eq=False)
class Sphere:
    center: np.ndarray
    radius: float
    kind: str = field(default="sphere", init=False)

    def intersect(self, o: np.ndarray, d: np.ndarray, offset: np.ndarray = _NO_OFFSET) -> Hit:
        oc = o - (self.center + offset)[:, None]
        a = dot3(d, d)
        b = 2.0 * dot3(d, oc)
        c = dot3(oc, oc) - self.radius ** 2
        disc = b * b - 4.0 * a * c
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
        t = np.where((disc >= 0) & (t > T_MIN), t, np.inf)
        p = oc + np.where(np.isfinite(t), t, 0.0) * d
        return t, p / self.radius

    def blocks(self, p: np.ndarray, eps: float, offset: np.ndarray = _NO_OFFSET) -> np.ndarray:
        return np.linalg.norm(p - (self.center + offset), axis=-1) < self.radius + eps


    def sample(self, spacing: float) -> Tuple[np.ndarray, np.ndarray]:
        n = max(8, int(np.ceil(4.0 * np.pi * self.radius ** 2 / spacing ** 2)))
        k = np.arange(n) + 0.5
        z = 1.0 - 2.0 * k / n
        phi = np.pi * (1.0 + np.sqrt(5.0)) * k  # Fibonacci sphere
        r = np.sqrt(1.0 - z * z)
        normals = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
        return self.center + self.radius * normals, normals

    def bounding_sphere(self) -> Tuple[np.ndarray, float]:
        return self.center, float(self.radius)

    def describe(self) -> dict:
        return {"kind": self.kind, "center": self.center.tolist(), "radius": float(self.radius)}


@dataclass(frozen=True, eq=False)
class Cylinder:
    """A vertical solid cylinder: axis through ``center`` (x, y), from z0 to z1."""

    center: np.ndarray  # (3,), only x and y are used
    radius: float
    z0: float
    z1: float
    kind: str = field(default="cylinder", init=False)

    def intersect(self, o: np.ndarray, d: np.ndarray, offset: np.ndarray = _NO_OFFSET) -> Hit:
        c = self.center + offset
        z0, z1 = self.z0 + offset[2], self.z1 + offset[2]
        ox, oy, oz = o[0] - c[0], o[1] - c[1], o[2]
        dx, dy, dz = d[0], d[1], d[2]
        a = dx * dx + dy * dy
        b = 2.0 * (dx * ox + dy * oy)
        cc = ox * ox + oy * oy - self.radius ** 2
        disc = b * b - 4.0 * a * cc
        flat = a < 1e-18  # vertical rays never meet the side
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * np.where(flat, 1.0, a))
        z_side = oz + t_side * dz
        ok_side = (disc >= 0) & ~flat & (t_side > T_MIN) & (z_side >= z0) & (z_side <= z1)
        t_side = np.where(ok_side, t_side, np.inf)
        level = np.abs(dz) < 1e-12  # horizontal rays never meet a cap
        cap_z = np.where(dz < 0, z1, z0)  # a ray from above meets the top cap first
        t_cap = (cap_z - oz) / np.where(level, 1.0, dz)
        px, py = ox + t_cap * dx, oy + t_cap * dy
        ok_cap = (t_cap > T_MIN) & (px * px + py * py <= self.radius ** 2) & ~level
        t_cap = np.where(ok_cap, t_cap, np.inf)
        use_cap = t_cap < t_side
        t = np.where(use_cap, t_cap, t_side)
        tf = np.where(np.isfinite(t), t, 0.0)
        n = np.stack([(ox + tf * dx) / self.radius, (oy + tf * dy) / self.radius,
                      np.zeros_like(tf)])
        n[:, use_cap] = 0.0
        n[2, use_cap] = np.where(dz[use_cap] < 0, 1.0, -1.0)
        return t, n

    def blocks(self, p: np.ndarray, eps: float, offset: np.ndarray = _NO_OFFSET) -> np.ndarray:
        c = self.center + offset
        r = np.hypot(p[:, 0] - c[0], p[:, 1] - c[1])
        return ((r < self.radius + eps) & (p[:, 2] > self.z0 + offset[2] - eps)
                & (p[:, 2] < self.z1 + offset[2] + eps))


    def sample(self, spacing: float) -> Tuple[np.ndarray, np.ndarray]:
        height = self.z1 - self.z0
        u, v = _grid(_count(2.0 * np.pi * self.radius, spacing), _count(height, spacing))
        ang = 2.0 * np.pi * u
        side_n = np.stack([np.cos(ang), np.sin(ang), np.zeros_like(ang)], axis=1)
        side_p = np.stack([self.center[0] + self.radius * side_n[:, 0],
                           self.center[1] + self.radius * side_n[:, 1],
                           self.z0 + v * height], axis=1)
        m = _count(2.0 * self.radius, spacing)
        gu, gv = _grid(m, m)
        gx, gy = (gu - 0.5) * 2.0 * self.radius, (gv - 0.5) * 2.0 * self.radius
        disk = gx * gx + gy * gy <= self.radius ** 2
        gx, gy = gx[disk] + self.center[0], gy[disk] + self.center[1]
        caps_p, caps_n = [], []
        for z, nz in ((self.z0, -1.0), (self.z1, 1.0)):
            caps_p.append(np.stack([gx, gy, np.full_like(gx, z)], axis=1))
            caps_n.append(np.tile([0.0, 0.0, nz], (len(gx), 1)))
        return np.concatenate([side_p] + caps_p), np.concatenate([side_n] + caps_n)

    def bounding_sphere(self) -> Tuple[np.ndarray, float]:
        half_h = 0.5 * (self.z1 - self.z0)
        c = np.array([self.center[0], self.center[1], self.z0 + half_h])
        return c, float(np.hypot(self.radius, half_h))

    def describe(self) -> dict:
        return {"kind": self.kind, "center": self.center.tolist(), "radius": float(self.radius),
                "z0": float(self.z0), "z1": float(self.z1)}
