"""Spann3R's spatial memory: one ordered token bank with attention-threshold reads,
similarity-based insert skipping and age-weighted pruning.

The bank holds keys K [B,X,C], values V [B,X,C], accumulated read attention A [B,X,1] and age
counters N [B,X,1]. ``wm`` counts the most recent frames regarded as working memory and ``lm``
the tokens regarded as long-term; both are counters only, no data moves between them.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from recon_ros.model.config import MemoryConfig

log = logging.getLogger(__name__)


PROTECT_WEIGHT = 1e8  # prune weight of tokens from the most recent insertions (always kept)


def prune_weight(A: torch.Tensor, N: torch.Tensor, cfg: MemoryConfig) -> torch.Tensor:
    """Prune score of every bank token [B,X,1]: accumulated attention per age, with the tokens of
    the last ``work_mem_size + 5`` insertions protected by a huge constant weight."""
    protect = N < cfg.work_mem_size + 5
    return torch.where(protect, torch.full_like(A, PROTECT_WEIGHT), A / N.clamp(min=1.0))


def prune_keep(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices [B,keep,1] of the ``keep`` largest weights, sorted descending (the bank order after a
    prune). Ties (all protected tokens share one weight) come in ``torch.topk``'s order, as in the
    reference; that order depends only on the relative order of the weights and on their count,
    which :mod:`recon_ros.model.static_memory` relies on to keep the same bank order."""
    return torch.topk(weight, k=keep, dim=1, largest=True, sorted=True).indices


READ_BLOCK = 256  # tokens per block of the memory read


