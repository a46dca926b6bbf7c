"""Multi-view-stereo depth refinement of keyframes around their prior depth (weight-free).

For a reference keyframe (refine design, sections 5.1-5.3):

1. Source keyframes are chosen by an MVSNet-style view score: a piecewise Gaussian of the
   triangulation angle (peak 5 degrees) summed over the reference points the source sees,
   subject to a baseline/depth ratio and a viewing-angle limit.
2. A plane sweep with per-pixel hypotheses, uniform in inverse depth inside a band
   ``[d0 / (1 + band), d0 * (1 + band)]`` around the prior depth ``d0``, on the pointmap grid of
   the reference. Each hypothesis back-projects the reference pixel, moves it into a source and
   samples the source image (``grid_sample``). The cost is 1 - ZNCC over a window, averaged over
   the best ``best_k`` sources, plus a weak prior term. Winner-take-all with parabolic sub-plane
   refinement.
3. Photometric filter (ZNCC peak, uniqueness, texture) and a geometric forward-backward check
   against the sources' depths (their own sweep results where available). Refined depth replaces
   the prior only where both pass; the final depth averages the consistent reprojected depths.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from recon_ros.errors import DataFormatError
from recon_ros.geometry.camera import backproject_depth
from recon_ros.geometry.transforms import invert_T
from recon_ros.mapping.frame import Keyframe
from recon_ros.refine.align import pick_device
from recon_ros.refine.graph import mask_on_grid, subsampled_points
from recon_ros.refine.schema import MvsConfig

log = logging.getLogger(__name__)

INVALID_COST = 2.0


@dataclass
class SweepResult:
    """Photometric result of the plane sweep on the reference pointmap grid."""

    depth: np.ndarray  # (h, w) float32, NaN where no hypothesis was evaluated
    zncc: np.ndarray  # (h, w) ZNCC at the winner (averaged over the best sources)
    photometric_ok: np.ndarray  # (h, w) bool
    confidence: np.ndarray  # (h, w) softmax mass of the 4 hypotheses around the winner
    stats: dict = field(default_factory=dict)  # fraction of pixels passing each photometric test


@dataclass
class RefinedDepth:
    """Refined keyframe depth at pointmap resolution.

    ``points_cam`` is the keyframe's pointmap with the refined depth substituted where
    ``replaced`` is True (elsewhere it is the input pointmap). ``depth`` is its z (NaN invalid).
    ``n_consistent`` counts the sources that passed the geometric check per pixel.
    """

    id: int
    depth: np.ndarray
    points_cam: np.ndarray
    replaced: np.ndarray
    sweep: Optional[SweepResult]
    n_consistent: np.ndarray
    sources: list
    stats: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Source selection
# ---------------------------------------------------------------------------------------------

def view_angle_weight(angle_deg: np.ndarray, peak: float = 5.0, sigma_lo: float = 1.0,
                      sigma_hi: float = 10.0) -> np.ndarray:
    """MVSNet's piecewise Gaussian of the triangulation angle."""
    sigma = np.where(angle_deg <= peak, sigma_lo, sigma_hi)
    return np.exp(-((angle_deg - peak) ** 2) / (2.0 * sigma ** 2))


