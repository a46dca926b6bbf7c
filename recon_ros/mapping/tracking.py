"""RGB-D camera tracking: image pyramids and projective point-to-plane ICP with a photometric term.

The model a frame is aligned to is a small set of recent *tracking keyframes* (their vertex,
normal and intensity pyramids with their poses). Every current point is transformed by the
pose estimate into each model keyframe, projected into its image (projective association),
matched to the vertex found there, gated by distance and normal angle, and contributes

* a point-to-plane residual ``n . (q - v)`` (metres), and optionally
* an intensity residual ``I_ref(pi(q)) - I_cur(u)`` (intensity in [0, 1]),

both with Huber weights; with ``noise_power`` p > 0 (depth noise growing as depth^p) each
point-to-plane residual is also weighted by the inverse of its variance, ``1 / (z_cur^2p +
z_ref^2p)``, normalised to a mean of 1 so that the photometric balance stays. Gauss-Newton on SE(3) (right perturbation of ``T_world_cam``,
twist ``(v, w)`` in the current camera frame) runs coarse to fine. Everything is vectorised
numpy over the points; per iteration the cost is O(points x model keyframes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np

from recon_ros.geometry.camera import backproject_depth, scale_K
from recon_ros.geometry.transforms import invert_T, rotation_angle_deg, rotvec_to_matrix
from recon_ros.mapping.schema import TrackingConfig


@dataclass
class PyramidLevel:
    """One resolution of a frame: intrinsics, vertex and normal maps, intensity."""

    K: np.ndarray  # 3x3 at this level
    vertices: np.ndarray  # h x w x 3 float32, camera frame, NaN where invalid
    normals: np.ndarray  # h x w x 3 float32, unit, facing the camera, NaN where invalid
    intensity: np.ndarray  # h x w float32 in [0, 1]
    _grad: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def grad(self) -> np.ndarray:
        """h x w x 2 float32 intensity gradient (d/du, d/dv), computed on first use."""
        if self._grad is None:
            gu = cv2.Sobel(self.intensity, cv2.CV_32F, 1, 0, ksize=3) / 8.0
            gv = cv2.Sobel(self.intensity, cv2.CV_32F, 0, 1, ksize=3) / 8.0
            self._grad = np.stack([gu, gv], axis=-1)
        return self._grad


@dataclass
class TrackResult:
    """Outcome of one alignment."""

    T_world_cam: np.ndarray
    inlier_fraction: float  # matched points / valid points at the finest level
    rms_m: float  # RMS point-to-plane residual of the matches (metres)
    n_points: int
    n_inliers: int
    iterations: int
    # RMS intensity residual of the matches at the finest level after the best gain and
    # offset (gain within 0.5..2: auto-exposure changes are not a misalignment)
    photometric_rms: float = float("nan")


def downsample_depth(depth: np.ndarray, factor: int, max_rel_diff: float = 0.05) -> np.ndarray:
    """Block-average depth by an integer ``factor``, never mixing across depth edges.

    In each block only the readings within ``max_rel_diff`` of the nearest one are averaged
    (the foreground wins at an edge); blocks without valid readings are NaN. The image is
    cropped to a multiple of ``factor`` (right and bottom), which keeps K's principal point.
    """
    d = np.asarray(depth, dtype=np.float32)
    if factor <= 1:
        return d.copy()
    h, w = d.shape
    H, W = h // factor, w // factor
    b = d[:H * factor, :W * factor].reshape(H, factor, W, factor).transpose(0, 2, 1, 3)
    b = b.reshape(H, W, factor * factor)
    valid = np.isfinite(b) & (b > 0)
    bb = np.where(valid, b, np.inf)
    near = bb.min(axis=-1, keepdims=True)
    use = valid & (bb <= near * (1.0 + max_rel_diff))
    n = use.sum(axis=-1)
    s = np.where(use, b, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (s / n).astype(np.float32)
    out[n == 0] = np.nan
    return out


def downsample_image(img: np.ndarray, factor: int) -> np.ndarray:
    """Block mean of an image by an integer factor (same cropping as downsample_depth)."""
    if factor <= 1:
        return img.copy()
    h, w = img.shape[:2]
    H, W = h // factor, w // factor
    return cv2.resize(img[:H * factor, :W * factor], (W, H), interpolation=cv2.INTER_AREA)


def vertex_normals(vertices: np.ndarray, max_rel_step: float = 0.1) -> np.ndarray:
    """Unit normals (h x w x 3, facing the camera) from a vertex map by central differences.

    Normals are NaN at the border, next to invalid vertices and across depth discontinuities
    (a neighbour step longer than ``max_rel_step`` times the depth).
    """
    V = vertices
    h, w = V.shape[:2]
    n = np.full_like(V, np.nan)
    if h < 3 or w < 3:
        return n
    dx = V[1:-1, 2:] - V[1:-1, :-2]
    dy = V[2:, 1:-1] - V[:-2, 1:-1]
    c = np.cross(dx, dy)
    z = V[1:-1, 1:-1, 2]
    lim = (2.0 * max_rel_step * z) ** 2
    ok = (np.sum(dx * dx, axis=-1) < lim) & (np.sum(dy * dy, axis=-1) < lim)
    norm = np.linalg.norm(c, axis=-1)
    ok &= norm > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        c = c / norm[..., None]
    flip = np.sum(c * V[1:-1, 1:-1], axis=-1) > 0
    c[flip] *= -1.0
    c[~ok] = np.nan
    n[1:-1, 1:-1] = c
    return n


def smooth_depth(depth: np.ndarray, max_rel_diff: float = 0.05) -> np.ndarray:
    """3x3 valid-normalised box filter of depth that leaves depth edges alone and fills holes.

    A valid pixel takes the mean of its valid neighbours unless that differs from it by more
    than ``max_rel_diff`` (an edge). An invalid pixel with at least 3 valid neighbours whose
    spread is below ``max_rel_diff`` of their mean is filled with that mean (isolated holes
    would otherwise remove the normals of all their neighbours).
    """
    valid = np.isfinite(depth) & (depth > 0)
    d0 = np.where(valid, depth, 0.0).astype(np.float32)
    box = dict(ddepth=-1, ksize=(3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    num = cv2.boxFilter(d0, **box)
    sq = cv2.boxFilter(d0 * d0, **box)
    den = cv2.boxFilter(valid.astype(np.float32), **box)
    with np.errstate(invalid="ignore", divide="ignore"):
        sm = num / den
        var = np.maximum(sq / den - sm * sm, 0.0)
    keep = valid & (np.abs(sm - d0) <= max_rel_diff * d0)
    fill = ~valid & (den >= 3) & (np.sqrt(var) <= max_rel_diff * sm)
    out = np.where(keep | fill, sm, d0).astype(np.float32)
    out[~(valid | fill)] = np.nan
    return out


def build_pyramid(depth: np.ndarray, gray: np.ndarray, K: np.ndarray, factor: int,
                  levels: int) -> list[PyramidLevel]:
    """Pyramid of a frame: level 0 is the input reduced by ``factor``, each next level halves it.

    ``depth`` is metres (NaN invalid), ``gray`` float32 in [0, 1] at the same resolution.
    """
    out: list[PyramidLevel] = []
    d = downsample_depth(depth, factor)
    g = downsample_image(gray, factor)
    Kl = scale_K(K, 1.0 / factor, 1.0 / factor)
    for lvl in range(levels):
        if lvl > 0:
            if min(d.shape) < 8:
                break
            d = downsample_depth(d, 2)
            g = downsample_image(g, 2)
            Kl = scale_K(Kl, 0.5, 0.5)
        V = backproject_depth(d, Kl)
        N = vertex_normals(backproject_depth(smooth_depth(d), Kl))
        out.append(PyramidLevel(K=Kl, vertices=V, normals=N, intensity=np.ascontiguousarray(g)))
    return out


def _bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img`` (h x w [x C]) at in-range points (0 <= u < w-1, 0 <= v < h-1)."""
    u0 = np.floor(u).astype(np.intp)
    v0 = np.floor(v).astype(np.intp)
    a = (u - u0).astype(np.float32)
    b = (v - v0).astype(np.float32)
    if img.ndim == 3:
        a = a[:, None]
        b = b[:, None]
    return ((1 - a) * (1 - b) * img[v0, u0] + a * (1 - b) * img[v0, u0 + 1]
            + (1 - a) * b * img[v0 + 1, u0] + a * b * img[v0 + 1, u0 + 1])