def _blocked_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis (a multiple of READ_BLOCK long): per-block sums, added block by block."""
    parts = x.unflatten(-1, (-1, READ_BLOCK)).sum(dim=-1)
    acc = parts[..., 0:1]
    for i in range(1, parts.shape[-1]):
        acc = acc + parts[..., i:i + 1]
    return acc


def attend(qn: torch.Tensor, kn: torch.Tensor, vn: torch.Tensor, valid: Optional[torch.Tensor],
           attn_thresh: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The memory read's attention: queries qn [B,P,C] over keys kn and values vn [B,X,C]
    (all normalised), slots with ``valid`` [X] False excluded (None: all valid).

    Softmax over the valid slots, weights below ``attn_thresh`` zeroed and rows renormalised;
    a row whose every weight fell below the threshold keeps its softmax (``empty`` [B,P,1] marks
    it). Returns (weights [B,P,X], weights @ vn [B,P,C], empty).

    Hand-written (not ``softmax`` + one matmul) so that the result does not depend on X: the
    token axis is zero-padded to whole blocks of READ_BLOCK, every product and every sum runs per
    block on the same shapes, and block results are added in order. Padding and invalid slots
    contribute exact zeros, so a bank padded to a fixed capacity
    (:mod:`recon_ros.model.static_memory`) reads bit for bit what the unpadded bank reads.
    """
    x = kn.shape[1]
    blocks = -(-x // READ_BLOCK)
    pad = blocks * READ_BLOCK - x
    keep = torch.arange(x + pad, device=kn.device) < x
    if pad:
        kn = F.pad(kn, (0, 0, 0, pad))
        vn = F.pad(vn, (0, 0, 0, pad))
    if valid is not None:
        keep = keep & F.pad(valid, (0, pad))
    kt = kn.transpose(-1, -2)
    sl = [slice(i * READ_BLOCK, (i + 1) * READ_BLOCK) for i in range(blocks)]
    logits = torch.cat([torch.matmul(qn, kt[..., s]) for s in sl], dim=-1) / math.sqrt(qn.shape[-1])
    logits = logits.masked_fill(~keep, float("-inf"))
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    w = e / _blocked_sum(e)
    empty = torch.zeros_like(w[..., :1], dtype=torch.bool)
    if attn_thresh > 0:
        kept = torch.where(w < attn_thresh, torch.zeros_like(w), w)
        s = _blocked_sum(kept)
        empty = s == 0
        w = torch.where(empty, w, kept / torch.where(empty, torch.ones_like(s), s))
    out = torch.matmul(w[..., sl[0]], vn[:, sl[0]])
    for s in sl[1:]:
        out = out + torch.matmul(w[..., s], vn[:, s])
    return w[..., :x], out, empty


@dataclass
class InsertResult:
    """What one insertion attempt did."""

    inserted: bool
    pruned: bool
    tokens_before_prune: int
    tokens_after: int
    wm_after: int
    lm_after: int
    sim_max: float  # best mean cosine similarity to a working-memory frame (NaN if the bank was empty)
    counts_after_prune: Optional[torch.Tensor] = None  # [B,X,1] age counters right after a prune


@dataclass
class ReadResult:
    out: torch.Tensor  # [B,P,C]: attention-weighted normalised values + the raw query
    weights: torch.Tensor  # [B,P,X] thresholded, renormalised attention
    mem_tokens: int  # bank size at the read
    accumulated: torch.Tensor  # [B,X,1] accumulated attention right after this read (not mutated later)


class SpatialMemory:
    """Mutable memory state of one sequence. Create a new one (or call ``reset``) per sequence."""

    def __init__(self, cfg: MemoryConfig) -> None:
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self.K: Optional[torch.Tensor] = None
        self.V: Optional[torch.Tensor] = None
        self.A: Optional[torch.Tensor] = None
        self.N: Optional[torch.Tensor] = None
        self.wm = 0
        self.lm = 0
        self.tokens_per_frame = 0
        self.inserts = 0
        self.skips = 0
        self.prunes = 0
        self.reads = 0
        self.nan_rows_guarded = 0

    @property
    def num_tokens(self) -> int:
        return 0 if self.K is None else int(self.K.shape[1])

    # ----------------------------------------------------------------------------- read
    def read(self, q: torch.Tensor, norm_q: nn.Module, norm_k: nn.Module, norm_v: nn.Module,
             guard_empty_rows: bool = True) -> ReadResult:
        """Single-head attention of queries q [B,P,C] over the bank; accumulates attention into A.

        Weights below ``attn_thresh`` are zeroed and rows renormalised. A row whose every weight
        fell below the threshold (only possible with very large, nearly uniform banks) would divide
        0 by 0; with ``guard_empty_rows`` such rows keep their unthresholded softmax instead.
        """
        if self.K is None:
            raise RuntimeError("memory read on an empty bank")
        qf = q.float()
        w, values, empty = attend(norm_q(qf), norm_k(self.K), norm_v(self.V), None, self.cfg.attn_thresh)
        if not guard_empty_rows:  # the reference's 0/0
            w = w.masked_fill(empty, float("nan"))
            values = values.masked_fill(empty, float("nan"))
        elif bool(empty.any()):
            self.nan_rows_guarded += int(empty.sum())
            log.warning("memory read: %d query rows fell entirely below the attention "
                        "threshold; using their raw softmax", int(empty.sum()))
        out = values + qf
        self.A = self.A + w.sum(dim=1).unsqueeze(-1)
        self.reads += 1
        return ReadResult(out=out, weights=w, mem_tokens=self.num_tokens, accumulated=self.A)

    # ----------------------------------------------------------------------------- insert
    def similarity_to_working_memory(self, k: torch.Tensor) -> float:
        """Max over working-memory slots (the last wm*P bank tokens) of the mean patch-wise cosine."""
        if self.K is None or self.wm == 0:
            return float("nan")
        p = self.tokens_per_frame
        tail = self.K[:, -self.wm * p:].reshape(k.shape[0], self.wm, p, k.shape[-1])
        sim = F.cosine_similarity(k.float()[:, None], tail, dim=-1).mean(dim=-1)  # [B, wm]
        return float(sim.max())

    def insert(self, k: torch.Tensor, v: torch.Tensor) -> InsertResult:
        """Append one frame's keys/values (unless too similar to working memory), then prune if needed."""
        k, v = k.float(), v.float()
        p = int(k.shape[1])
        if self.K is not None and p != self.tokens_per_frame:
            raise ValueError(f"frame has {p} tokens but the memory holds {self.tokens_per_frame}-token frames")
        sim = self.similarity_to_working_memory(k)
        if self.K is not None and sim > self.cfg.sim_thresh:
            self.skips += 1
            return InsertResult(False, False, self.num_tokens, self.num_tokens, self.wm, self.lm, sim)
        zeros = torch.zeros(k.shape[0], p, 1, dtype=k.dtype, device=k.device)
        if self.K is None:
            self.K, self.V, self.A, self.N = k.clone(), v.clone(), zeros, zeros.clone()
            self.tokens_per_frame = p
        else:
            self.N = torch.cat([self.N + 1, zeros], dim=1)
            self.K = torch.cat([self.K, k], dim=1)
            self.V = torch.cat([self.V, v], dim=1)
            self.A = torch.cat([self.A, zeros], dim=1)
        self.inserts += 1
        self.wm += 1
        if self.wm > self.cfg.work_mem_size:
            self.wm -= 1
            self.lm += p
        before = self.num_tokens
        if self.lm > self.cfg.long_mem_size:
            self._prune()
            return InsertResult(True, True, before, self.num_tokens, self.wm, self.lm, sim, self.N)
        return InsertResult(True, False, before, self.num_tokens, self.wm, self.lm, sim)

    def _prune(self) -> None:
        """Keep the long_mem_size tokens of largest A/N (recent insertions protected), sorted descending."""
        keep = self.cfg.long_mem_size
        idx = prune_keep(prune_weight(self.A, self.N, self.cfg), min(keep, self.A.shape[1]))
        c = self.K.shape[-1]
        self.K = torch.gather(self.K, 1, idx.expand(-1, -1, c))
        self.V = torch.gather(self.V, 1, idx.expand(-1, -1, c))
        self.A = torch.gather(self.A, 1, idx)
        self.N = torch.gather(self.N, 1, idx)
        self.lm = keep - self.wm * self.tokens_per_frame
        self.prunes += 1

    def state(self) -> Tuple[Optional[torch.Tensor], ...]:
        return self.K, self.V, self.A, self.N