def _centre_axis(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    A = T[:3, :3]
    axis = A @ np.array([0.0, 0.0, 1.0])
    return T[:3, 3], axis / np.linalg.norm(axis)


def select_sources(ref: int, kfs: Sequence[Keyframe], poses: Sequence[np.ndarray], cfg: MvsConfig,
                   stride: int = 8) -> list[int]:
    """Indices (into ``kfs``) of the best ``cfg.num_sources`` source keyframes for ``kfs[ref]``."""
    kr = kfs[ref]
    P = subsampled_points(kr, stride)
    if len(P) == 0:
        return []
    Tr = np.asarray(poses[ref], np.float64)
    Pw = P @ Tr[:3, :3].T + Tr[:3, 3]
    c_r, ax_r = _centre_axis(Tr)
    depth_w = float(np.median(np.linalg.norm(Pw - c_r, axis=1)))
    scores = []
    for j, kf in enumerate(kfs):
        if j == ref:
            continue
        Tj = np.asarray(poses[j], np.float64)
        c_j, ax_j = _centre_axis(Tj)
        base = np.linalg.norm(c_j - c_r)
        view_angle = np.degrees(np.arccos(np.clip(ax_r @ ax_j, -1, 1)))
        if base < cfg.min_baseline_ratio * depth_w or view_angle > cfg.max_angle_deg:
            continue
        Tji = invert_T(Tj)
        Xc = Pw @ Tji[:3, :3].T + Tji[:3, 3]
        z = Xc[:, 2]
        K = kf.K
        h, w = kf.points_cam.shape[:2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = K[0, 0] * Xc[:, 0] / z + K[0, 2]
            v = K[1, 1] * Xc[:, 1] / z + K[1, 2]
        vis = (z > 0) & (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
        if vis.sum() < 0.1 * len(P):
            continue
        r1 = Pw[vis] - c_r
        r2 = Pw[vis] - c_j
        cosang = np.sum(r1 * r2, 1) / (np.linalg.norm(r1, axis=1) * np.linalg.norm(r2, axis=1))
        ang = np.degrees(np.arccos(np.clip(cosang, -1, 1)))
        scores.append((float(view_angle_weight(ang).sum() * vis.mean()), j))
    scores.sort(reverse=True)
    return [j for _, j in scores[:cfg.num_sources]]


# ---------------------------------------------------------------------------------------------
# Images on the reference grid
# ---------------------------------------------------------------------------------------------

def _grey_f32(rgb: np.ndarray, blur_sigma: float) -> np.ndarray:
    g = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
    if blur_sigma > 0.3:
        g = cv2.GaussianBlur(g, (0, 0), blur_sigma)
    return g


def _capped(kf: Keyframe, max_side: int, blur_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Grey image (capped to ``max_side``) and its intrinsics."""
    g = _grey_f32(kf.rgb, blur_sigma)
    K = np.asarray(kf.K_image, np.float64).copy()
    H, W = g.shape
    s = min(1.0, max_side / max(H, W))
    if s < 1.0:
        g = cv2.resize(g, (int(round(W * s)), int(round(H * s))), interpolation=cv2.INTER_AREA)
        sx, sy = g.shape[1] / W, g.shape[0] / H
        K[0] *= sx
        K[1] *= sy
        K[0, 2] = sx * (kf.K_image[0, 2] + 0.5) - 0.5
        K[1, 2] = sy * (kf.K_image[1, 2] + 0.5) - 0.5
    return g, K


def _norm_grid(u: torch.Tensor, v: torch.Tensor, W: int, H: int) -> torch.Tensor:
    """Pixel-centre coordinates to grid_sample coordinates (align_corners=False)."""
    return torch.stack([(u + 0.5) / W * 2.0 - 1.0, (v + 0.5) / H * 2.0 - 1.0], dim=-1)


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------

class DepthRefiner:
    """Weight-free plane-sweep refinement of keyframe depth (optionally a learned MVSNet)."""

    def __init__(self, cfg: Optional[MvsConfig] = None) -> None:
        self.cfg = cfg or MvsConfig()
        self.device = pick_device(self.cfg.device)
        self._learned = None
        if self.cfg.checkpoint:
            from recon_ros.refine.mvsnet import load_mvsnet
            self._learned = load_mvsnet(self.cfg.checkpoint, device=self.device)

    def _ref_image(self, kf: Keyframe, blur: float) -> torch.Tensor:
        """Reference grey image sampled on its pointmap grid (1, 1, h, w)."""
        g = _grey_f32(kf.rgb, blur)
        h, w = kf.points_cam.shape[:2]
        uu, vv = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        uv = kf.pixel_map.to_image(np.stack([uu, vv], -1))
        return torch.from_numpy(cv2.remap(g, uv[..., 0].astype(np.float32), uv[..., 1].astype(np.float32),
                                          cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                                ).to(self.device)[None, None]

    def sweep(self, ref: Keyframe, sources: Sequence[Keyframe], T_ref: np.ndarray, T_src: Sequence[np.ndarray],
              masks: Optional[dict] = None) -> SweepResult:
        """Photometric plane sweep of ``ref`` against ``sources`` (see the module documentation)."""
        cfg = self.cfg
        dev = self.device
        h, w = ref.points_cam.shape[:2]
        d0 = ref.depth.astype(np.float64)
        has_prior = np.isfinite(d0) & (d0 > 0)
        nan = np.full((h, w), np.nan, np.float32)
        if not sources or not has_prior.any():
            return SweepResult(nan, nan.copy(), np.zeros((h, w), bool), np.zeros((h, w), np.float32))
        # Ratio of a reference grid pixel to an image pixel: blur images accordingly (anti-aliasing).
        pm = ref.pixel_map
        footprint = 1.0 / max(min(pm.sx, pm.sy), 1e-6)
        blur = 0.5 * math.sqrt(max(footprint ** 2 - 1.0, 0.0))
        I_r = self._ref_image(ref, blur)
        D = cfg.num_hypotheses
        beta = cfg.band
        d0t = torch.from_numpy(_smooth_prior(d0, has_prior)).to(dev, torch.float32)
        inv_near = 1.0 / (d0t / (1.0 + beta))
        inv_far = 1.0 / (d0t * (1.0 + beta))
        steps = torch.linspace(0.0, 1.0, D, device=dev)[:, None, None]
        inv_h = inv_far[None] + steps * (inv_near - inv_far)[None]  # (D, h, w), increasing inverse depth
        Kr = np.asarray(ref.K, np.float64)
        uu, vv = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        ray = np.stack([(uu - Kr[0, 2] - Kr[0, 1] * (vv - Kr[1, 2]) / Kr[1, 1]) / Kr[0, 0],
                        (vv - Kr[1, 2]) / Kr[1, 1], np.ones_like(uu)], 0)
        ray_t = torch.from_numpy(ray).to(dev, torch.float32)  # (3, h, w)
        k = cfg.window
        r_mean = _box(I_r, k)
        r_var = (_box(I_r * I_r, k) - r_mean ** 2).clamp_min(0.0)
        textured = r_var[0, 0] >= cfg.min_texture ** 2
        views = []  # per source: image, mask, and the ray term of the projection (chunk-independent)
        for s_kf, T_s in zip(sources, T_src):
            g, Ks = _capped(s_kf, cfg.max_side, blur)
            Hs, Ws = g.shape
            I_s = torch.from_numpy(g).to(dev)[None, None]
            smask = None
            if masks and s_kf.id in masks and masks[s_kf.id] is not None:
                m = cv2.resize(masks[s_kf.id].astype(np.uint8), (Ws, Hs), interpolation=cv2.INTER_NEAREST)
                smask = torch.from_numpy(m.astype(np.float32)).to(dev)[None, None]
            M = invert_T(np.asarray(T_s, np.float64)) @ np.asarray(T_ref, np.float64)
            A = torch.from_numpy(Ks @ M[:3, :3]).to(dev, torch.float32)
            b = torch.from_numpy(Ks @ M[:3, 3]).to(dev, torch.float32)
            base = torch.einsum("ij,jhw->ihw", A, ray_t)  # (3, h, w)
            views.append((I_s, smask, base, b))
        kb = min(cfg.best_k, len(views))
        photo = torch.empty((D, h, w), dtype=torch.float32, device=dev)
        # The hypotheses are swept a few at a time: the working memory of a pass is about
        # 70 floats per pixel and hypothesis, whatever the number of hypotheses.
        step = max(1, cfg.hypotheses_per_pass)
        for d_lo in range(0, D, step):
            depths = 1.0 / inv_h[d_lo:d_lo + step]
            costs = [self._zncc_cost(depths, I_s, smask, base, b, I_r, r_mean, r_var)
                     for I_s, smask, base, b in views]
            C = torch.stack(costs, 0)  # (S, d, h, w)
            photo[d_lo:d_lo + step] = torch.sort(C, dim=0)[0][:kb].mean(0)
            del costs, C
        log_ratio = torch.log((1.0 / inv_h) / d0t[None]).abs() / beta
        total = photo + cfg.prior_weight * log_ratio
        best = torch.argmin(total, dim=0)  # (h, w)
        c0 = torch.gather(total, 0, best[None])[0]
        bm = (best - 1).clamp_min(0)
        bp = (best + 1).clamp_max(D - 1)
        cm = torch.gather(total, 0, bm[None])[0]
        cp = torch.gather(total, 0, bp[None])[0]
        denom = cm - 2 * c0 + cp
        off = torch.where(denom > 1e-9, 0.5 * (cm - cp) / denom.clamp_min(1e-9), torch.zeros_like(c0))
        off = off.clamp(-0.5, 0.5)
        t = (best.to(torch.float32) + off) / (D - 1)
        inv_best = inv_far + t * (inv_near - inv_far)
        depth = 1.0 / inv_best
        interior = (best > 0) & (best < D - 1)
        photo_best = torch.gather(photo, 0, best[None])[0]
        # Uniqueness: best cost against the best other local minimum of the cost curve
        # (a broad single valley is unique, two separated valleys of similar cost are not).
        idx = torch.arange(D, device=dev)[:, None, None]
        big = torch.full_like(total[:1], 1e9)
        left = torch.cat([big, total[:-1]], 0)
        right = torch.cat([total[1:], big], 0)
        local_min = (total <= left) & (total <= right) & ((idx - best[None]).abs() >= 2)
        second = torch.where(local_min, total, torch.full_like(total, 1e9)).min(0)[0]
        unique = c0 < cfg.max_uniqueness * second
        prob = torch.softmax(-total / 0.1, dim=0)
        win = ((idx - best[None]) >= -1) & ((idx - best[None]) <= 2)
        conf = (prob * win).sum(0)
        zncc_best = 1.0 - photo_best
        ok = (interior & unique & (zncc_best >= cfg.min_zncc) & textured & (photo_best < INVALID_COST)
              & torch.from_numpy(has_prior).to(dev))
        prior_t = torch.from_numpy(has_prior).to(dev)
        stats = {name: float((m & prior_t).float().mean()) for name, m in
                 (("prior", prior_t), ("interior", interior), ("unique", unique),
                  ("zncc", zncc_best >= cfg.min_zncc), ("textured", textured))}
        depth_np = torch.where(ok, depth, torch.full_like(depth, float("nan"))).cpu().numpy().astype(np.float32)
        return SweepResult(depth_np, zncc_best.cpu().numpy().astype(np.float32), ok.cpu().numpy(),
                           conf.cpu().numpy().astype(np.float32), stats)

    def _zncc_cost(self, depths: torch.Tensor, I_s: torch.Tensor, smask: Optional[torch.Tensor],
                   base: torch.Tensor, b: torch.Tensor, I_r: torch.Tensor, r_mean: torch.Tensor,
                   r_var: torch.Tensor) -> torch.Tensor:
        """1 - ZNCC of the reference against one source at the hypothesis ``depths`` (d, h, w);
        ``INVALID_COST`` where the window leaves the source, is masked or lacks texture."""
        cfg, k = self.cfg, self.cfg.window
        d, h, w = depths.shape
        Hs, Ws = I_s.shape[-2:]
        # point at depth z: A (z ray) + b  ->  homogeneous pixel  z * base + b
        hom = depths[:, None] * base[None] + b[None, :, None, None]  # (d, 3, h, w)
        z = hom[:, 2]
        u = hom[:, 0] / z.clamp_min(1e-6)
        v = hom[:, 1] / z.clamp_min(1e-6)
        inside = (z > 1e-6) & (u >= 0) & (u <= Ws - 1) & (v >= 0) & (v <= Hs - 1)
        grid = _norm_grid(u, v, Ws, Hs).reshape(1, d * h, w, 2)
        del hom, z, u, v
        warped = F.grid_sample(I_s, grid, mode="bilinear", padding_mode="border",
                               align_corners=False).reshape(d, 1, h, w)
        valid = inside.to(torch.float32)[:, None]
        if smask is not None:
            masked = F.grid_sample(smask, grid, mode="nearest", padding_mode="border",
                                   align_corners=False).reshape(d, 1, h, w)
            valid = valid * (1.0 - masked)
        del grid
        s_mean = _box(warped, k)
        s_var = (_box(warped * warped, k) - s_mean ** 2).clamp_min(0.0)
        cov = _box(warped * I_r, k) - s_mean * r_mean
        zncc = cov / torch.sqrt(s_var * r_var + 1e-6)
        ok = (_box(valid, k) > 0.999) & (s_var >= cfg.min_texture ** 2)
        return torch.where(ok, 1.0 - zncc, torch.full_like(zncc, INVALID_COST))[:, 0]

    # -----------------------------------------------------------------------------------------
    def geometric_check(self, ref: Keyframe, depth: np.ndarray, sources: Sequence[Keyframe],
                        src_depths: Sequence[np.ndarray], T_ref: np.ndarray, T_src: Sequence[np.ndarray],
                        return_residual: bool = False) -> tuple:
        """Forward-backward consistency of ``depth`` (reference grid) with every source's depth.

        Returns (number of consistent sources (h, w), final depth = mean of the reference depth
        and the consistent reprojected depths (NaN where no source agrees)); with
        ``return_residual`` also the mean relative depth disagreement with the sources that see
        the pixel (h, w; NaN where no source sees it).
        """
        cfg = self.cfg
        dev = self.device
        h, w = depth.shape
        Kr = np.asarray(ref.K, np.float64)
        d = torch.from_numpy(np.nan_to_num(depth, nan=0.0)).to(dev, torch.float64)
        has = torch.from_numpy(np.isfinite(depth)).to(dev)
        uu, vv = torch.meshgrid(torch.arange(w, device=dev, dtype=torch.float64),
                                torch.arange(h, device=dev, dtype=torch.float64), indexing="xy")
        Kr_t = torch.from_numpy(Kr).to(dev)
        Kr_inv = torch.linalg.inv(Kr_t)
        pix = torch.stack([uu, vv, torch.ones_like(uu)], 0).reshape(3, -1)
        Xr = (Kr_inv @ pix) * d.reshape(1, -1)
        # The relative-depth tolerance is given for a 640-pixel grid; coarser grids triangulate
        # proportionally worse (1 % at 640, 2 % at 320, at most 4x).
        rel_tol = cfg.geo_rel_depth * float(np.clip(640.0 / max(h, w), 1.0, 4.0))
        count = torch.zeros(h * w, dtype=torch.int64, device=dev)
        dsum = d.reshape(-1).clone()
        rsum = torch.zeros(h * w, dtype=torch.float64, device=dev)
        rcount = torch.zeros(h * w, dtype=torch.float64, device=dev)
        for s_kf, Ds, T_s in zip(sources, src_depths, T_src):
            hs, ws = Ds.shape
            Ks = torch.from_numpy(np.asarray(s_kf.K, np.float64)).to(dev)
            M = torch.from_numpy(invert_T(np.asarray(T_s, np.float64)) @ np.asarray(T_ref, np.float64)).to(dev)
            Xs = M[:3, :3] @ Xr + M[:3, 3:4]
            zs = Xs[2]
            ps = Ks @ (Xs / zs.clamp_min(1e-9))
            Dt = torch.from_numpy(np.nan_to_num(Ds, nan=0.0)).to(dev, torch.float64)[None, None]
            Vt = torch.from_numpy(np.isfinite(Ds) & (Ds > 0)).to(dev, torch.float64)[None, None]
            grid = _norm_grid(ps[0], ps[1], ws, hs).reshape(1, 1, -1, 2)
            ds = F.grid_sample(Dt, grid, mode="bilinear", padding_mode="zeros", align_corners=False).reshape(-1)
            vs = F.grid_sample(Vt, grid, mode="bilinear", padding_mode="zeros", align_corners=False).reshape(-1)
            Xs2 = torch.linalg.inv(Ks) @ torch.stack([ps[0], ps[1], torch.ones_like(ps[0])], 0) * ds[None]
            Minv = torch.linalg.inv(M)
            Xr2 = Minv[:3, :3] @ Xs2 + Minv[:3, 3:4]
            zr2 = Xr2[2]
            pr2 = Kr_t @ (Xr2 / zr2.clamp_min(1e-9))
            err = torch.sqrt((pr2[0] - pix[0]) ** 2 + (pr2[1] - pix[1]) ** 2)
            rel = (zr2 - d.reshape(-1)).abs() / d.reshape(-1).clamp_min(1e-9)
            good = (has.reshape(-1) & (zs > 0) & (vs > 0.999) & (zr2 > 0) & (err < cfg.geo_px)
                    & (rel < rel_tol))
            count += good.to(torch.int64)
            dsum += torch.where(good, zr2, torch.zeros_like(zr2))
            seen = has.reshape(-1) & (zs > 0) & (vs > 0.999) & (zr2 > 0) & torch.isfinite(rel)
            rsum += torch.where(seen, rel.clamp_max(1.0), torch.zeros_like(rel))
            rcount += seen.to(torch.float64)
        final = dsum / (count + 1).to(torch.float64)
        final = torch.where(count > 0, final, torch.full_like(final, float("nan")))
        resid = torch.where(rcount > 0, rsum / rcount.clamp_min(1.0), torch.full_like(rsum, float("nan")))
        out = (count.reshape(h, w).cpu().numpy(), final.reshape(h, w).cpu().numpy().astype(np.float32))
        return out + (resid.reshape(h, w).cpu().numpy(),) if return_residual else out

    # -----------------------------------------------------------------------------------------
    def refine(self, kfs: Sequence[Keyframe], poses: Optional[dict] = None, masks: Optional[dict] = None,
               only: Optional[Sequence[int]] = None) -> dict:
        """Refine the depth of every keyframe (or those in ``only``); returns ``{id: RefinedDepth}``.

        ``poses`` (by id) override ``T_world_cam`` (pass the corrected poses of an alignment).
        ``masks`` (by id, image resolution, True = ignore) exclude source pixels and reference pixels.
        """
        cfg = self.cfg
        if not cfg.enabled or len(kfs) < 2:
            return {}
        for kf in kfs:
            if kf.points_cam.ndim != 3 or kf.points_cam.shape[2] != 3:
                raise DataFormatError(f"keyframe {kf.id}: points_cam must be h x w x 3, got {kf.points_cam.shape}")
        pose_list = [np.asarray((poses or {}).get(kf.id, kf.T_world_cam), np.float64) for kf in kfs]
        targets = [i for i, kf in enumerate(kfs) if only is None or kf.id in set(only)]
        src_of = {i: select_sources(i, kfs, pose_list, cfg) for i in targets}
        needed = sorted(set(targets) | {j for i in targets for j in src_of[i]})
        src_all = {i: (src_of[i] if i in src_of else select_sources(i, kfs, pose_list, cfg)) for i in needed}
        sweeps: dict = {}
        for i in needed:
            srcs = src_all[i]
            if len(srcs) < cfg.min_consistent:
                continue
            sweeps[i] = self._sweep_one(kfs, i, srcs, pose_list, masks)
        out = {}
        for i in targets:
            kf = kfs[i]
            srcs = src_of[i]
            h, w = kf.points_cam.shape[:2]
            if i not in sweeps:
                out[kf.id] = RefinedDepth(kf.id, kf.depth, kf.points_cam.copy(), np.zeros((h, w), bool), None,
                                          np.zeros((h, w), np.int64), [kfs[j].id for j in srcs],
                                          {"reason": f"fewer than {cfg.min_consistent} usable sources"})
                continue
            sw = sweeps[i]
            src_depths = [sweeps[j].depth if j in sweeps else kfs[j].depth for j in srcs]
            count, final = self.geometric_check(kf, sw.depth, [kfs[j] for j in srcs], src_depths,
                                                pose_list[i], [pose_list[j] for j in srcs])
            replaced = sw.photometric_ok & (count >= cfg.min_consistent) & np.isfinite(final) & kf.valid
            n_mvs = int(replaced.sum())
            if cfg.prior_guard and replaced.any():
                # keep the prior wherever it agrees with the sources' depth at least as well as the
                # refined depth does (both judged against the same source depths)
                src_prior = [kfs[j].depth for j in srcs]
                srcT = [pose_list[j] for j in srcs]
                r_new = self.geometric_check(kf, final, [kfs[j] for j in srcs], src_prior, pose_list[i], srcT,
                                             return_residual=True)[2]
                r_old = self.geometric_check(kf, np.where(kf.valid, kf.depth, np.nan), [kfs[j] for j in srcs],
                                             src_prior, pose_list[i], srcT, return_residual=True)[2]
                with np.errstate(invalid="ignore"):
                    better = cv2.blur(np.nan_to_num(r_old - r_new).astype(np.float32), (5, 5)) > 0
                replaced &= better & np.isfinite(r_new) & np.isfinite(r_old)
            if masks and masks.get(kf.id) is not None:
                replaced &= ~mask_on_grid(kf, masks[kf.id])
            depth = np.where(replaced, final, kf.depth).astype(np.float32)
            pts = kf.points_cam.copy()
            new_pts = backproject_depth(np.where(replaced, final, np.nan), kf.K)
            pts[replaced] = new_pts[replaced]
            stats = {"sources": len(srcs), "photometric_ok": float(sw.photometric_ok.mean()),
                     "replaced": float(replaced.mean()), "kept_by_prior_guard": n_mvs - int(replaced.sum())}
            out[kf.id] = RefinedDepth(kf.id, depth, pts, replaced, sw, count, [kfs[j].id for j in srcs], stats)
            log.debug("mvs keyframe %d: %d sources, %.1f%% replaced", kf.id, len(srcs), 100 * stats["replaced"])
        return out

    def _sweep_one(self, kfs, i, srcs, pose_list, masks) -> SweepResult:
        if self._learned is not None:
            from recon_ros.refine.mvsnet import learned_sweep
            return learned_sweep(self._learned, kfs[i], [kfs[j] for j in srcs], pose_list[i],
                                 [pose_list[j] for j in srcs], self.device)
        return self.sweep(kfs[i], [kfs[j] for j in srcs], pose_list[i], [pose_list[j] for j in srcs], masks)


def _smooth_prior(d0: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """5x5 median of the log prior depth (removes per-pixel noise so that the hypotheses of a
    ZNCC window lie on a smooth surface); 1.0 where there is no prior."""
    if not ok.any():
        return np.ones_like(d0, dtype=np.float32)
    logd = np.where(ok, np.log(np.where(ok, d0, 1.0)), np.median(np.log(d0[ok]))).astype(np.float32)
    smooth = cv2.medianBlur(logd, 5)
    return np.where(ok, np.exp(smooth), 1.0).astype(np.float32)
