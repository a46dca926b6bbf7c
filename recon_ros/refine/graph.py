"""The keyframe pair graph: covisibility from poses, candidate pairs, verified edges.

Edges of a keyframe (refine design, section 4.2): its previous ``temporal_neighbours``
keyframes, the ``covisible_neighbours`` keyframes of highest frustum overlap under the current
poses, and loop-closure candidates from appearance retrieval (:mod:`.retrieval`). Every pair is
matched and verified by :func:`.matching.verify_pair`; features and verified edges are cached
per keyframe id so that periodic runs only match new pairs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from recon_ros.geometry.transforms import invert_T
from recon_ros.mapping.frame import Keyframe
from recon_ros.refine.matching import Features, PairMatches, extract_features, sample_pointmap, verify_pair
from recon_ros.refine.retrieval import BowIndex
from recon_ros.refine.schema import GraphConfig, MatchingConfig

log = logging.getLogger(__name__)


def subsampled_points(kf: Keyframe, stride: int) -> np.ndarray:
    """Valid pointmap points (P, 3) in the keyframe's camera frame on a ``stride`` grid."""
    P = kf.points_cam[::stride, ::stride].reshape(-1, 3)
    V = kf.valid[::stride, ::stride].reshape(-1) & np.all(np.isfinite(P), axis=1)
    return P[V].astype(np.float64)


def mask_on_grid(kf: Keyframe, mask: np.ndarray) -> np.ndarray:
    """An image-resolution mask (True = ignore) sampled on the keyframe's pointmap grid (nearest)."""
    h, w = kf.points_cam.shape[:2]
    uu, vv = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    uv = kf.pixel_map.to_image(np.stack([uu, vv], -1))
    H, W = mask.shape
    xi = np.clip(np.rint(uv[..., 0]), 0, W - 1).astype(np.int64)
    yi = np.clip(np.rint(uv[..., 1]), 0, H - 1).astype(np.int64)
    return np.asarray(mask, bool)[yi, xi]


