"""Relocalization: find a lost camera again among every keyframe of the map.

The :class:`KeyframeDatabase` keeps, for each keyframe a frontend hands it, SIFT keypoints
lifted to 3D with the keyframe's depth (camera frame), their RootSIFT descriptors, the
keyframe's pose and its depth and grey image at tracking resolution (enough to rebuild a
tracking pyramid). A lost frame is relocalized in three steps:

1. **retrieval**: the frame's SIFT descriptors are ranked against every keyframe with the
   online bag of words of :mod:`recon_ros.refine.retrieval` (learnt from the database's
   descriptors once it holds ``vocabulary_keyframes`` keyframes, again whenever it has
   doubled, from at most 6,000 sampled descriptors); the best ``candidates`` keyframes are
   verified, best first;
2. **PnP-RANSAC**: mutual ratio-test matches between the frame's keypoints (2D) and the
   candidate's lifted keypoints (3D, world frame) give a pose by OpenCV's ``solvePnPRansac``
   (P3P hypotheses, Levenberg-Marquardt refinement on the inliers); it needs ``min_inliers``
   inliers and ``min_inlier_ratio`` of the matches;
3. **dense verification** by the caller (the RGB-D frontend refines the PnP pose with its
   point-to-plane ICP against the candidate's pyramid and applies its tracking checks).

Verification stops after ``time_budget_ms`` (a candidate in progress is finished), so a lost
frame costs a bounded time on the worker thread; the next frame tries again.
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional

import cv2
import numpy as np

from recon_ros.geometry.transforms import invert_T, rotvec_to_matrix, transform_points
from recon_ros.mapping.schema import RelocalizationConfig
from recon_ros.mapping.tracking import downsample_image
from recon_ros.refine.matching import Features, extract_features, mutual_ratio_matches
from recon_ros.refine.retrieval import BowIndex

log = logging.getLogger(__name__)

#: descriptors sampled for learning a vocabulary, in all (bounds the k-means cost)
VOCABULARY_SAMPLE = 6_000
#: the array fields of a :class:`DatabaseEntry`, as saved
_ENTRY_ARRAYS = ("X_cam", "uv", "desc", "retrieval_desc")


@dataclass
class DatabaseEntry:
    """One keyframe of the relocalization database (poses in the frontend's world)."""

    id: int
    stamp_ns: int
    T_world_cam: np.ndarray
    X_cam: np.ndarray  # (N, 3) float32 keypoints lifted with the keyframe's depth
    uv: np.ndarray  # (N, 2) float32 image pixels of the same keypoints
    desc: np.ndarray  # (N, 128) uint8 RootSIFT (times 255, see quantise())
    retrieval_desc: np.ndarray  # (M, 128) uint8: all strong keypoints (with or without depth)
    payload: dict = field(default_factory=dict)  # what the frontend needs to verify densely

    @property
    def nbytes(self) -> int:
        n = self.X_cam.nbytes + self.uv.nbytes + self.desc.nbytes + self.retrieval_desc.nbytes
        return n + sum(getattr(v, "nbytes", 0) for v in self.payload.values())


@dataclass
class RelocResult:
    """Outcome of one relocalization attempt."""

    success: bool
    T_world_cam: Optional[np.ndarray] = None
    keyframe_id: Optional[int] = None
    score: float = 0.0  # retrieval score of the accepted keyframe
    n_matches: int = 0
    n_inliers: int = 0
    tried: int = 0  # candidates verified
    ms: float = 0.0
    reason: str = ""  # why it failed (or how it succeeded)
    entry: Optional[DatabaseEntry] = None


def quantise(desc: np.ndarray) -> np.ndarray:
    """RootSIFT descriptors (components in [0, 1]) stored as uint8: a quarter of the memory."""
    return np.clip(np.rint(np.asarray(desc, np.float32) * 255.0), 0, 255).astype(np.uint8)


def dequantise(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * np.float32(1.0 / 255.0)


def image_features(rgb: np.ndarray, cfg: RelocalizationConfig) -> Features:
    """SIFT of an image reduced by an integer factor to at most ``feature_width``; keypoints
    are returned in full-resolution pixels."""
    f = max(1, math.ceil(rgb.shape[1] / cfg.feature_width))
    small = downsample_image(rgb, f) if f > 1 else rgb
    feats = extract_features(small, max_features=cfg.max_features)
    if f > 1 and len(feats):
        feats.uv = (feats.uv + 0.5) * f - 0.5
    return feats


def lift_keypoints(uv: np.ndarray, depth: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame 3D points of image keypoints from a depth image (NaN invalid): the nearest
    pixel's reading, kept only where its 3x3 neighbourhood agrees within 2 % (no depth edge)."""
    h, w = depth.shape
    ui = np.clip(np.rint(uv[:, 0]).astype(np.intp), 1, w - 2)
    vi = np.clip(np.rint(uv[:, 1]).astype(np.intp), 1, h - 2)
    patch = np.stack([depth[vi + dv, ui + du] for dv in (-1, 0, 1) for du in (-1, 0, 1)], axis=1)
    z = depth[vi, ui]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(z) & (z > 0) & np.all(np.abs(patch - z[:, None]) <= 0.02 * z[:, None], axis=1)
    z = np.where(ok, z, 1.0)
    x = (uv[:, 0] - K[0, 2]) / K[0, 0] * z
    y = (uv[:, 1] - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], axis=1).astype(np.float32), ok


def pnp_pose(X_world: np.ndarray, uv: np.ndarray, K: np.ndarray, reprojection_px: float,
             seed: int = 0) -> tuple[Optional[np.ndarray], np.ndarray]:
    """(T_world_cam or None, inlier mask) from 3D-2D matches by PnP-RANSAC + LM refinement."""
    inl = np.zeros(len(uv), dtype=bool)
    if len(uv) < 6:
        return None, inl
    cv2.setRNGSeed(seed)
    ok, rvec, tvec, idx = cv2.solvePnPRansac(
        X_world.astype(np.float64), uv.astype(np.float64), np.asarray(K, np.float64), None,
        iterationsCount=300, reprojectionError=float(reprojection_px), confidence=0.999,
        flags=cv2.SOLVEPNP_AP3P)
    if not ok or idx is None or len(idx) < 6:
        return None, inl
    inl[idx.ravel()] = True
    rvec, tvec = cv2.solvePnPRefineLM(X_world[inl].astype(np.float64), uv[inl].astype(np.float64),
                                      np.asarray(K, np.float64), None, rvec, tvec)
    T_cam_world = np.eye(4)
    T_cam_world[:3, :3] = rotvec_to_matrix(rvec.ravel())
    T_cam_world[:3, 3] = tvec.ravel()
    if not np.all(np.isfinite(T_cam_world)):
        return None, np.zeros(len(uv), dtype=bool)
    return invert_T(T_cam_world), inl


#: a dense verifier: (PnP pose, candidate entry) -> (refined pose, None) or (None, why not)
Verifier = Callable[[np.ndarray, DatabaseEntry], tuple[Optional[np.ndarray], Optional[str]]]


class KeyframeDatabase:
    """Every keyframe a frontend tracked against, for relocalization (see the module
    docstring). One owner: the frontend's worker thread."""

    def __init__(self, config: Optional[RelocalizationConfig] = None) -> None:
        self.config = config if config is not None else RelocalizationConfig()
        self.reset()

    def reset(self) -> None:
        self._entries: OrderedDict[int, DatabaseEntry] = OrderedDict()
        self._bow: Optional[BowIndex] = None
        self._bow_built_on = 0
        self._counts = dict(attempts=0, successes=0, candidates_verified=0, vocabularies=0)
        self._last_ms = 0.0
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, kf_id: int) -> bool:
        return kf_id in self._entries

    def entry(self, kf_id: int) -> DatabaseEntry:
        return self._entries[kf_id]

    def entries(self) -> list[DatabaseEntry]:
        """Every entry, oldest first."""
        return list(self._entries.values())

    def stats(self) -> dict:
        out: dict = {f"reloc_{k}": v for k, v in self._counts.items()}
        out["reloc_keyframes"] = len(self._entries)
        out["reloc_bytes"] = self._bytes
        out["reloc_last_ms"] = round(self._last_ms, 3)
        return out

    # ------------------------------------------------------------------ building
    def add(self, kf_id: int, stamp_ns: int, T_world_cam: np.ndarray, rgb: np.ndarray,
            depth: np.ndarray, K: np.ndarray, payload: Optional[dict] = None,
            features: Optional[Features] = None) -> DatabaseEntry:
        """Index a keyframe: ``depth`` (metres, NaN invalid) registered to ``rgb`` with
        intrinsics ``K``; ``payload`` is kept for the frontend's dense verification."""
        feats = features if features is not None else image_features(rgb, self.config)
        X, ok = lift_keypoints(feats.uv, depth, K) if len(feats) else (np.zeros((0, 3), np.float32),
                                                                         np.zeros(0, bool))
        e = DatabaseEntry(id=kf_id, stamp_ns=stamp_ns, T_world_cam=np.array(T_world_cam, np.float64),
                          X_cam=X[ok], uv=feats.uv[ok].astype(np.float32),
                          desc=quantise(feats.desc[ok]), retrieval_desc=quantise(feats.strong()),
                          payload=dict(payload or {}))
        self._entries[kf_id] = e
        self._bytes += e.nbytes
        if self._bow is not None:
            self._bow.add(kf_id, dequantise(e.retrieval_desc))
        while len(self._entries) > self.config.max_keyframes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes
            if self._bow is not None:
                self._bow.counts.pop(old.id, None)
        self._vocabulary()  # learnt while tracking works, not when a lost frame is waiting
        return e

    def _vocabulary(self) -> Optional[BowIndex]:
        """The bag of words over the database, learnt (again) when it has doubled."""
        n = len(self._entries)
        if n < self.config.vocabulary_keyframes:
            return None
        if self._bow is None or n >= 2 * self._bow_built_on:
            per_kf = max(16, VOCABULARY_SAMPLE // n)
            bow = BowIndex(vocabulary_size=self.config.vocabulary_size, sample_per_keyframe=per_kf)
            if bow.build_vocabulary([dequantise(e.retrieval_desc) for e in self._entries.values()]):
                for e in self._entries.values():
                    bow.add(e.id, dequantise(e.retrieval_desc))
                self._bow, self._bow_built_on = bow, n
                self._counts["vocabularies"] += 1
                log.debug("relocalization vocabulary learnt from %d keyframes", n)
        return self._bow

    # ------------------------------------------------------------------ saving
    def export_arrays(self) -> dict[str, np.ndarray]:
        """The whole database as named arrays (for one ``.npz``; no pickled objects)."""
        entries = list(self._entries.values())
        out: dict[str, np.ndarray] = {
            "ids": np.array([e.id for e in entries], np.int64),
            "stamps": np.array([e.stamp_ns for e in entries], np.int64),
            "poses": np.array([e.T_world_cam for e in entries], np.float64).reshape(-1, 4, 4)}
        for e in entries:
            for name in _ENTRY_ARRAYS:
                out[f"{e.id}/{name}"] = getattr(e, name)
            for name, value in e.payload.items():
                out[f"{e.id}/payload/{name}"] = np.asarray(value)
        return out

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the content by what :meth:`export_arrays` wrote (checked first: a
        malformed set raises ValueError and leaves the database as it was)."""
        ids, stamps, poses = (np.asarray(arrays[k]) for k in ("ids", "stamps", "poses"))
        if not (ids.ndim == 1 and stamps.shape == ids.shape and poses.shape == (len(ids), 4, 4)):
            raise ValueError("relocalization database: ids, stamps and poses disagree")
        entries = []
        for i, kf_id in enumerate(ids.tolist()):
            fields = {name: np.asarray(arrays[f"{kf_id}/{name}"]) for name in _ENTRY_ARRAYS}
            n = len(fields["X_cam"])
            if (fields["X_cam"].shape != (n, 3) or fields["uv"].shape != (n, 2)
                    or fields["desc"].shape != (n, 128) or fields["retrieval_desc"].shape[1:] != (128,)):
                raise ValueError(f"relocalization database: keyframe {kf_id} is malformed")
            prefix = f"{kf_id}/payload/"
            payload = {k[len(prefix):]: np.asarray(v) for k, v in arrays.items() if k.startswith(prefix)}
            entries.append(DatabaseEntry(id=int(kf_id), stamp_ns=int(stamps[i]),
                                         T_world_cam=np.array(poses[i], np.float64), payload=payload,
                                         **fields))
        self.reset()
        for e in entries:
            self._entries[e.id] = e
            self._bytes += e.nbytes
        self._vocabulary()

    # ------------------------------------------------------------------ querying
    def rank(self, feats: Features, k: int, allowed: Optional[Callable[[int], bool]] = None
             ) -> list[tuple[int, float]]:
        """The ``k`` best keyframes for a frame's features: (id, retrieval score), best first,
        among those ``allowed`` accepts (all by default). Before a vocabulary exists, the
        newest keyframes (score 0)."""
        bow = self._vocabulary()
        if bow is None:
            ranked = [(i, 0.0) for i in reversed(self._entries)]
        else:
            ranked = bow.query(feats.strong(), len(self._entries) if allowed is not None else k)
        if allowed is not None:
            ranked = [(i, sc) for i, sc in ranked if allowed(i)]
        return ranked[:k]

    def relocalize(self, rgb: np.ndarray, K: np.ndarray, verify: Optional[Verifier] = None,
                   features: Optional[Features] = None,
                   allowed: Optional[Callable[[int], bool]] = None) -> RelocResult:
        """Find the pose of a lost frame (see the module docstring), against the keyframes
        ``allowed`` accepts (all by default)."""
        cfg = self.config
        t0 = time.perf_counter()
        self._counts["attempts"] += 1
        res = RelocResult(success=False)
        try:
            if not self._entries:
                res.reason = "no keyframes to relocalize against"
                return res
            feats = features if features is not None else image_features(rgb, cfg)
            if len(feats) < cfg.min_inliers:
                res.reason = f"only {len(feats)} SIFT features in the frame"
                return res
            desc = feats.desc.astype(np.float32)
            why = []
            for kf_id, score in self.rank(feats, cfg.candidates, allowed):
                if res.tried and (time.perf_counter() - t0) * 1e3 > cfg.time_budget_ms:
                    why.append("time budget spent")
                    break
                e = self._entries[kf_id]
                res.tried += 1
                self._counts["candidates_verified"] += 1
                m, _ = mutual_ratio_matches(desc, dequantise(e.desc), cfg.ratio)
                if len(m) < cfg.min_inliers:
                    why.append(f"kf {kf_id}: {len(m)} matches")
                    continue
                Xw = transform_points(e.T_world_cam, e.X_cam[m[:, 1]].astype(np.float64))
                T, inl = pnp_pose(Xw, feats.uv[m[:, 0]], K, cfg.reprojection_px * max(
                    1, math.ceil(rgb.shape[1] / cfg.feature_width)), seed=kf_id)
                n_in = int(np.count_nonzero(inl))
                if T is None or n_in < cfg.min_inliers or n_in < cfg.min_inlier_ratio * len(m):
                    why.append(f"kf {kf_id}: {n_in}/{len(m)} PnP inliers")
                    continue
                if verify is not None:
                    T, fail = verify(T, e)
                    if T is None:
                        why.append(f"kf {kf_id}: {fail}")
                        continue
                res = RelocResult(success=True, T_world_cam=T, keyframe_id=kf_id, score=score,
                                  n_matches=len(m), n_inliers=n_in, tried=res.tried, entry=e,
                                  reason=f"keyframe {kf_id} ({n_in}/{len(m)} PnP inliers, "
                                         f"retrieval score {score:.2f})")
                self._counts["successes"] += 1
                return res
            res.reason = "; ".join(why) if why else "no candidate keyframe"
            return res
        finally:
            self._last_ms = (time.perf_counter() - t0) * 1e3
            res.ms = self._last_ms