def _rows_times(P: np.ndarray, A: np.ndarray) -> np.ndarray:
    """``P @ A`` for (N, 3) rows and a 3x3 matrix, element-wise (no BLAS thread pool)."""
    return (P[:, 0:1] * A[0] + P[:, 1:2] * A[1] + P[:, 2:3] * A[2])


def _gram(J: np.ndarray, w: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(J^T diag(w) J, J^T diag(w) r) for (N, 6) J without a BLAS call."""
    Jw = J * w[:, None]
    return np.einsum("ni,nj->ij", Jw, J), np.einsum("ni,n->i", Jw, r)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 1.0, delta / np.maximum(a, 1e-12))


def se3_exp_right(T: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """``T @ exp(xi)`` for a twist ``xi = (v, w)`` (first-order translation, exact rotation)."""
    D = np.eye(4)
    D[:3, :3] = rotvec_to_matrix(xi[3:])
    D[:3, 3] = xi[:3]
    return T @ D


def _select_points(level: PyramidLevel, max_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid current points (with normals) on a regular subsample: (P, N, I)."""
    V = level.vertices.reshape(-1, 3)
    N = level.normals.reshape(-1, 3)
    ok = np.isfinite(V[:, 2]) & np.isfinite(N[:, 0])
    idx = np.flatnonzero(ok)
    if len(idx) > max_points > 0:
        idx = idx[np.linspace(0, len(idx) - 1, max_points).astype(np.intp)]
    return V[idx].astype(np.float64), N[idx].astype(np.float64), \
        level.intensity.reshape(-1)[idx].astype(np.float64)


@dataclass
class _Accum:
    H: np.ndarray = field(default_factory=lambda: np.zeros((6, 6)))
    g: np.ndarray = field(default_factory=lambda: np.zeros(6))
    n_in: int = 0
    sq: float = 0.0
    photo: np.ndarray = field(default_factory=lambda: np.zeros(6))  # n, sums r, c, rr, cc, rc

    def photometric_rms(self) -> float:
        """RMS of ``I_ref - (a I_cur + b)`` with the least-squares gain ``a`` (clipped to
        0.5..2) and offset ``b``."""
        n, sr, sc, srr, scc, src = self.photo
        if n < 6:
            return float("nan")
        mr, mc = sr / n, sc / n
        var_r, var_c, cov = srr / n - mr * mr, scc / n - mc * mc, src / n - mr * mc
        a = float(np.clip(cov / var_c, 0.5, 2.0)) if var_c > 1e-12 else 1.0
        return float(np.sqrt(max(var_r - 2.0 * a * cov + a * a * var_c, 0.0)))


def _linearise(P: np.ndarray, Nc: np.ndarray, Ic: np.ndarray, ref: PyramidLevel, T_ref_cur: np.ndarray,
               cfg: TrackingConfig, max_dist: float, cos_thr: float, acc: _Accum,
               inlier: np.ndarray, noise_power: float = 0.0) -> None:
    """Add one model keyframe's residuals to the normal equations."""
    A = T_ref_cur[:3, :3]
    q = _rows_times(P, A.T) + T_ref_cur[:3, 3]
    K = ref.K
    h, w = ref.vertices.shape[:2]
    z = q[:, 2]
    zs = np.where(z > 1e-6, z, 1.0)
    u = K[0, 0] * q[:, 0] / zs + K[0, 2]
    v = K[1, 1] * q[:, 1] / zs + K[1, 2]
    ui = np.rint(u).astype(np.intp)
    vi = np.rint(v).astype(np.intp)
    inside = (z > 1e-6) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    sel = np.flatnonzero(inside)
    if len(sel) == 0:
        return
    Vr = ref.vertices[vi[sel], ui[sel]].astype(np.float64)
    Nr = ref.normals[vi[sel], ui[sel]].astype(np.float64)
    d = q[sel] - Vr
    r = np.sum(Nr * d, axis=1)
    ncur = _rows_times(Nc[sel], A.T)
    ok = np.isfinite(r) & (np.sum(d * d, axis=1) < max_dist ** 2) & (np.sum(ncur * Nr, axis=1) > cos_thr)
    sel, r, Nr = sel[ok], r[ok], Nr[ok]
    if len(sel) < 6:
        return
    inlier[sel] = True
    Ps = P[sel]
    m = _rows_times(Nr, A)  # rows: A^T n, the model normal in current-camera coordinates
    J = np.concatenate([m, np.cross(Ps, m)], axis=1)
    w = _huber(r, cfg.huber_m) / cfg.huber_m ** 2
    if noise_power > 0:
        e = 2.0 * noise_power
        inv_var = 1.0 / (np.maximum(P[sel, 2], 1e-3) ** e + np.maximum(Vr[ok, 2], 1e-3) ** e)
        w = w * (inv_var / inv_var.mean())
    H, g = _gram(J, w, r)
    acc.H += H
    acc.g += g
    acc.n_in += len(sel)
    acc.sq += float(np.sum(r * r))
    lam = cfg.photometric_weight
    if lam <= 0:
        return
    us, vs, qs = u[sel], v[sel], q[sel]
    inb = (us >= 0) & (us < w - 1) & (vs >= 0) & (vs < h - 1)
    if np.count_nonzero(inb) < 6:
        return
    us, vs, qs, Ps = us[inb], vs[inb], qs[inb], Ps[inb]
    Ir = _bilinear(ref.intensity, us, vs).astype(np.float64)
    G = _bilinear(ref.grad, us, vs).astype(np.float64)
    Icur = Ic[sel][inb]
    rp = Ir - Icur
    acc.photo += (len(rp), Ir.sum(), Icur.sum(), Ir @ Ir, Icur @ Icur, Ir @ Icur)
    zq = qs[:, 2]
    gx = G[:, 0] * K[0, 0] / zq
    gy = G[:, 1] * K[1, 1] / zq
    gz = -(gx * qs[:, 0] + gy * qs[:, 1]) / zq
    mp = _rows_times(np.stack([gx, gy, gz], axis=1), A)
    Jp = np.concatenate([mp, np.cross(Ps, mp)], axis=1)
    H, g = _gram(Jp, lam * _huber(rp, cfg.huber_intensity) / cfg.huber_intensity ** 2, rp)
    acc.H += H
    acc.g += g


def track(current: Sequence[PyramidLevel], model: Sequence[tuple[np.ndarray, Sequence[PyramidLevel]]],
          T_init: np.ndarray, cfg: TrackingConfig, noise_power: float = 0.0) -> TrackResult:
    """Align a frame pyramid to model keyframes ``[(T_world_ref, pyramid), ...]``; depth noise
    grows as depth^``noise_power`` (0: residuals weighted alike).

    Returns the refined ``T_world_cam`` and quality figures measured at the finest level.
    """
    T = np.array(T_init, dtype=np.float64)
    cos_thr = float(np.cos(np.radians(cfg.max_normal_angle_deg)))
    T_ref_world = [invert_T(Tw) for Tw, _ in model]
    levels = min(len(current), *(len(p) for _, p in model))
    total_iters = 0
    stats = (0.0, float("inf"), 0, 0, float("nan"))
    for lvl in range(levels - 1, -1, -1):
        iters = cfg.iterations_finest if lvl == 0 else cfg.iterations_coarse
        if iters == 0:
            continue
        max_pts = cfg.max_points if lvl == 0 else cfg.max_points * 4
        P, Nc, Ic = _select_points(current[lvl], max_pts)
        if len(P) < 6:
            continue
        max_dist = cfg.max_correspondence_m * (2 ** lvl)
        if lvl == levels - 1 and levels > 1:
            max_dist *= 2.0  # the coarsest level must also capture large unpredicted motion
        for it in range(iters + (1 if lvl == 0 else 0)):
            acc = _Accum()
            inlier = np.zeros(len(P), dtype=bool)
            for (Tr_w, (_, pyr)) in zip(T_ref_world, model):
                _linearise(P, Nc, Ic, pyr[lvl], Tr_w @ T, cfg, max_dist, cos_thr, acc, inlier, noise_power)
            if lvl == 0:
                n_in = int(np.count_nonzero(inlier))
                rms = float(np.sqrt(acc.sq / acc.n_in)) if acc.n_in else float("inf")
                stats = (n_in / len(P), rms, len(P), n_in, acc.photometric_rms())
            if lvl == 0 and it == iters:
                break  # the extra pass only measures the final pose
            if acc.n_in < 12:
                break
            H = acc.H + np.eye(6) * (1e-6 * np.trace(acc.H) / 6.0 + 1e-12)
            try:
                xi = -np.linalg.solve(H, acc.g)
            except np.linalg.LinAlgError:
                break
            if not np.all(np.isfinite(xi)):
                break
            T = se3_exp_right(T, xi)
            total_iters += 1
            if np.linalg.norm(xi[:3]) < 1e-5 and np.linalg.norm(xi[3:]) < 1e-5:
                break  # converged (at the finest level the stats above are of this pose)
    frac, rms, n, n_in, photo = stats
    return TrackResult(T_world_cam=T, inlier_fraction=float(frac), rms_m=float(rms), n_points=int(n),
                       n_inliers=int(n_in), iterations=total_iters, photometric_rms=photo)


def pose_delta(T_a: np.ndarray, T_b: np.ndarray) -> tuple[float, float]:
    """(translation, rotation in degrees) between two rigid poses."""
    D = invert_T(T_a) @ T_b
    return float(np.linalg.norm(D[:3, 3])), float(rotation_angle_deg(D[:3, :3]))