def depth_lookup(kfs: Sequence[Keyframe]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked depth maps (N, h, w) (NaN invalid) and intrinsics (N, 3, 3); all pointmaps must share a size."""
    D = np.stack([kf.depth for kf in kfs]).astype(np.float64)
    K = np.stack([np.asarray(kf.K, dtype=np.float64) for kf in kfs])
    return D, K


def project_into(points_world: np.ndarray, T_world_cams: np.ndarray, Ks: np.ndarray, depths: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Project world points (P, 3) into N cameras.

    Returns (z (N, P) point depth in each camera, observed depth (N, P) at the nearest pixel
    (NaN outside the image or invalid), u (N, P), v (N, P)).
    """
    T_cw = invert_T(T_world_cams)
    Xc = np.einsum("nij,pj->npi", T_cw[:, :3, :3], points_world) + T_cw[:, None, :3, 3]
    z = Xc[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = Ks[:, None, 0, 0] * Xc[..., 0] / z + Ks[:, None, 0, 1] * Xc[..., 1] / z + Ks[:, None, 0, 2]
        v = Ks[:, None, 1, 1] * Xc[..., 1] / z + Ks[:, None, 1, 2]
    n, h, w = depths.shape
    ui = np.rint(np.nan_to_num(u, nan=-1.0, posinf=-1.0, neginf=-1.0)).astype(np.int64)
    vi = np.rint(np.nan_to_num(v, nan=-1.0, posinf=-1.0, neginf=-1.0)).astype(np.int64)
    inside = (z > 1e-9) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    flat = np.arange(n)[:, None] * (h * w) + np.clip(vi, 0, h - 1) * w + np.clip(ui, 0, w - 1)
    obs = np.where(inside, depths.reshape(-1)[flat], np.nan)
    return z, obs, u, v


def frustum_overlap(kfs: Sequence[Keyframe], poses: Optional[Sequence[np.ndarray]] = None, stride: int = 8,
                    depth_tol: float = 0.15) -> np.ndarray:
    """(N, N) matrix: fraction of keyframe i's points seen by keyframe j with consistent depth."""
    n = len(kfs)
    poses_arr = np.stack([np.asarray(p if p is not None else kf.T_world_cam, dtype=np.float64)
                          for p, kf in zip(poses if poses is not None else [None] * n, kfs)])
    D, K = depth_lookup(kfs)
    out = np.zeros((n, n))
    for i, kf in enumerate(kfs):
        P = subsampled_points(kf, stride)
        if len(P) == 0:
            continue
        Pw = P @ poses_arr[i, :3, :3].T + poses_arr[i, :3, 3]
        z, obs, _, _ = project_into(Pw, poses_arr, K, D)
        with np.errstate(invalid="ignore"):
            good = np.isfinite(obs) & (np.abs(z - obs) < depth_tol * obs)
        out[i] = good.mean(axis=1)
    np.fill_diagonal(out, 0.0)
    return out


def candidate_pairs(ids: Sequence[int], overlap: np.ndarray, cfg: GraphConfig,
                    loops: Sequence[tuple[int, int, float]] = ()) -> dict[tuple[int, int], str]:
    """Pairs (a, b) with a before b (in ``ids`` order) mapped to their kind."""
    pos = {kf_id: p for p, kf_id in enumerate(ids)}
    pairs: dict[tuple[int, int], str] = {}
    n = len(ids)
    for p in range(n):
        for q in range(max(0, p - cfg.temporal_neighbours), p):
            pairs[(ids[q], ids[p])] = "temporal"
    if cfg.covisible_neighbours > 0 and n > 1:
        sym = np.minimum(overlap, overlap.T)
        order = np.argsort(-sym, axis=1)[:, :cfg.covisible_neighbours]
        for p in range(n):
            for q in order[p]:
                if q != p and sym[p, q] >= cfg.min_overlap:
                    a, b = (ids[q], ids[p]) if q < p else (ids[p], ids[q])
                    # far apart in time: a loop closure, whichever way it was found
                    pairs.setdefault((a, b), "loop" if abs(int(q) - p) >= cfg.loop_min_gap else "covisible")
    for a, b, _ in loops:
        key = (a, b) if pos[a] < pos[b] else (b, a)
        if key not in pairs:
            pairs[key] = "loop" if abs(pos[a] - pos[b]) >= cfg.loop_min_gap else "covisible"
    return pairs


def relift(e: PairMatches, kf_a: Keyframe, kf_b: Keyframe) -> PairMatches:
    """The edge with its 3D endpoints read again from the keyframes' current pointmaps (refined
    depth replaces the depth the matches were verified on); matches no longer lifted are dropped."""
    Xa, oka = sample_pointmap(kf_a, e.uv_a)
    Xb, okb = sample_pointmap(kf_b, e.uv_b)
    ok = oka & okb
    return replace(e, uv_a=e.uv_a[ok], uv_b=e.uv_b[ok], X_a=Xa[ok], X_b=Xb[ok], conf=e.conf[ok])


@dataclass
class GraphStats:
    pairs_tried: int = 0
    verified: int = 0  # pairs matched and verified in this build (the others came from the cache)
    edges: int = 0
    loop_edges: int = 0
    matches: int = 0


@dataclass
class KeyframeGraphBuilder:
    """Caches SIFT features, the retrieval index and verified edges across periodic runs."""

    matching: MatchingConfig = field(default_factory=MatchingConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    features: dict = field(default_factory=dict)  # id -> Features
    edges: dict = field(default_factory=dict)  # (a, b) -> Optional[PairMatches]
    bow: Optional[BowIndex] = None
    vocabulary_keyframes: int = 0  # keyframes the vocabulary was learnt from

    def features_of(self, kf: Keyframe, mask: Optional[np.ndarray] = None) -> Features:
        if kf.id not in self.features:
            self.features[kf.id] = extract_features(kf.rgb, mask, self.matching.max_features,
                                                   self.matching.contrast_threshold)
        return self.features[kf.id]

    def forget(self, keep_ids: Sequence[int]) -> None:
        keep = set(keep_ids)
        self.features = {k: v for k, v in self.features.items() if k in keep}
        self.edges = {k: v for k, v in self.edges.items() if k[0] in keep and k[1] in keep}
        if self.bow is not None:
            self.bow.counts = {k: v for k, v in self.bow.counts.items() if k in keep}

    def loop_candidates(self, kfs: Sequence[Keyframe]) -> list[tuple[int, int, float]]:
        if self.graph.loop_candidates <= 0 or len(kfs) <= self.graph.loop_min_gap:
            return []
        # the vocabulary is learnt from the keyframes at hand and learnt again whenever their
        # number has doubled, so that later parts of a sequence are described as well
        if self.bow is None or len(kfs) >= 2 * self.vocabulary_keyframes:
            bow = BowIndex(vocabulary_size=self.graph.vocabulary_size)
            if not bow.build_vocabulary([self.features[kf.id].strong() for kf in kfs]):
                return []
            self.bow = bow
            self.vocabulary_keyframes = len(kfs)
        for kf in kfs:
            self.bow.add(kf.id, self.features[kf.id].strong())
        order = {kf.id: p for p, kf in enumerate(kfs)}
        return self.bow.candidates(order, self.graph.loop_candidates, self.graph.loop_min_gap,
                                   self.graph.min_retrieval_score)

    def build(self, kfs: Sequence[Keyframe], poses: Optional[Sequence[np.ndarray]] = None,
              masks: Optional[dict] = None) -> tuple[list[PairMatches], np.ndarray, GraphStats]:
        """Verified edges among ``kfs`` (in time order), the overlap matrix, and counts."""
        masks = masks or {}
        for kf in kfs:
            self.features_of(kf, masks.get(kf.id))
        overlap = frustum_overlap(kfs, poses, depth_tol=self.graph.overlap_depth_tol)
        loops = self.loop_candidates(kfs)
        pairs = candidate_pairs([kf.id for kf in kfs], overlap, self.graph, loops)
        by_id = {kf.id: kf for kf in kfs}
        stats = GraphStats(pairs_tried=len(pairs))
        edges = []
        for (a, b), kind in sorted(pairs.items()):
            key = (a, b)
            if key not in self.edges:
                stats.verified += 1
                self.edges[key] = verify_pair(by_id[a], by_id[b], self.features[a], self.features[b],
                                              self.matching, kind=kind, seed=(a * 7919 + b) % (2 ** 31))
            e = self.edges[key]
            if e is not None:
                e = relift(e, by_id[a], by_id[b])
                edges.append(e)
                stats.matches += len(e)
                stats.loop_edges += int(e.kind == "loop")
        stats.edges = len(edges)
        log.info("keyframe graph: %d pairs tried (%d verified, %d cached), %d edges (%d loop), %d matches",
                 stats.pairs_tried, stats.verified, stats.pairs_tried - stats.verified, stats.edges,
                 stats.loop_edges, stats.matches)
        return edges, overlap, stats
