"""SIFT correspondences between keyframes, verified in 2D (essential matrix) and 3D (pointmaps).

Pipeline per keyframe pair (see the refine design, section 4.1):

1. SIFT on the full-resolution grey image (RootSIFT descriptors), keypoints in user masks dropped.
2. Mutual nearest neighbours with Lowe's ratio test.
3. Essential-matrix RANSAC on normalised image coordinates.
4. Each inlier is lifted into both keyframes' pointmaps (through ``pixel_map``, bilinear) and a
   3-point Sim(3) RANSAC with a loose threshold (a fraction of the pair's median depth) keeps the
   matches whose 3D endpoints agree up to one similarity transform.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from recon_ros.errors import UserInputError
from recon_ros.geometry.transforms import umeyama
from recon_ros.mapping.frame import Keyframe
from recon_ros.refine.schema import MatchingConfig

log = logging.getLogger(__name__)

SIFT_LAYERS = 3  # OpenCV's default nOctaveLayers: its contrast test is response * layers >= threshold


@dataclass
class Features:
    """Keypoints (N, 2) in full-resolution image pixels and RootSIFT descriptors (N, 128)."""

    uv: np.ndarray
    desc: np.ndarray
    response: Optional[np.ndarray] = None  # DoG contrast per keypoint (OpenCV's ``response``)

    def strong(self, contrast_threshold: float = 0.04) -> np.ndarray:
        """Descriptors of the keypoints that pass OpenCV's default contrast test (for retrieval:
        weak keypoints help matching but blur the bag-of-words)."""
        if self.response is None:
            return self.desc
        return self.desc[self.response * SIFT_LAYERS >= contrast_threshold]

    def __len__(self) -> int:
        return int(self.uv.shape[0])


@dataclass
class PairMatches:
    """Verified correspondences between keyframes ``a`` and ``b`` (ids).

    ``uv_a``/``uv_b`` are image pixels, ``X_a``/``X_b`` the lifted points in each keyframe's
    camera frame, ``conf`` a weight per match. ``T_b_a`` is the RANSAC Sim(3) taking ``a``'s
    camera frame into ``b``'s. ``kind`` is "temporal", "covisible" or "loop".
    """

    a: int
    b: int
    uv_a: np.ndarray
    uv_b: np.ndarray
    X_a: np.ndarray
    X_b: np.ndarray
    conf: np.ndarray
    T_b_a: np.ndarray
    n_putative: int
    kind: str = "covisible"

    def __len__(self) -> int:
        return int(self.uv_a.shape[0])


def to_grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def extract_features(rgb: np.ndarray, mask: Optional[np.ndarray] = None, max_features: int = 2000,
                     contrast_threshold: float = 0.04) -> Features:
    """SIFT keypoints and RootSIFT descriptors; ``mask`` (H, W bool, True = ignore) removes keypoints."""
    grey = to_grey(rgb)
    sift = cv2.SIFT_create(nfeatures=int(max_features), contrastThreshold=float(contrast_threshold))
    cv_mask = None
    if mask is not None:
        if mask.shape != grey.shape:
            raise UserInputError(f"mask has shape {mask.shape} but the keyframe image is {grey.shape}")
        cv_mask = np.where(mask, 0, 255).astype(np.uint8)
    kps, desc = sift.detectAndCompute(grey, cv_mask)
    if desc is None or len(kps) == 0:
        return Features(np.zeros((0, 2)), np.zeros((0, 128), np.float32))
    uv = np.array([k.pt for k in kps], dtype=np.float64)
    response = np.array([k.response for k in kps], dtype=np.float64)
    # RootSIFT: L1-normalise, square root (then unit L2 norm by construction).
    desc = desc.astype(np.float32)
    desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-8)
    desc = np.sqrt(desc)
    return Features(uv, desc, response)


SQ_DIST_RESOLUTION = 1e-5  # squared descriptor distances below this are rounding noise


def mutual_ratio_matches(d1: np.ndarray, d2: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i1, i2) of mutual nearest neighbours passing the ratio test in both directions,
    and the ratio (nearest / second-nearest distance) of each kept match."""
    if len(d1) < 2 or len(d2) < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    # squared distances of unit descriptors; a dot product in float32 is exact to about 1e-6,
    # so squared distances closer than SQ_DIST_RESOLUTION are indistinguishable: two identical
    # candidates give ratio ~1 (ambiguous) whatever the rounding of the product
    dist = np.maximum(2.0 - 2.0 * (d1 @ d2.T), 0.0)
    top2_12 = np.argpartition(dist, 1, axis=1)[:, :2]
    d12 = np.take_along_axis(dist, top2_12, axis=1)
    order = np.argsort(d12, axis=1)
    nn12 = np.take_along_axis(top2_12, order, axis=1)[:, 0]
    d12 = np.sort(d12, axis=1)
    nn21 = np.argmin(dist, axis=0)
    d21 = np.sort(np.partition(dist, 1, axis=0)[:2], axis=0)
    i1 = np.arange(len(d1))
    mutual = nn21[nn12] == i1
    eps = SQ_DIST_RESOLUTION
    r12 = np.sqrt((d12[:, 0] + eps) / (d12[:, 1] + eps))
    r21 = np.sqrt((d21[0, nn12] + eps) / (d21[1, nn12] + eps))
    keep = mutual & (r12 < ratio) & (r21 < ratio)
    return np.stack([i1[keep], nn12[keep]], axis=1), np.maximum(r12, r21)[keep]


