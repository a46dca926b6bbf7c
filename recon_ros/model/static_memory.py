"""Spann3R's spatial memory in preallocated tensors of fixed capacity (static shapes).

Same semantics as :class:`recon_ros.model.memory.SpatialMemory`, but every tensor of the bank
has a fixed shape and every decision (skip an insertion, move a working-memory frame to the
long-term count, prune) is a masked tensor operation. One read or insert therefore launches the
same kernels with the same shapes every frame and never waits for the device (no ``.item()``,
no Python branch on a tensor value), which is what CUDA graph capture and ``torch.compile``
need. Written by hand because no library offers this data structure; the maths is the memory
described in the module docstring of :mod:`recon_ros.model.memory`.

Layout: the bank is kept *compact and ordered*: slots ``[0, n)`` hold the tokens in exactly the
order of the dynamic bank, slots ``[n, capacity)`` are padding (their content is ignored).
The capacity is the largest bank the loop can hold, right before a prune:
``long_mem_size + (work_mem_size + 1) * P`` tokens for P tokens per frame.

* Read: logits of padding slots are set to -inf before the softmax, so their weights are
  exactly 0 and the valid weights equal the dynamic softmax over the valid slots (up to float
  summation order). Thresholding, renormalisation and the attention accumulator follow.
* Insert: the similarity check gathers "the last ``wm * P`` tokens" at a tensor offset; the new
  frame is always written to slots ``[n, n+P)`` and only counted (``n += P``) when not skipped.
* Prune: a bank is pruned only at two sizes (see :func:`prune_sizes`), both known in advance.
  The top-k runs over exactly that many leading slots, so ties among the protected tokens come
  out in the same order as in the dynamic bank (``torch.topk`` on the same values), and the
  permutation is applied with one gather (the identity when no prune happens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from recon_ros.model.config import MemoryConfig
from recon_ros.model.memory import InsertResult, attend, prune_keep, prune_weight

# layout of the per-insert trace vector (float64, so that token counts are exact)
_T_INSERTED, _T_PRUNED, _T_BEFORE, _T_AFTER, _T_WM, _T_LM, _T_SIM = range(7)
TRACE_LEN = 7
# layout of the counter vector (int64)
_C_INSERTS, _C_SKIPS, _C_PRUNES, _C_READS, _C_GUARDED = range(5)


def static_capacity(cfg: MemoryConfig, tokens_per_frame: int) -> int:
    """Largest number of tokens the bank ever holds (right before a prune)."""
    return cfg.long_mem_size + (cfg.work_mem_size + 1) * tokens_per_frame


def prune_sizes(cfg: MemoryConfig, tokens_per_frame: int) -> Tuple[int, int]:
    """The bank sizes at which prunes happen: (first prune, every later prune).

    The long-term counter grows by P per insertion once working memory is full, so the first
    prune happens when it first exceeds the budget L, at ``(L // P + 1) * P`` long-term tokens,
    with a full working memory of ``Wmax * P``. A prune resets it to ``L - Wmax * P``; the next
    prune happens Wmax + 1 insertions later, at ``L + (Wmax + 1) * P`` tokens = the capacity.
    """
    p, L, w = tokens_per_frame, cfg.long_mem_size, cfg.work_mem_size
    return (L // p + 1) * p + w * p, static_capacity(cfg, p)


@dataclass
class StaticReadResult:
    """A read of the static bank. Tensors may be views of live buffers: clone what you keep."""

    out: torch.Tensor  # [B,P,C]: attention-weighted normalised values + the raw query
    weights: torch.Tensor  # [B,P,capacity]: thresholded, renormalised attention (0 on padding)
    num_tokens: torch.Tensor  # 0-dim int64: bank size at the read
    accumulated: torch.Tensor  # [B,capacity,1]: the live accumulated-attention buffer


class StaticMemory:
    """Fixed-capacity spatial memory for frames of ``tokens_per_frame`` tokens of width ``dim``.

    All state lives in tensors allocated once; ``reset`` zeroes them in place, so captured CUDA
    graphs stay valid across sequences of the same input size.
    """

    def __init__(self, cfg: MemoryConfig, tokens_per_frame: int, dim: int, batch: int = 1,
                 device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.tokens_per_frame = p = int(tokens_per_frame)
        self.dim = int(dim)
        self.batch = int(batch)
        self.device = torch.device(device)
        self.capacity = cap = static_capacity(cfg, p)
        self.first_prune_size, _ = prune_sizes(cfg, p)
        wmax = cfg.work_mem_size
        f32 = dict(dtype=torch.float32, device=self.device)
        i64 = dict(dtype=torch.int64, device=self.device)
        self.K = torch.zeros(batch, cap, dim, **f32)
        self.V = torch.zeros(batch, cap, dim, **f32)
        self.A = torch.zeros(batch, cap, 1, **f32)
        self.N = torch.zeros(batch, cap, 1, **f32)
        self.n = torch.zeros((), **i64)  # tokens in the bank
        self.wm = torch.zeros((), **i64)  # working-memory frames
        self.lm = torch.zeros((), **i64)  # long-term token counter
        self.counters = torch.zeros(5, **i64)  # inserts, skips, prunes, reads, guarded rows
        self.trace = torch.zeros(TRACE_LEN, dtype=torch.float64, device=self.device)
        # constant index tensors
        self._slots = torch.arange(cap, **i64)
        self._new = torch.arange(p, **i64)
        self._tail = torch.arange(wmax * p, **i64)
        self._wm_slots = torch.arange(wmax, **i64)

    def reset(self) -> None:
        for t in (self.K, self.V, self.A, self.N, self.n, self.wm, self.lm, self.counters, self.trace):
            t.zero_()

    def valid(self) -> torch.Tensor:
        """[capacity] bool: slots holding bank tokens."""
        return self._slots < self.n

    # ----------------------------------------------------------------------------- read
    def read(self, q: torch.Tensor, norm_q: nn.Module, norm_k: nn.Module, norm_v: nn.Module) -> StaticReadResult:
        """Single-head attention of q [B,P,C] over the valid slots; accumulates into A in place.

        Rows whose every weight falls below the threshold keep their raw softmax (the dynamic
        memory's guard); they are counted in ``counters[4]``.
        """
        qf = q.float()
        w, values, empty = attend(norm_q(qf), norm_k(self.K), norm_v(self.V), self.valid(), self.cfg.attn_thresh)
        self.counters[_C_GUARDED].add_(empty.sum())
        out = values + qf
        self.A.add_(w.sum(dim=1).unsqueeze(-1))
        self.counters[_C_READS].add_(1)
        return StaticReadResult(out=out, weights=w, num_tokens=self.n.clone(), accumulated=self.A)

    # ----------------------------------------------------------------------------- insert
    def similarity_to_working_memory(self, k: torch.Tensor) -> torch.Tensor:
        """0-dim float: max over working-memory frames (the last wm*P bank slots) of the mean
        patch-wise cosine similarity with k [B,P,C]; NaN for an empty bank."""
        b, p, c = k.shape
        wmax = self.cfg.work_mem_size
        idx = (self.n - self.wm * p + self._tail).clamp(0, self.capacity - 1)
        tail = self.K.index_select(1, idx).reshape(b, wmax, p, c)
        sim = F.cosine_similarity(k.float()[:, None], tail, dim=-1).mean(dim=-1)  # [B, Wmax]
        sim = sim.masked_fill(self._wm_slots >= self.wm, float("-inf")).amax()
        return torch.where(self.n == 0, torch.full_like(sim, float("nan")), sim)

    def insert(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Insert one frame's keys/values unless too similar to working memory, then prune if
        needed; the outcome is written to ``trace`` (see :meth:`insert_result`)."""
        cfg, p = self.cfg, self.tokens_per_frame
        if k.shape != (self.batch, p, self.dim) or v.shape != k.shape:
            raise ValueError(f"memory insert: expected keys/values of shape {(self.batch, p, self.dim)}, "
                             f"got {tuple(k.shape)} and {tuple(v.shape)}")
        k, v = k.float(), v.float()
        sim = self.similarity_to_working_memory(k)
        empty = self.n == 0
        do = empty | ~(sim.double() > cfg.sim_thresh)  # as the dynamic check (float64); NaN compares False
        do_i = do.to(torch.int64)
        # append: age the existing tokens, write the frame at [n, n+P) (counted only when inserted)
        self.N.add_(((self.valid() & do)[None, :, None]).to(self.N.dtype))
        pos = self.n + self._new
        self.K.index_copy_(1, pos, k)
        self.V.index_copy_(1, pos, v)
        self.A.index_fill_(1, pos, 0.0)
        self.N.index_fill_(1, pos, 0.0)
        self.n.add_(do_i * p)
        self.wm.add_(do_i)
        over = (self.wm > cfg.work_mem_size).to(torch.int64)
        self.wm.sub_(over)
        self.lm.add_(over * p)
        before = self.n.clone()
        # prune: top-k over the leading slots of the size this prune happens at
        prune = do & (self.lm > cfg.long_mem_size)
        keep = cfg.long_mem_size
        weight = prune_weight(self.A, self.N, cfg)
        order = prune_keep(weight, keep)[..., 0]  # bank of `capacity` tokens
        if self.first_prune_size < self.capacity:
            first = prune_keep(weight[:, :self.first_prune_size], keep)[..., 0]
            order = torch.where(self.n == self.first_prune_size, first, order)
        tail = self._slots[keep:].expand(self.batch, -1)  # padding after a prune: any slots
        perm = torch.where(prune, torch.cat([order, tail], dim=1), self._slots.expand(self.batch, -1))
        for buf in (self.K, self.V, self.A, self.N):
            buf.copy_(torch.gather(buf, 1, perm[..., None].expand(-1, -1, buf.shape[-1])))
        self.n.copy_(torch.where(prune, torch.full_like(self.n, keep), self.n))
        self.lm.copy_(torch.where(prune, keep - self.wm * p, self.lm))
        pr_i = prune.to(torch.int64)
        self.counters[_C_INSERTS].add_(do_i)
        self.counters[_C_SKIPS].add_(1 - do_i)
        self.counters[_C_PRUNES].add_(pr_i)
        self.trace.copy_(torch.stack([do.double(), prune.double(), before.double(), self.n.double(),
                                      self.wm.double(), self.lm.double(), sim.double()]))

    # ----------------------------------------------------------------------------- host side
    def insert_result(self, trace: Optional[torch.Tensor] = None, with_counts: bool = True) -> InsertResult:
        """The last insertion as an :class:`InsertResult` (reads the device: call outside the step).

        ``trace`` is a host copy of :attr:`trace` when the caller already has one."""
        t = (self.trace if trace is None else trace).cpu().tolist()
        pruned = bool(t[_T_PRUNED])
        counts = None
        if pruned and with_counts:
            counts = self.N[:, :self.cfg.long_mem_size].detach().cpu().clone()
        return InsertResult(inserted=bool(t[_T_INSERTED]), pruned=pruned, tokens_before_prune=int(t[_T_BEFORE]),
                            tokens_after=int(t[_T_AFTER]), wm_after=int(t[_T_WM]), lm_after=int(t[_T_LM]),
                            sim_max=float(t[_T_SIM]), counts_after_prune=counts)

    def state(self) -> Tuple[torch.Tensor, ...]:
        """The valid part of the bank (K, V, A, N), like ``SpatialMemory.state`` (reads the device)."""
        n = int(self.n)
        return self.K[:, :n], self.V[:, :n], self.A[:, :n], self.N[:, :n]

    def counts(self) -> dict:
        """Host copy of the counters and sizes (reads the device)."""
        c = self.counters.cpu().tolist()
        return dict(num_tokens=int(self.n), wm=int(self.wm), lm=int(self.lm), inserts=c[_C_INSERTS],
                    skips=c[_C_SKIPS], prunes=c[_C_PRUNES], reads=c[_C_READS], nan_rows_guarded=c[_C_GUARDED])
