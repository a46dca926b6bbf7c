"""Rigid (SE(3)) and similarity (Sim(3)) transforms as 4x4 float64 matrices.

Naming: ``T_a_b`` maps coordinates of frame ``b`` into frame ``a``. Quaternions are
(x, y, z, w), as in ROS messages. A Sim(3) is stored as a 4x4 matrix ``[[s R, t], [0, 1]]``.
All functions are vectorised over leading dimensions where that is natural.
"""
from __future__ import annotations

import numpy as np

# Rotation taking REP-103 optical camera axes (x right, y down, z forward) into body axes
# (x forward, y left, z up): p_body = R_BODY_OPTICAL @ p_optical.
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0],
                           [-1.0, 0.0, 0.0],
                           [0.0, -1.0, 0.0]])


def make_T(R: np.ndarray, t: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """4x4 transform from a rotation, a translation and an optional scale (Sim(3))."""
    T = np.eye(4)
    T[:3, :3] = scale * np.asarray(R, dtype=np.float64)
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def invert_T(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid or similarity 4x4 transform (batched over leading dims)."""
    T = np.asarray(T, dtype=np.float64)
    A = T[..., :3, :3]
    t = T[..., :3, 3]
    s2 = np.sum(A[..., :, 0] ** 2, axis=-1)  # squared scale (1 for SE(3))
    A_inv = np.swapaxes(A, -1, -2) / s2[..., None, None]
    out = np.zeros_like(T)
    out[..., :3, :3] = A_inv
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", A_inv, t)
    out[..., 3, 3] = 1.0
    return out


def transform_points(T: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points of shape (..., 3); keeps the points' float dtype."""
    pts = np.asarray(pts)
    dtype = pts.dtype if np.issubdtype(pts.dtype, np.floating) else np.float64
    A = np.asarray(T[:3, :3], dtype=np.float64)
    t = np.asarray(T[:3, 3], dtype=np.float64)
    P = pts.reshape(-1, 3).astype(np.float64)
    # Element-wise rather than P @ A.T: a BLAS call on (N, 3) gains nothing and its thread
    # pool is many times slower on a loaded machine.
    out = np.empty_like(P)
    for i in range(3):
        out[:, i] = P[:, 0] * A[i, 0] + P[:, 1] * A[i, 1] + P[:, 2] * A[i, 2] + t[i]
    return out.reshape(pts.shape).astype(dtype, copy=False)


def sim3_scale(T: np.ndarray) -> float:
    """The scale factor of a Sim(3) matrix (1 for a rigid transform)."""
    return float(np.cbrt(np.linalg.det(np.asarray(T)[:3, :3])))


def sim3_decompose(T: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(scale, R, t) of a Sim(3) matrix."""
    s = sim3_scale(T)
    return s, np.asarray(T)[:3, :3] / s, np.asarray(T)[:3, 3].copy()


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix (..., 3, 3) of unit quaternion(s) (..., 4) in (x, y, z, w) order."""
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(n == 0) or not np.all(np.isfinite(n)):
        raise ValueError("quaternion must be finite and non-zero")
    x, y, z, w = np.moveaxis(q / n, -1, 0)
    R = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return R.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Unit quaternion(s) (x, y, z, w) with w >= 0 of rotation matrix (matrices) (..., 3, 3)."""
    R = np.asarray(R, dtype=np.float64)
    m = R.reshape(-1, 3, 3)
    out = np.empty((m.shape[0], 4))
    tr = np.trace(m, axis1=1, axis2=2)
    # Shepperd's method: pick the numerically largest of w, x, y, z per matrix.
    cand = np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    k = np.argmax(cand, axis=1)
    for idx in range(4):
        sel = k == idx
        if not np.any(sel):
            continue
        a = m[sel]
        if idx == 0:
            s = np.sqrt(1.0 + tr[sel]) * 2
            q = np.stack([(a[:, 2, 1] - a[:, 1, 2]) / s, (a[:, 0, 2] - a[:, 2, 0]) / s,
                          (a[:, 1, 0] - a[:, 0, 1]) / s, 0.25 * s], axis=1)
        elif idx == 1:
            s = np.sqrt(1.0 + a[:, 0, 0] - a[:, 1, 1] - a[:, 2, 2]) * 2
            q = np.stack([0.25 * s, (a[:, 0, 1] + a[:, 1, 0]) / s,
                          (a[:, 0, 2] + a[:, 2, 0]) / s, (a[:, 2, 1] - a[:, 1, 2]) / s], axis=1)
        elif idx == 2:
            s = np.sqrt(1.0 + a[:, 1, 1] - a[:, 0, 0] - a[:, 2, 2]) * 2
            q = np.stack([(a[:, 0, 1] + a[:, 1, 0]) / s, 0.25 * s,
                          (a[:, 1, 2] + a[:, 2, 1]) / s, (a[:, 0, 2] - a[:, 2, 0]) / s], axis=1)
        else:
            s = np.sqrt(1.0 + a[:, 2, 2] - a[:, 0, 0] - a[:, 1, 1]) * 2
            q = np.stack([(a[:, 0, 2] + a[:, 2, 0]) / s, (a[:, 1, 2] + a[:, 2, 1]) / s,
                          0.25 * s, (a[:, 1, 0] - a[:, 0, 1]) / s], axis=1)
        out[sel] = q
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    out[out[:, 3] < 0] *= -1
    return out.reshape(R.shape[:-2] + (4,))


def rotvec_to_matrix(v: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vector(s) (..., 3) to matrices (..., 3, 3)."""
    v = np.asarray(v, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1)[..., None, None]
    K = skew(v)
    small = theta < 1e-8
    th = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta ** 2 / 6.0, np.sin(th) / th)
    b = np.where(small, 0.5 - theta ** 2 / 24.0, (1.0 - np.cos(th)) / th ** 2)
    return np.eye(3) + a * K + b * (K @ K)


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Rotation vector(s) of rotation matrices, via the quaternion (stable near pi)."""
    q = matrix_to_quat(R)
    xyz, w = q[..., :3], q[..., 3]
    n = np.linalg.norm(xyz, axis=-1)
    angle = 2.0 * np.arctan2(n, w)
    scale = np.where(n < 1e-12, 2.0, angle / np.where(n < 1e-12, 1.0, n))
    return xyz * scale[..., None]


def skew(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    z = np.zeros(v.shape[:-1])
    x, y, w = v[..., 0], v[..., 1], v[..., 2]
    return np.stack([z, -w, y, w, z, -x, -y, x, z], axis=-1).reshape(v.shape[:-1] + (3, 3))


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angle in degrees of rotation matrices (..., 3, 3)."""
    R = np.asarray(R, dtype=np.float64)
    c = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True,
            weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares similarity (or rigid) transform T with dst ~ T(src) (Umeyama 1991).

    ``src`` and ``dst`` are (N, 3) corresponding points; returns a 4x4 matrix.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if src.shape != dst.shape or src.shape[0] < 3:
        raise ValueError(f"umeyama needs two (N>=3, 3) arrays of equal shape, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    w = w / w.sum()
    mu_s = w @ src
    mu_d = w @ dst
    xs = src - mu_s
    xd = dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    if with_scale:
        var_s = np.sum(w * np.sum(xs ** 2, axis=1))
        s = float(np.trace(np.diag(D) @ S) / var_s) if var_s > 0 else 1.0
    else:
        s = 1.0
    t = mu_d - s * R @ mu_s
    return make_T(R, t, s)


def rigid_part(T: np.ndarray) -> np.ndarray:
    """The rigid part of a rigid or Sim(3) 4x4 transform: scale removed, rotation
    re-orthonormalised (corrected poses may carry numerical drift)."""
    _, R, t = sim3_decompose(np.asarray(T, dtype=np.float64))
    U, _, Vt = np.linalg.svd(R)
    R = U @ Vt
    if np.linalg.det(R) < 0:
        U[:, -1] *= -1
        R = U @ Vt
    return make_T(R, t)


def map_from_optical() -> np.ndarray:
    """``T_map_recon`` without a known camera mounting: the first camera's optical frame
    placed in a z-up ``map`` at the same origin (optical -> body axes)."""
    return make_T(R_BODY_OPTICAL, np.zeros(3))
