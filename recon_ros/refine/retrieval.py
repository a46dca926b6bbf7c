"""Appearance retrieval for loop-closure candidates: a bag of SIFT words built online.

The vocabulary is a k-means clustering (k-means++ seeding, Lloyd iterations, seeded NumPy
generator) of descriptors sampled from the keyframes present when it is built; no weights are
involved. Each keyframe is described by its word histogram, turned into a discriminative
vector (:meth:`BowIndex.embed`):

1. tf-idf weighting (idf over the indexed keyframes),
2. power normalisation (square root: a word repeated on a textured wall counts less),
3. L2 normalisation, then *centring* on the mean vector of the indexed keyframes and L2
   again. Views of one room share most words, so the raw cosine of any two keyframes is high
   (0.8-0.9) whatever they show; after centring only what sets a keyframe apart from the
   average view counts, and unrelated views score near 0 or below.

Relocalization ranks keyframes by the cosine of these vectors (range -1..1,
:meth:`BowIndex.query`); the loop-candidate search of the refinement graph still uses the
plain tf-idf cosine (``similarity()``), whose scale its ``min_retrieval_score`` is tuned for.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)


def kmeans(x: np.ndarray, k: int, iterations: int = 12, seed: int = 0) -> np.ndarray:
    """Cluster centres (k, D) of the rows of ``x`` (k-means++ seeding, Lloyd iterations)."""
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    k = int(min(k, n))
    if k <= 0:
        raise ValueError("kmeans needs at least one point")
    rng = np.random.default_rng(seed)
    centres = np.empty((k, x.shape[1]), np.float32)
    centres[0] = x[rng.integers(n)]
    d2 = np.sum((x - centres[0]) ** 2, axis=1)
    for c in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres[c] = x[rng.choice(n, p=p)]
        d2 = np.minimum(d2, np.sum((x - centres[c]) ** 2, axis=1))
    xx = np.sum(x ** 2, axis=1, keepdims=True)
    for _ in range(iterations):
        dist = xx - 2.0 * x @ centres.T + np.sum(centres ** 2, axis=1)[None]
        lab = np.argmin(dist, axis=1)
        sums = np.zeros_like(centres)
        np.add.at(sums, lab, x)
        counts = np.bincount(lab, minlength=k).astype(np.float32)
        empty = counts == 0
        centres[~empty] = sums[~empty] / counts[~empty, None]
    return centres


@dataclass
class BowIndex:
    """Bag-of-words index of keyframes; the vocabulary is built at the first query with data."""

    vocabulary_size: int = 64
    sample_per_keyframe: int = 300
    seed: int = 0
    centres: Optional[np.ndarray] = None
    counts: dict = field(default_factory=dict)  # id -> word counts (V,)

    def build_vocabulary(self, descriptors: list[np.ndarray]) -> bool:
        rng = np.random.default_rng(self.seed)
        parts = []
        for d in descriptors:
            if len(d) == 0:
                continue
            take = rng.choice(len(d), size=min(len(d), self.sample_per_keyframe), replace=False)
            parts.append(d[take])
        if not parts:
            return False
        sample = np.concatenate(parts)
        if len(sample) < self.vocabulary_size:
            return False
        self.centres = kmeans(sample, self.vocabulary_size, seed=self.seed)
        self.counts.clear()
        log.debug("bag-of-words vocabulary: %d words from %d descriptors", len(self.centres), len(sample))
        return True

    def words(self, desc: np.ndarray) -> np.ndarray:
        assert self.centres is not None
        if len(desc) == 0:
            return np.zeros(len(self.centres))
        dist = -2.0 * desc @ self.centres.T + np.sum(self.centres ** 2, axis=1)[None]
        return np.bincount(np.argmin(dist, axis=1), minlength=len(self.centres)).astype(np.float64)

    def add(self, kf_id: int, desc: np.ndarray) -> None:
        if self.centres is not None and kf_id not in self.counts:
            self.counts[kf_id] = self.words(desc)

    def embed(self, counts: np.ndarray, ids: Optional[list[int]] = None) -> np.ndarray:
        """Discriminative vectors (M, V) of word counts (M, V) against the indexed keyframes
        ``ids`` (all of them by default): see the module docstring."""
        ids = sorted(self.counts) if ids is None else ids
        counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
        if not ids:
            return np.zeros_like(counts)
        C = np.stack([self.counts[i] for i in ids])
        idf = np.log((1.0 + len(ids)) / (1.0 + np.count_nonzero(C > 0, axis=0))) + 1.0

        def weigh(X: np.ndarray) -> np.ndarray:
            tf = X / np.maximum(X.sum(axis=1, keepdims=True), 1.0)
            V = np.sqrt(tf * idf[None])
            return V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)

        mean = weigh(C).mean(axis=0) if len(ids) > 1 else 0.0
        V = weigh(counts) - mean
        return V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)

    def similarity(self, centred: bool = False) -> tuple[list[int], np.ndarray]:
        """Ids and the (N, N) cosine similarity of their tf-idf vectors; with ``centred`` of
        the discriminative vectors of :meth:`embed` (a different scale: unrelated views score
        near 0, so thresholds tuned on the plain cosine do not carry over)."""
        ids = sorted(self.counts)
        if not ids:
            return ids, np.zeros((0, 0))
        C = np.stack([self.counts[i] for i in ids])
        if centred:
            V = self.embed(C, ids)
        else:
            df = np.count_nonzero(C > 0, axis=0)
            idf = np.log((1.0 + len(ids)) / (1.0 + df))
            tf = C / np.maximum(C.sum(axis=1, keepdims=True), 1.0)
            V = tf * idf[None]
            V /= np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
        return ids, V @ V.T

    def query(self, desc: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` indexed keyframes most similar to a set of descriptors: (id, score), best
        first."""
        ids = sorted(self.counts)
        if self.centres is None or not ids or k <= 0:
            return []
        V = self.embed(np.stack([self.counts[i] for i in ids]), ids)
        q = self.embed(self.words(desc)[None], ids)[0]
        scores = V @ q
        best = np.argsort(-scores, kind="stable")[:k]
        return [(ids[i], float(scores[i])) for i in best]

    def candidates(self, order: dict, k: int, min_gap: int, min_score: float) -> list[tuple[int, int, float]]:
        """Loop candidates (a, b, score) with a before b: for every keyframe the ``k`` best earlier
        keyframes at least ``min_gap`` positions away (``order`` maps id -> position)."""
        ids, S = self.similarity()
        if len(ids) < 2 or k <= 0:
            return []
        pos = np.array([order[i] for i in ids])
        allowed = (pos[None, :] <= pos[:, None] - min_gap)
        S = np.where(allowed, S, -np.inf)
        out = []
        kk = min(k, len(ids))
        best = np.argsort(-S, axis=1)[:, :kk]
        for r, row in enumerate(best):
            for c in row:
                if np.isfinite(S[r, c]) and S[r, c] >= min_score:
                    out.append((ids[c], ids[r], float(S[r, c])))
        return out
