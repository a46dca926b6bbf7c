"""Sparse global alignment: per-keyframe Sim(3) corrections from verified correspondences.

Variables (refine design, section 4.3): for every free keyframe a Sim(3) increment
(rotation vector, translation, log-scale) applied on the left of its current pose and pivoting
about the keyframe's median-depth point (so rotations turn about the scene, not the optical
centre); optionally one shared log-focal correction and per-anchor log-depth offsets.

Losses (section 4.4), all confidence weighted and normalised by their weight sums:

* coarse: robust (Huber) 3D distance between the two world points of each match divided by the
  pair's median depth;
* fine: robust (Cauchy) reprojection error in full-resolution pixels, in both directions;
* always: an odometry prior on the relative Sim(3) of consecutive keyframes (frontend relative
  motion), weak, stronger where the consecutive pair has few matches.

The problem is solved by Levenberg-Marquardt on the robustly reweighted normal equations (the
design's note on a second-order solver). Jacobians come from forward-mode automatic
differentiation of vectorised residual functions over all matches at once (14 columns per
match, chunked); normal equations are reduced per edge with scatter-adds. Anchor offsets, when
enabled, are updated by a damped diagonal Newton step after every pose step. The gauge is fixed
by freezing the first keyframe (full run) or the covisible border (window run).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.func import jvp, vmap

from recon_ros.errors import UserInputError
from recon_ros.geometry.transforms import invert_T, make_T, rotvec_to_matrix
from recon_ros.mapping.frame import Keyframe
from recon_ros.refine.matching import PairMatches
from recon_ros.refine.schema import AlignConfig

log = logging.getLogger(__name__)

# matches linearised together; the Jacobian pass holds about 17 tangent columns of every
# intermediate per match. On the CPU smaller chunks are both leaner and faster (40 keyframes,
# 169,500 matches: 8,192 -> peak +118 MiB less and 2.4 s instead of 3.0 s than 32,768).
CHUNK = 32768
CHUNK_CPU = 8192


@dataclass
class AlignResult:
    """Outcome of one alignment run.

    ``poses``: corrected ``T_world_cam`` (Sim(3) 4x4) per keyframe id; ``corrections``: the
    Sim(3) ``C`` with ``poses[id] = C @ T_input[id]`` (the input poses given to the run).
    ``changed`` is False when a guard kept the input poses (see ``reason``).
    """

    poses: dict
    corrections: dict
    changed: bool
    reason: str = ""
    cost_before: float = float("nan")
    cost_after: float = float("nan")
    reproj_median_before: float = float("nan")
    reproj_median_after: float = float("nan")
    focal_scale: float = 1.0
    anchor_offsets: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)


def _median_depth(kf: Keyframe) -> float:
    z = kf.depth
    ok = np.isfinite(z) & (z > 0)
    return float(np.median(z[ok])) if np.any(ok) else 1.0


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserInputError("device 'cuda' requested but no CUDA device is available; use 'cpu' or 'auto'")
        return torch.device("cuda")
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# First-order Sim(3) increments used inside the residual functions (exact first derivatives at 0)
# ---------------------------------------------------------------------------------------------

def _delta_matrix(d: torch.Tensor, p: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """4x4 matrices of the first-order increments (M, 4, 4)."""
    m = d.shape[0]
    w = d[:, :3]
    zero = torch.zeros_like(w[:, 0])
    Wx = torch.stack([zero, -w[:, 2], w[:, 1], w[:, 2], zero, -w[:, 0], -w[:, 1], w[:, 0], zero],
                     dim=1).reshape(m, 3, 3)
    A = torch.exp(d[:, 6])[:, None, None] * (torch.eye(3, dtype=d.dtype, device=d.device) + Wx)
    t = p - torch.einsum("mij,mj->mi", A, p) + L[:, None] * d[:, 3:6]
    top = torch.cat([A, t[:, :, None]], dim=2)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=d.dtype, device=d.device).expand(m, 1, 4)
    return torch.cat([top, bottom], dim=1)


def _sim3_inv(T: torch.Tensor) -> torch.Tensor:
    A = T[:, :3, :3]
    s2 = torch.sum(A[:, :, 0] ** 2, dim=1)
    Ai = A.transpose(1, 2) / s2[:, None, None]
    t = -torch.einsum("mij,mj->mi", Ai, T[:, :3, 3])
    out = torch.zeros_like(T)
    out[:, :3, :3] = Ai
    out[:, :3, 3] = t
    out[:, 3, 3] = 1.0
    return out


def exact_delta(d: np.ndarray, p: np.ndarray, L: float) -> np.ndarray:
    """Exact Sim(3) of an increment (rotation by Rodrigues) about pivot ``p``."""
    R = rotvec_to_matrix(d[:3])
    s = math.exp(float(d[6]))
    return make_T(R, p - s * R @ p + L * d[3:6], s)


# ---------------------------------------------------------------------------------------------
# Problem data
# ---------------------------------------------------------------------------------------------

@dataclass
class _Problem:
    n: int
    slot: np.ndarray  # keyframe index -> free slot or -1
    ea: torch.Tensor  # per-match keyframe indices (M,)
    eb: torch.Tensor
    edge_of: torch.Tensor  # per-match edge index
    edge_ab: np.ndarray  # (E, 2) keyframe indices
    Xa: torch.Tensor  # camera-frame points (M, 3)
    Xb: torch.Tensor
    uva: torch.Tensor
    uvb: torch.Tensor
    conf: torch.Tensor
    L_edge: torch.Tensor  # per-match pair median depth in world units (M,)
    anc_a: torch.Tensor  # per-match anchor index (M,) into the compact anchor table
    anc_b: torch.Tensor
    n_anchors: int
    anchor_keys: np.ndarray  # (A, 2): keyframe index, cell
    K: torch.Tensor  # (N, 3, 3) image intrinsics
    odo_ab: np.ndarray  # (O, 2)
    odo_rel: torch.Tensor  # (O, 4, 4) frontend relative Sim(3)
    odo_w: torch.Tensor  # (O,)
    odo_L: torch.Tensor  # (O,)
    depth: np.ndarray  # (N,) median pointmap depth per keyframe (camera units)


def _robust_weight(r: torch.Tensor, kind: str, c: float) -> torch.Tensor:
    if kind == "huber":
        return torch.where(r <= c, torch.ones_like(r), c / r.clamp_min(1e-30))
    return 1.0 / (1.0 + (r / c) ** 2)


def _robust_cost(r: torch.Tensor, kind: str, c: float) -> torch.Tensor:
    if kind == "huber":
        return torch.where(r <= c, 0.5 * r ** 2, c * (r - 0.5 * c))
    return 0.5 * c ** 2 * torch.log1p((r / c) ** 2)


class GlobalAligner:
    """Sparse global alignment of keyframe poses (see the module documentation)."""

    def __init__(self, cfg: Optional[AlignConfig] = None) -> None:
        self.cfg = cfg or AlignConfig()
        self.device = pick_device(self.cfg.device)
        self.dtype = torch.float64

    # ----------------------------------------------------------------------------- setup
    def _prepare(self, kfs: Sequence[Keyframe], edges: Sequence[PairMatches], poses: np.ndarray,
                 frontend: np.ndarray, free: np.ndarray) -> _Problem:
        dev, dt = self.device, self.dtype
        index = {kf.id: i for i, kf in enumerate(kfs)}
        n = len(kfs)
        slot = -np.ones(n, np.int64)
        slot[free] = np.arange(int(free.sum()))
        ea, eb, Xa, Xb, uva, uvb, conf, eo, Le, aa, ab = ([] for _ in range(11))
        stride = self.cfg.anchor_stride
        cells_w = [int(math.ceil(kf.points_cam.shape[1] / stride)) for kf in kfs]
        edge_ab = []
        for e_i, e in enumerate(edges):
            a, b = index[e.a], index[e.b]
            m = len(e)
            edge_ab.append((a, b))
            ea.append(np.full(m, a))
            eb.append(np.full(m, b))
            eo.append(np.full(m, e_i))
            Xa.append(e.X_a)
            Xb.append(e.X_b)
            uva.append(e.uv_a)
            uvb.append(e.uv_b)
            conf.append(e.conf)
            sa = float(np.cbrt(np.linalg.det(poses[a][:3, :3])))
            sb = float(np.cbrt(np.linalg.det(poses[b][:3, :3])))
            Le.append(np.full(m, 0.5 * (sa * np.median(e.X_a[:, 2]) + sb * np.median(e.X_b[:, 2]))))
            aa.append(a * 10 ** 7 + self._cell(kfs[a], e.uv_a, stride, cells_w[a]))
            ab.append(b * 10 ** 7 + self._cell(kfs[b], e.uv_b, stride, cells_w[b]))
        cat = (lambda xs, w=1: np.concatenate(xs) if xs else np.zeros((0,) if w == 1 else (0, w)))
        keys = np.concatenate([cat(aa), cat(ab)]).astype(np.int64)
        uniq, inv = np.unique(keys, return_inverse=True)
        m_tot = len(cat(aa))
        odo_ab, odo_rel, odo_w, odo_L = [], [], [], []
        count = {}
        for (a, b), e in zip(edge_ab, edges):
            count[(min(a, b), max(a, b))] = count.get((min(a, b), max(a, b)), 0) + len(e)
        w_odo = self.cfg.odometry_weight_metric if self.cfg.fix_scale else self.cfg.odometry_weight
        for i in range(n - 1):
            odo_ab.append((i, i + 1))
            odo_rel.append(invert_T(frontend[i]) @ frontend[i + 1])
            weak = count.get((i, i + 1), 0) < 30
            odo_w.append(w_odo * (10.0 if weak else 1.0))
            odo_L.append(_median_depth(kfs[i]) * float(np.cbrt(np.linalg.det(frontend[i][:3, :3]))))
        T = lambda x, **k: torch.as_tensor(np.asarray(x), device=dev, **k)  # noqa: E731
        return _Problem(
            n=n, slot=slot,
            ea=T(cat(ea), dtype=torch.long), eb=T(cat(eb), dtype=torch.long),
            edge_of=T(cat(eo), dtype=torch.long), edge_ab=np.asarray(edge_ab, np.int64).reshape(-1, 2),
            Xa=T(cat(Xa, 3), dtype=dt), Xb=T(cat(Xb, 3), dtype=dt),
            uva=T(cat(uva, 2), dtype=dt), uvb=T(cat(uvb, 2), dtype=dt),
            conf=T(cat(conf), dtype=dt), L_edge=T(cat(Le), dtype=dt),
            anc_a=T(inv[:m_tot], dtype=torch.long), anc_b=T(inv[m_tot:], dtype=torch.long),
            n_anchors=len(uniq), anchor_keys=np.stack([uniq // 10 ** 7, uniq % 10 ** 7], axis=1),
            K=T(np.stack([np.asarray(kf.K_image, np.float64) for kf in kfs]), dtype=dt),
            odo_ab=np.asarray(odo_ab, np.int64).reshape(-1, 2),
            odo_rel=T(np.asarray(odo_rel).reshape(-1, 4, 4), dtype=dt),
            odo_w=T(np.asarray(odo_w, np.float64), dtype=dt), odo_L=T(np.asarray(odo_L, np.float64), dtype=dt),
            depth=np.asarray([_median_depth(kf) for kf in kfs], np.float64))

    @staticmethod
    def _cell(kf: Keyframe, uv: np.ndarray, stride: int, cells_w: int) -> np.ndarray:
        uvm = kf.pixel_map.to_model(uv)
        h, w = kf.points_cam.shape[:2]
        cx = np.clip(np.floor(uvm[:, 0] / stride), 0, math.ceil(w / stride) - 1).astype(np.int64)
        cy = np.clip(np.floor(uvm[:, 1] / stride), 0, math.ceil(h / stride) - 1).astype(np.int64)
        return cy * cells_w + cx

    # ----------------------------------------------------------------------------- residuals
    def _geometry(self, P: _Problem, sel: slice, Tc: torch.Tensor, alpha: torch.Tensor, lf: torch.Tensor
                  ) -> dict:
        """World points and pose blocks of a chunk of matches under the current state."""
        ea, eb = P.ea[sel], P.eb[sel]
        Ta, Tb = Tc[ea], Tc[eb]
        lat = torch.exp(-lf)

        def scaled(X: torch.Tensor, al: torch.Tensor) -> torch.Tensor:
            return torch.cat([X[:, :2] * lat, X[:, 2:3]], 1) * torch.exp(al)[:, None]

        Xsa = scaled(P.Xa[sel], alpha[P.anc_a[sel]])
        Xsb = scaled(P.Xb[sel], alpha[P.anc_b[sel]])
        Aa, Ab = Ta[:, :3, :3], Tb[:, :3, :3]
        AXa = (Aa @ Xsa[:, :, None])[:, :, 0]
        AXb = (Ab @ Xsb[:, :, None])[:, :, 0]
        return dict(ea=ea, eb=eb, Ta=Ta, Tb=Tb, Aa=Aa, Ab=Ab, Xsa=Xsa, Xsb=Xsb, AXa=AXa, AXb=AXb,
                    Wa=AXa + Ta[:, :3, 3], Wb=AXb + Tb[:, :3, 3])

    @staticmethod
    def _delta_jac(W: torch.Tensor, p: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        """d D(delta)(W) / d delta at delta = 0: [-[y]x | L I | y] with y = W - p, (m, 3, 7)."""
        y = W - p
        m = y.shape[0]
        J = torch.zeros(m, 3, 7, dtype=W.dtype, device=W.device)
        J[:, 0, 1], J[:, 0, 2] = y[:, 2], -y[:, 1]
        J[:, 1, 0], J[:, 1, 2] = -y[:, 2], y[:, 0]
        J[:, 2, 0], J[:, 2, 1] = y[:, 1], -y[:, 0]
        J[:, 0, 3] = J[:, 1, 4] = J[:, 2, 5] = L
        J[:, :, 6] = y
        return J

    def _lin3d(self, P: _Problem, sel: slice, Tc, piv, Lp, alpha, lf, jac: bool):
        """Coarse residuals (m, 3) and Jacobians (m, 3, 14)."""
        g = self._geometry(P, sel, Tc, alpha, lf)
        L = P.L_edge[sel][:, None]
        r = (g["Wa"] - g["Wb"]) / L
        if not jac:
            return r, None, None, None
        Ja = self._delta_jac(g["Wa"], piv[g["ea"]], Lp[g["ea"]]) / L[:, :, None]
        Jb = -self._delta_jac(g["Wb"], piv[g["eb"]], Lp[g["eb"]]) / L[:, :, None]
        return r, torch.cat([Ja, Jb], 2), None, None

    @staticmethod
    def _project(Tinv: torch.Tensor, K: torch.Tensor, W: torch.Tensor, lf: torch.Tensor):
        """Pixels (m, 2), d pixel / d world point (m, 2, 3) and normalised coordinates (m, 2)."""
        A = Tinv[:, :3, :3]
        Xc = (A @ W[:, :, None])[:, :, 0] + Tinv[:, :3, 3]
        z = Xc[:, 2].clamp_min(1e-6)
        f = torch.exp(lf)
        fx, fy = K[:, 0, 0] * f, K[:, 1, 1] * f
        xn, yn = Xc[:, 0] / z, Xc[:, 1] / z
        uv = torch.stack([fx * xn + K[:, 0, 2], fy * yn + K[:, 1, 2]], 1)
        Jp = torch.zeros(W.shape[0], 2, 3, dtype=W.dtype, device=W.device)
        Jp[:, 0, 0] = fx / z
        Jp[:, 0, 2] = -fx * xn / z
        Jp[:, 1, 1] = fy / z
        Jp[:, 1, 2] = -fy * yn / z
        return uv, Jp @ A, torch.stack([fx * xn, fy * yn], 1)

    def _lin2d(self, P: _Problem, sel: slice, Tc, piv, Lp, alpha, lf, jac: bool, with_focal: bool = False,
               with_anchors: bool = False):
        """Fine residuals (m, 4) = (a's point in b, b's point in a) and Jacobians."""
        g = self._geometry(P, sel, Tc, alpha, lf)
        ea, eb = g["ea"], g["eb"]
        Tia, Tib = _sim3_inv(g["Ta"]), _sim3_inv(g["Tb"])
        uv_ab, JpA_b, fxy_b = self._project(Tib, P.K[eb], g["Wa"], lf)
        uv_ba, JpA_a, fxy_a = self._project(Tia, P.K[ea], g["Wb"], lf)
        r = torch.cat([uv_ab - P.uvb[sel], uv_ba - P.uva[sel]], 1)
        if not jac:
            return r, None, None, None
        pa, pb, La, Lb = piv[ea], piv[eb], Lp[ea], Lp[eb]
        top = torch.cat([JpA_b @ self._delta_jac(g["Wa"], pa, La), -JpA_b @ self._delta_jac(g["Wa"], pb, Lb)], 2)
        bot = torch.cat([-JpA_a @ self._delta_jac(g["Wb"], pa, La), JpA_a @ self._delta_jac(g["Wb"], pb, Lb)], 2)
        J = torch.cat([top, bot], 1)
        Jf = Ja = None
        if with_focal:
            lat_a = torch.cat([-g["Xsa"][:, :2], torch.zeros_like(g["Xsa"][:, 2:])], 1)
            lat_b = torch.cat([-g["Xsb"][:, :2], torch.zeros_like(g["Xsb"][:, 2:])], 1)
            dfa = fxy_b + (JpA_b @ (g["Aa"] @ lat_a[:, :, None]))[:, :, 0]
            dfb = fxy_a + (JpA_a @ (g["Ab"] @ lat_b[:, :, None]))[:, :, 0]
            Jf = torch.cat([dfa, dfb], 1)
        if with_anchors:
            da = (JpA_b @ g["AXa"][:, :, None])[:, :, 0]
            db = (JpA_a @ g["AXb"][:, :, None])[:, :, 0]
            z2 = torch.zeros_like(da)
            Ja = torch.stack([torch.cat([da, z2], 1), torch.cat([z2, db], 1)], 2)
        return r, J, Jf, Ja

    def _res_odo(self, P: _Problem, Tc: torch.Tensor, piv: torch.Tensor, Lp: torch.Tensor,
                 unit: float) -> Callable:
        a = torch.as_tensor(P.odo_ab[:, 0], device=self.device)
        b = torch.as_tensor(P.odo_ab[:, 1], device=self.device)
        Ta, Tb = Tc[a], Tc[b]
        pa, pb, La, Lb = piv[a], piv[b], Lp[a], Lp[b]
        rel_inv = _sim3_inv(P.odo_rel)
        sw = torch.sqrt(P.odo_w)[:, None] * unit

        def f(da, db, lf, aa, ab):
            Ca = _delta_matrix(da, pa, La) @ Ta
            Cb = _delta_matrix(db, pb, Lb) @ Tb
            E = rel_inv @ _sim3_inv(Ca) @ Cb
            A = E[:, :3, :3]
            s = torch.linalg.det(A).clamp_min(1e-12) ** (1.0 / 3.0)
            R = A / s[:, None, None]
            rot = 0.5 * torch.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], 1)
            tr = E[:, :3, 3] / P.odo_L[:, None]
            return torch.cat([rot, tr, torch.log(s)[:, None]], dim=1) * sw
        return f

    # ----------------------------------------------------------------------------- linearisation
    def _jac(self, f: Callable, m: int, with_focal: bool, with_anchors: bool
             ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Residuals (m, R) and Jacobians: poses (m, R, 14), focal (m, R) and anchors (m, R, 2).

        One forward-mode pass vectorised (``vmap``) over the tangent basis: every match's 14 pose
        columns (plus focal and anchor columns) come out of the same batched evaluation.
        """
        dev, dt = self.device, self.dtype
        z7 = torch.zeros(m, 7, dtype=dt, device=dev)
        z1 = torch.zeros(m, dtype=dt, device=dev)
        lf = torch.zeros((), dtype=dt, device=dev)
        args = (z7, z7, lf, z1, z1)
        n_c = 14 + int(with_focal) + 2 * int(with_anchors)
        eye = torch.eye(n_c, dtype=dt, device=dev)
        t_da = eye[:, None, 0:7].expand(n_c, m, 7)
        t_db = eye[:, None, 7:14].expand(n_c, m, 7)
        t_lf = eye[:, 14] if with_focal else torch.zeros(n_c, dtype=dt, device=dev)
        k = 14 + int(with_focal)
        t_aa = eye[:, None, k].expand(n_c, m) if with_anchors else torch.zeros(n_c, m, dtype=dt, device=dev)
        t_ab = eye[:, None, k + 1].expand(n_c, m) if with_anchors else torch.zeros(n_c, m, dtype=dt, device=dev)

        def col(ta, tb, tl, taa, tab):
            return jvp(f, args, (ta, tb, tl, taa, tab))

        r_all, cols = vmap(col)(t_da, t_db, t_lf, t_aa, t_ab)  # (n_c, m, R)
        r = r_all[0]
        J = cols.permute(1, 2, 0)  # (m, R, n_c)
        Jf = J[:, :, 14] if with_focal else None
        Ja = J[:, :, k:k + 2] if with_anchors else None
        return r, J[:, :, :14], Jf, Ja

    # ----------------------------------------------------------------------------- main loop
    def align(self, kfs: Sequence[Keyframe], edges: Sequence[PairMatches], poses: Optional[dict] = None,
            frontend_poses: Optional[dict] = None, frozen: Optional[Sequence[int]] = None,
            free: Optional[Sequence[int]] = None) -> AlignResult:
        """Align keyframes (time order). ``poses``: starting poses by id (default: the keyframes');
        ``frontend_poses``: poses defining the odometry prior (default: the starting poses);
        ``frozen``/``free``: ids held fixed / optimised (default: the first keyframe frozen)."""
        cfg = self.cfg
        ids = [kf.id for kf in kfs]
        P0 = np.stack([np.asarray((poses or {}).get(kf.id, kf.T_world_cam), np.float64) for kf in kfs])
        front = np.stack([np.asarray((frontend_poses or {}).get(kf.id, P0[i]), np.float64)
                          for i, kf in enumerate(kfs)])
        free_mask = np.ones(len(kfs), bool)
        if free is not None:
            fs = set(free)
            free_mask = np.array([i in fs for i in ids])
        if frozen is not None:
            fz = set(frozen)
            free_mask &= np.array([i not in fz for i in ids])
        if frozen is None and free is None and len(kfs):
            free_mask[0] = False
        if free_mask.all() and len(kfs):
            free_mask[0] = False
        edges, n_bad = _finite_edges(edges)
        if n_bad:
            log.warning("global alignment: %d matches with non-finite values skipped", n_bad)
        unchanged = AlignResult(poses={i: P0[k].copy() for k, i in enumerate(ids)},
                                corrections={i: np.eye(4) for i in ids}, changed=False)
        n_match = int(sum(len(e) for e in edges))
        unchanged.stats = {"keyframes": len(kfs), "free": int(free_mask.sum()), "edges": len(edges),
                           "matches": n_match, "nonfinite_matches_skipped": n_bad}
        if not cfg.enabled:
            unchanged.reason = "alignment disabled"
            return unchanged
        if n_match < cfg.min_total_matches or not free_mask.any() or len(kfs) < 2:
            unchanged.reason = f"too few matches ({n_match} < {cfg.min_total_matches}) or nothing to optimise"
            log.warning("global alignment skipped: %s", unchanged.reason)
            return unchanged
        P = self._prepare(kfs, edges, P0, front, free_mask)
        try:
            return self._solve(P, kfs, ids, P0, free_mask, unchanged)
        except (RuntimeError, np.linalg.LinAlgError) as exc:  # numerical failure: keep the input
            unchanged.reason = f"numerical failure: {exc}"
            log.warning("global alignment aborted: %s", unchanged.reason)
            return unchanged

    def _solve(self, P: _Problem, kfs: Sequence[Keyframe], ids: list, P0: np.ndarray, free_mask: np.ndarray,
               unchanged: AlignResult) -> AlignResult:
        cfg = self.cfg
        dev, dt = self.device, self.dtype
        poses = P0.copy()
        alpha = torch.zeros(P.n_anchors, dtype=dt, device=dev)
        lf = torch.zeros((), dtype=dt, device=dev)
        active = torch.ones(len(P.conf), dtype=torch.bool, device=dev)
        f_mean = float(P.K[:, 0, 0].mean() + P.K[:, 1, 1].mean()) / 2.0

        cost0_3d = self._cost(P, poses, alpha, lf, "coarse", active, f_mean)
        stats: dict = dict(unchanged.stats)
        if cfg.coarse_iterations > 0:
            poses, it = self._lm(P, poses, free_mask, alpha, lf, "coarse", active, f_mean, cfg.coarse_iterations)
            stats["coarse_iterations"] = it
            active = self._reject(P, poses, alpha, lf, active)
            stats["matches_after_rejection"] = int(active.sum())
        if cfg.fine_iterations > 0:
            poses, it, alpha, lf = self._lm_fine(P, poses, free_mask, alpha, lf, active, f_mean)
            stats["fine_iterations"] = it
        zero_a, zero_f = torch.zeros_like(alpha), torch.zeros_like(lf)
        phase = "fine" if cfg.fine_iterations > 0 else "coarse"  # the objective of the last phase
        cost_b = self._cost(P, P0, zero_a, zero_f, phase, active, f_mean)
        cost_a = self._cost(P, poses, alpha, lf, phase, active, f_mean)
        reproj0 = self._reproj_median(P, P0, zero_a, zero_f, active)  # same matches as after
        reproj1 = self._reproj_median(P, poses, alpha, lf, active)
        res = AlignResult(poses={}, corrections={}, changed=True, cost_before=cost_b, cost_after=cost_a,
                          reproj_median_before=reproj0, reproj_median_after=reproj1,
                          focal_scale=float(torch.exp(lf)), stats=stats)
        stats["cost_before_all_matches"] = cost0_3d
        reason = ""
        if not np.all(np.isfinite(poses)) or not math.isfinite(cost_a) or cost_a > cfg.divergence_ratio * cost_b:
            reason = f"diverged (cost {cost_b:.4g} -> {cost_a:.4g})"
        elif cost_a > cost_b * (1.0 + 1e-6):
            reason = f"robust cost did not improve ({cost_b:.4g} -> {cost_a:.4g})"
        elif math.isfinite(reproj0) and reproj1 > reproj0 * (1.0 + cfg.max_reproj_increase) + 1e-9:
            reason = f"reprojection error grew (median {reproj0:.3g} -> {reproj1:.3g} px)"
        elif cost_b - cost_a < cfg.min_cost_decrease * cost_b:
            reason = f"no significant improvement (cost {cost_b:.4g} -> {cost_a:.4g})"
        if reason:
            unchanged.reason = reason
            unchanged.reproj_median_before, unchanged.reproj_median_after = reproj0, reproj1
            unchanged.cost_before, unchanged.cost_after = cost_b, cost_a
            unchanged.stats = stats
            log.info("global alignment result not used: %s", unchanged.reason)
            return unchanged
        for k, i in enumerate(ids):
            res.poses[i] = poses[k]
            res.corrections[i] = poses[k] @ invert_T(P0[k])
        if cfg.optimize_anchors and P.n_anchors:
            a_np = alpha.detach().cpu().numpy()
            for k, kf in enumerate(kfs):
                sel = P.anchor_keys[:, 0] == k
                if not np.any(sel):
                    continue
                h, w = kf.points_cam.shape[:2]
                gh, gw = math.ceil(h / cfg.anchor_stride), math.ceil(w / cfg.anchor_stride)
                grid = np.zeros(gh * gw)
                grid[P.anchor_keys[sel, 1]] = a_np[sel]
                res.anchor_offsets[ids[k]] = grid.reshape(gh, gw)
        log.info("global alignment: cost %.4g -> %.4g, reprojection median %.3g -> %.3g px",
                 cost_b, cost_a, reproj0, reproj1)
        return res

    # ----------------------------------------------------------------------------- helpers
    def _pivots(self, P: _Problem, poses: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Pivot (median-depth point on the optical axis) and length unit per keyframe."""
        s = np.cbrt(np.linalg.det(poses[:, :3, :3]))
        d = P.depth
        piv = poses[:, :3, :3] @ np.stack([np.zeros_like(d), np.zeros_like(d), d], 1)[..., None]
        piv = piv[..., 0] + poses[:, :3, 3]
        return (torch.as_tensor(piv, dtype=self.dtype, device=self.device),
                torch.as_tensor(s * d, dtype=self.dtype, device=self.device))

    def _residual_fns(self, P: _Problem, poses: np.ndarray, alpha: torch.Tensor, lf: torch.Tensor, phase: str,
                      f_mean: float):
        """Per-chunk linearisation callables ``lin(jac, with_focal, with_anchors)`` and the odometry residual."""
        Tc = torch.as_tensor(poses, dtype=self.dtype, device=self.device)
        piv, Lp = self._pivots(P, poses)
        m = len(P.conf)
        n = CHUNK_CPU if self.device.type == "cpu" else CHUNK
        chunks = [slice(i, min(i + n, m)) for i in range(0, m, n)]
        fns = []
        for s in chunks:
            if phase == "coarse":
                fns.append((s, lambda jac, wf=False, wa=False, s=s: self._lin3d(P, s, Tc, piv, Lp, alpha, lf, jac)))
            else:
                fns.append((s, lambda jac, wf=False, wa=False, s=s: self._lin2d(P, s, Tc, piv, Lp, alpha, lf, jac,
                                                                               wf, wa)))
        odo = self._res_odo(P, Tc, piv, Lp, 1.0 if phase == "coarse" else f_mean) if len(P.odo_ab) else None
        return fns, odo

    def _kernel(self, phase: str) -> tuple[str, float]:
        if phase == "coarse":
            return "huber", self.cfg.coarse_kernel_scale
        return "cauchy", self.cfg.fine_kernel_px

    def _cost(self, P: _Problem, poses: np.ndarray, alpha: torch.Tensor, lf: torch.Tensor, phase: str,
              active: torch.Tensor, f_mean: float) -> float:
        with torch.no_grad():
            fns, odo = self._residual_fns(P, poses, alpha, lf, phase, f_mean)
            kind, c = self._kernel(phase)
            z7 = lambda m: torch.zeros(m, 7, dtype=self.dtype, device=self.device)  # noqa: E731
            z1 = lambda m: torch.zeros(m, dtype=self.dtype, device=self.device)  # noqa: E731
            zf = torch.zeros((), dtype=self.dtype, device=self.device)
            total = torch.zeros((), dtype=self.dtype, device=self.device)
            wsum = (P.conf * active).sum().clamp_min(1e-12)
            for s, f in fns:
                r = f(False)[0]
                rn = self._norms(r, phase)
                total = total + (P.conf[s] * active[s] * _robust_cost(rn, kind, c).sum(1)).sum() / wsum
            if odo is not None:
                o = len(P.odo_ab)
                r = odo(z7(o), z7(o), zf, z1(o), z1(o))
                total = total + 0.5 * (r ** 2).sum() / max(o, 1)
            if self.cfg.optimize_anchors and phase == "fine":
                total = total + 0.5 * self.cfg.anchor_prior_weight * (alpha ** 2).sum() / max(P.n_anchors, 1)
            return float(total)

    @staticmethod
    def _norms(r: torch.Tensor, phase: str) -> torch.Tensor:
        """Per-match residual norms, one per direction in the fine phase: (m, 1) or (m, 2)."""
        if phase == "coarse":
            return torch.linalg.norm(r, dim=1, keepdim=True)
        return torch.stack([torch.linalg.norm(r[:, :2], dim=1), torch.linalg.norm(r[:, 2:], dim=1)], 1)

    def _reproj_median(self, P, poses, alpha, lf, active) -> float:
        with torch.no_grad():
            fns, _ = self._residual_fns(P, poses, alpha, lf, "fine", 1.0)
            out = []
            for s, f in fns:
                r = self._norms(f(False)[0], "fine")
                out.append(r[active[s]].reshape(-1))
            allr = torch.cat(out) if out else torch.zeros(0)
            return float(allr.median()) if len(allr) else float("nan")

    def _normal_equations(self, P: _Problem, poses: np.ndarray, alpha: torch.Tensor, lf: torch.Tensor,
                          phase: str, active: torch.Tensor, f_mean: float, n_free: int, with_focal: bool,
                          with_anchors: bool):
        dev, dt = self.device, self.dtype
        nf = 1 if with_focal else 0
        dim = 7 * n_free + nf
        H = torch.zeros(dim, dim, dtype=dt, device=dev)
        g = torch.zeros(dim, dtype=dt, device=dev)
        Ha = torch.zeros(P.n_anchors, dtype=dt, device=dev)
        ga = torch.zeros(P.n_anchors, dtype=dt, device=dev)
        kind, c = self._kernel(phase)
        fns, odo = self._residual_fns(P, poses, alpha, lf, phase, f_mean)
        slot = torch.as_tensor(P.slot, device=dev)
        E = len(P.edge_ab)
        He = torch.zeros(E, 14 + nf, 14 + nf, dtype=dt, device=dev)
        ge = torch.zeros(E, 14 + nf, dtype=dt, device=dev)
        wsum = (P.conf * active).sum().clamp_min(1e-12)
        for s, f in fns:
            r, J, Jf, Ja = f(True, with_focal, with_anchors)
            rn = self._norms(r, phase)
            w = _robust_weight(rn, kind, c) * (P.conf[s] * active[s] / wsum)[:, None]
            wr = w.repeat_interleave(r.shape[1] // w.shape[1], dim=1)  # per residual component
            if with_focal:
                J = torch.cat([J, Jf[:, :, None]], dim=2)
            Jw = J * wr[:, :, None]
            He.index_add_(0, P.edge_of[s], torch.bmm(Jw.transpose(1, 2), J))
            ge.index_add_(0, P.edge_of[s], torch.bmm(Jw.transpose(1, 2), r[:, :, None])[:, :, 0])
            if with_anchors:
                Ha.index_add_(0, P.anc_a[s], (Ja[:, :, 0] ** 2 * wr).sum(1))
                Ha.index_add_(0, P.anc_b[s], (Ja[:, :, 1] ** 2 * wr).sum(1))
                ga.index_add_(0, P.anc_a[s], (Ja[:, :, 0] * r * wr).sum(1))
                ga.index_add_(0, P.anc_b[s], (Ja[:, :, 1] * r * wr).sum(1))
        self._scatter(H, g, He, ge, torch.as_tensor(P.edge_ab, device=dev), slot, n_free, nf)
        if odo is not None:
            o = len(P.odo_ab)
            r, J, _, _ = self._jac(odo, o, False, False)
            Ho = torch.einsum("mri,mrj->mij", J, J) / o
            go = torch.einsum("mri,mr->mi", J, r) / o
            if nf:
                Ho = torch.nn.functional.pad(Ho, (0, nf, 0, nf))
                go = torch.nn.functional.pad(go, (0, nf))
            self._scatter(H, g, Ho, go, torch.as_tensor(P.odo_ab, device=dev), slot, n_free, nf)
        if with_anchors:
            lam = self.cfg.anchor_prior_weight / max(P.n_anchors, 1)
            Ha = Ha + lam
            ga = ga + lam * alpha
        return H, g, Ha, ga

    @staticmethod
    def _scatter(H, g, Hb, gb, ab, slot, n_free, nf) -> None:
        """Add per-edge blocks (B, 14+nf, 14+nf) into the dense system at the free slots."""
        B = Hb.shape[0]
        if B == 0:
            return
        ar7 = torch.arange(7, device=H.device)
        sa, sb = slot[ab[:, 0]], slot[ab[:, 1]]
        ia = torch.where(sa[:, None] >= 0, sa[:, None] * 7 + ar7, -1)
        ib = torch.where(sb[:, None] >= 0, sb[:, None] * 7 + ar7, -1)
        parts = [ia, ib]
        if nf:
            parts.append(torch.full((B, nf), 7 * n_free, device=H.device, dtype=torch.long))
        idx = torch.cat(parts, dim=1)  # (B, 14+nf)
        ok = idx >= 0
        g.index_add_(0, idx[ok], gb[ok])
        pair_ok = ok[:, :, None] & ok[:, None, :]
        dim = H.shape[0]
        flat = idx[:, :, None] * dim + idx[:, None, :]
        H.view(-1).index_add_(0, flat[pair_ok], Hb[pair_ok])

    def _apply(self, P: _Problem, poses: np.ndarray, free_mask: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Compose the exact Sim(3) increments of all free keyframes onto their poses (batched)."""
        piv, Lp = self._pivots(P, poses)
        idx = np.flatnonzero(free_mask)
        d = delta.reshape(-1, 7)[P.slot[idx]]
        p = piv.cpu().numpy()[idx]
        L = Lp.cpu().numpy()[idx]
        R = rotvec_to_matrix(d[:, :3])
        sc = np.exp(d[:, 6])
        D = np.zeros((len(idx), 4, 4))
        D[:, :3, :3] = sc[:, None, None] * R
        D[:, :3, 3] = p - sc[:, None] * np.einsum("nij,nj->ni", R, p) + L[:, None] * d[:, 3:6]
        D[:, 3, 3] = 1.0
        out = poses.copy()
        out[idx] = D @ poses[idx]
        return out

    def _lm(self, P: _Problem, poses: np.ndarray, free_mask: np.ndarray, alpha: torch.Tensor, lf: torch.Tensor,
            phase: str, active: torch.Tensor, f_mean: float, iterations: int) -> tuple[np.ndarray, int]:
        out, it, _, _ = self._lm_core(P, poses, free_mask, alpha, lf, phase, active, f_mean, iterations,
                                      with_focal=False, with_anchors=False)
        return out, it

    def _lm_fine(self, P, poses, free_mask, alpha, lf, active, f_mean):
        return self._lm_core(P, poses, free_mask, alpha, lf, "fine", active, f_mean, self.cfg.fine_iterations,
                             with_focal=self.cfg.optimize_focal, with_anchors=self.cfg.optimize_anchors)

    def _lm_core(self, P, poses, free_mask, alpha, lf, phase, active, f_mean, iterations, with_focal,
                 with_anchors):
        n_free = int(free_mask.sum())
        lam = 1e-4
        cost = self._cost(P, poses, alpha, lf, phase, active, f_mean)
        it = 0
        for it in range(1, iterations + 1):
            H, g, Ha, ga = self._normal_equations(P, poses, alpha, lf, phase, active, f_mean, n_free,
                                                  with_focal, with_anchors)
            if self.cfg.fix_scale and n_free:  # rigid corrections: the log-scale increments stay 0
                idx = torch.arange(n_free, device=H.device) * 7 + 6
                H[idx, :] = 0.0
                H[:, idx] = 0.0
                H[idx, idx] = 1.0
                g[idx] = 0.0
            diag = torch.diagonal(H).clamp_min(1e-12)
            accepted = False
            for _ in range(8):
                A = H + torch.diag(lam * diag + 1e-12)
                try:
                    step = -torch.linalg.solve(A, g)
                except RuntimeError:
                    lam *= 10.0
                    continue
                step_np = step.detach().cpu().numpy()
                cand = self._apply(P, poses, free_mask, step_np[:7 * n_free])
                # focal guard: the shared focal may change by at most a factor of 2
                lf_c = (lf + step[7 * n_free]).clamp(-math.log(2.0), math.log(2.0)) if with_focal else lf
                alpha_c = alpha - ga / (Ha * (1.0 + lam)) if with_anchors else alpha
                new = self._cost(P, cand, alpha_c, lf_c, phase, active, f_mean)
                if math.isfinite(new) and new <= cost:
                    rel = (cost - new) / max(cost, 1e-30)
                    poses, alpha, lf, cost = cand, alpha_c, lf_c, new
                    lam = max(lam / 3.0, 1e-9)
                    accepted = True
                    break
                lam *= 8.0
            if not accepted or rel < 1e-6:
                break
        return poses, it, alpha, lf

    def _reject(self, P: _Problem, poses: np.ndarray, alpha: torch.Tensor, lf: torch.Tensor,
                active: torch.Tensor) -> torch.Tensor:
        """Drop matches above ``outlier_mad`` robust scales and edges keeping too few inliers."""
        with torch.no_grad():
            fns, _ = self._residual_fns(P, poses, alpha, lf, "coarse", 1.0)
            norms = []
            for s, f in fns:
                norms.append(torch.linalg.norm(f(False)[0], dim=1))
            r = torch.cat(norms)
            med = r[active].median() if active.any() else torch.zeros((), dtype=self.dtype)
            scale = 1.4826 * med
            keep = active & (r <= self.cfg.outlier_mad * torch.clamp(scale, min=self.cfg.coarse_kernel_scale))
            E = len(P.edge_ab)
            tot = torch.zeros(E, dtype=self.dtype, device=self.device).index_add_(0, P.edge_of, active.to(self.dtype))
            kept = torch.zeros(E, dtype=self.dtype, device=self.device).index_add_(0, P.edge_of, keep.to(self.dtype))
            bad_edge = kept < self.cfg.min_edge_inlier_ratio * tot.clamp_min(1)
            keep &= ~bad_edge[P.edge_of]
            log.debug("outlier rejection: %d of %d matches kept, %d edges dropped",
                      int(keep.sum()), int(active.sum()), int(bad_edge.sum()))
            return keep


def _finite_edges(edges: Sequence[PairMatches]) -> tuple[list, int]:
    """Edges with their non-finite matches removed (edges left empty are dropped) and the count removed."""
    out, bad = [], 0
    for e in edges:
        ok = (np.all(np.isfinite(e.X_a), 1) & np.all(np.isfinite(e.X_b), 1) & np.all(np.isfinite(e.uv_a), 1)
              & np.all(np.isfinite(e.uv_b), 1) & np.isfinite(e.conf) & (e.X_a[:, 2] > 0) & (e.X_b[:, 2] > 0))
        bad += int((~ok).sum())
        if ok.all():
            out.append(e)
        elif ok.any():
            out.append(replace(e, uv_a=e.uv_a[ok], uv_b=e.uv_b[ok], X_a=e.X_a[ok], X_b=e.X_b[ok], conf=e.conf[ok]))
    return out, bad


def window_sets(ids: Sequence[int], edges: Sequence[PairMatches], window: int) -> tuple[list, list, list]:
    """(free ids = the last ``window``, frozen ids = their other edge endpoints, edges touching a free id)."""
    free = list(ids[-window:])
    fs = set(free)
    used = [e for e in edges if e.a in fs or e.b in fs]
    frozen = sorted({x for e in used for x in (e.a, e.b)} - fs)
    if not frozen:
        frozen = [free[0]]
        free = free[1:]
    return free, frozen, used