def sample_pointmap(kf: Keyframe, uv_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lift image pixels into the keyframe's pointmap (camera frame), bilinearly.

    Returns (points (N, 3), ok (N,)). A pixel is lifted only when the four pointmap neighbours
    are valid and the pixel lies inside the pointmap grid (outside a model crop: not ok).
    """
    uvm = kf.pixel_map.to_model(np.asarray(uv_image, dtype=np.float64).reshape(-1, 2))
    h, w = kf.points_cam.shape[:2]
    x, y = uvm[:, 0], uvm[:, 1]
    inside = (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)
    x0 = np.clip(np.floor(x), 0, w - 2).astype(np.int64)
    y0 = np.clip(np.floor(y), 0, h - 2).astype(np.int64)
    fx = np.clip(x - x0, 0.0, 1.0)[:, None]
    fy = np.clip(y - y0, 0.0, 1.0)[:, None]
    P = kf.points_cam
    V = kf.valid & np.all(np.isfinite(P), axis=-1)
    ok = inside & V[y0, x0] & V[y0, x0 + 1] & V[y0 + 1, x0] & V[y0 + 1, x0 + 1]
    pts = ((1 - fx) * (1 - fy) * P[y0, x0] + fx * (1 - fy) * P[y0, x0 + 1]
           + (1 - fx) * fy * P[y0 + 1, x0] + fx * fy * P[y0 + 1, x0 + 1]).astype(np.float64)
    ok &= np.all(np.isfinite(pts), axis=1) & (pts[:, 2] > 0)
    return pts, ok


def sample_confidence(kf: Keyframe, uv_image: np.ndarray) -> np.ndarray:
    uvm = kf.pixel_map.to_model(np.asarray(uv_image, dtype=np.float64).reshape(-1, 2))
    h, w = kf.confidence.shape
    xi = np.clip(np.rint(uvm[:, 0]), 0, w - 1).astype(np.int64)
    yi = np.clip(np.rint(uvm[:, 1]), 0, h - 1).astype(np.int64)
    c = kf.confidence[yi, xi].astype(np.float64)
    c = np.where(np.isfinite(c) & (c > 0), c, 0.0)
    return c / (1.0 + c)


def umeyama_batch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Similarity transforms (B, 4, 4) with dst ~ T(src) for B point sets (B, n, 3), unit weights."""
    mu_s = src.mean(axis=1, keepdims=True)
    mu_d = dst.mean(axis=1, keepdims=True)
    xs = src - mu_s
    xd = dst - mu_d
    cov = np.einsum("bni,bnj->bij", xd, xs) / src.shape[1]
    U, D, Vt = np.linalg.svd(cov)
    det = np.linalg.det(U) * np.linalg.det(Vt)
    S = np.ones_like(D)
    S[:, 2] = np.where(det < 0, -1.0, 1.0)
    R = np.einsum("bij,bj,bjk->bik", U, S, Vt)
    var_s = np.sum(xs ** 2, axis=(1, 2)) / src.shape[1]
    s = np.sum(D * S, axis=1) / np.maximum(var_s, 1e-12)
    t = mu_d[:, 0] - s[:, None] * np.einsum("bij,bj->bi", R, mu_s[:, 0])
    T = np.zeros((src.shape[0], 4, 4))
    T[:, :3, :3] = s[:, None, None] * R
    T[:, :3, 3] = t
    T[:, 3, 3] = 1.0
    return T


def sim3_ransac(Xa: np.ndarray, Xb: np.ndarray, threshold: float, iterations: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """3-point RANSAC + Umeyama refit: returns (T_b_a 4x4, inlier mask)."""
    n = len(Xa)
    if n < 3:
        return np.eye(4), np.zeros(n, bool)
    samples = np.argsort(rng.random((iterations, n)), axis=1)[:, :3]
    T = umeyama_batch(Xa[samples], Xb[samples])
    pred = np.einsum("bij,nj->bni", T[:, :3, :3], Xa) + T[:, None, :3, 3]
    err = np.linalg.norm(pred - Xb[None], axis=2)
    inl = err < threshold
    best = int(np.argmax(inl.sum(axis=1)))
    mask = inl[best]
    if mask.sum() < 3:
        return T[best], mask
    for _ in range(2):  # refit on the inliers, re-score
        T_fit = umeyama(Xa[mask], Xb[mask], with_scale=True)
        err = np.linalg.norm(Xa @ T_fit[:3, :3].T + T_fit[:3, 3] - Xb, axis=1)
        new = err < threshold
        if new.sum() < 3:
            break
        mask = new
    return umeyama(Xa[mask], Xb[mask], with_scale=True), mask


def verify_pair(kf_a: Keyframe, kf_b: Keyframe, fa: Features, fb: Features, cfg: MatchingConfig,
                kind: str = "covisible", seed: int = 0) -> Optional[PairMatches]:
    """Match two keyframes and verify the matches; None when too few survive."""
    need = cfg.min_inliers_loop if kind == "loop" else cfg.min_inliers
    pairs, ratios = mutual_ratio_matches(fa.desc, fb.desc, cfg.ratio)
    n_put = len(pairs)
    if n_put < max(8, need):
        return None
    ua = fa.uv[pairs[:, 0]]
    ub = fb.uv[pairs[:, 1]]
    na = _normalise(ua, kf_a.K_image)
    nb = _normalise(ub, kf_b.K_image)
    f_mean = 0.25 * (kf_a.K_image[0, 0] + kf_a.K_image[1, 1] + kf_b.K_image[0, 0] + kf_b.K_image[1, 1])
    try:
        E, emask = cv2.findEssentialMat(na, nb, np.eye(3), method=cv2.RANSAC, prob=cfg.ransac_confidence,
                                        threshold=cfg.ransac_px / f_mean)
    except cv2.error:
        # OpenCV >= 5.1 raises on degenerate samples (no baseline: the same view twice). The
        # epipolar check says nothing then; the Sim(3) RANSAC on the pointmaps below verifies.
        E, emask = np.eye(3), np.ones((len(na), 1), np.uint8)
    if E is None or emask is None:
        return None
    keep = emask.ravel().astype(bool)
    if keep.sum() < need:
        return None
    ua, ub, ratios = ua[keep], ub[keep], ratios[keep]
    Xa, oka = sample_pointmap(kf_a, ua)
    Xb, okb = sample_pointmap(kf_b, ub)
    ok = oka & okb
    if ok.sum() < need:
        return None
    ua, ub, Xa, Xb, ratios = ua[ok], ub[ok], Xa[ok], Xb[ok], ratios[ok]
    med = 0.5 * (np.median(Xa[:, 2]) + np.median(Xb[:, 2]))
    rng = np.random.default_rng(seed)
    T_b_a, inl = sim3_ransac(Xa, Xb, cfg.sim3_threshold * med, cfg.sim3_iterations, rng)
    if inl.sum() < need:
        return None
    ua, ub, Xa, Xb, ratios = ua[inl], ub[inl], Xa[inl], Xb[inl], ratios[inl]
    conf = sample_confidence(kf_a, ua) * sample_confidence(kf_b, ub) * (1.0 - 0.5 * ratios)
    return PairMatches(kf_a.id, kf_b.id, ua, ub, Xa, Xb, conf, T_b_a, n_put, kind)


def _normalise(uv: np.ndarray, K: np.ndarray) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    x = (uv[:, 0] - K[0, 2] - K[0, 1] * (uv[:, 1] - K[1, 2]) / K[1, 1]) / K[0, 0]
    y = (uv[:, 1] - K[1, 2]) / K[1, 1]
    return np.stack([x, y], axis=1)


__all__ = ["Features", "PairMatches", "extract_features", "mutual_ratio_matches", "sample_pointmap",
           "verify_pair", "sim3_ransac", "umeyama_batch"]
