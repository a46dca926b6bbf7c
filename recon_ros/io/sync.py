"""Approximate-time matching of stamped streams (pure Python, no ROS).

One *primary* stream (the colour image) drives the output: each primary message is matched to
the message of every *secondary* stream (aligned depth, ...) whose stamp is nearest, provided
it lies within ``slop_ns``. A primary is decided as soon as every secondary has a message at or
after its stamp (later ones can only be further away), so the matcher works online (the ROS
node feeds it from callbacks) and offline (the bag reader feeds it in bag order). Messages are
used at most once, and stamps going backwards within a stream are dropped and counted.
"""
from __future__ import annotations

import bisect
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

logger = logging.getLogger(__name__)


@dataclass
class Match:
    """A primary message and its partners, keyed by stream name."""

    stamp_ns: int
    items: dict[str, Any]
    stamps: dict[str, int]


@dataclass
class MatcherStats:
    matched: int = 0
    unmatched: int = 0        # primaries with no partner within the slop on some stream
    out_of_order: int = 0     # messages whose stamp went backwards within their stream
    overflow: int = 0         # primaries dropped because partners never arrived (queue full)
    unused: dict[str, int] = field(default_factory=dict)  # secondaries dropped without a match

    def as_dict(self) -> dict[str, Any]:
        return {"matched": self.matched, "unmatched": self.unmatched,
                "out_of_order": self.out_of_order, "overflow": self.overflow,
                "unused": dict(self.unused)}


class ApproximateTimeMatcher:
    """Match a primary stream to secondary streams by nearest stamp within ``slop_ns``."""

    def __init__(self, primary: str, secondaries: Sequence[str], slop_ns: int,
                 max_queue: int = 64) -> None:
        if slop_ns < 0:
            raise ValueError("slop_ns must be >= 0")
        if primary in secondaries:
            raise ValueError("the primary stream cannot also be a secondary")
        self.primary = primary
        self.secondaries = list(secondaries)
        self.slop_ns = int(slop_ns)
        self.max_queue = int(max_queue)
        self.stats = MatcherStats(unused={s: 0 for s in self.secondaries})
        self._primary_q: deque[tuple[int, Any]] = deque()
        self._sec_stamps: dict[str, list[int]] = {s: [] for s in self.secondaries}
        self._sec_items: dict[str, list[Any]] = {s: [] for s in self.secondaries}
        self._last: dict[str, int] = {}

    def push(self, stream: str, stamp_ns: int, item: Any) -> list[Match]:
        """Add one message; return the matches it completes (oldest first)."""
        stamp_ns = int(stamp_ns)
        last = self._last.get(stream)
        is_primary = stream == self.primary
        if stream not in self._sec_stamps and not is_primary:
            raise KeyError(f"unknown stream {stream!r}")
        if last is not None and (stamp_ns < last or (is_primary and stamp_ns == last)):
            self.stats.out_of_order += 1
            logger.debug("%s: stamp %d is not after %d; dropped", stream, stamp_ns, last)
            return []
        self._last[stream] = stamp_ns
        if is_primary:
            self._primary_q.append((stamp_ns, item))
            while len(self._primary_q) > self.max_queue:
                self._primary_q.popleft()
                self.stats.overflow += 1
        else:
            self._sec_stamps[stream].append(stamp_ns)
            self._sec_items[stream].append(item)
        return self._resolve(final=False)

    def flush(self) -> list[Match]:
        """End of input: decide every waiting primary with what has arrived."""
        out = self._resolve(final=True)
        for s in self.secondaries:
            self.stats.unused[s] += len(self._sec_stamps[s])
            self._sec_stamps[s].clear()
            self._sec_items[s].clear()
        return out

    def reset(self) -> None:
        """Forget queued messages and stream history (e.g. after a bag loops)."""
        self._primary_q.clear()
        for s in self.secondaries:
            self._sec_stamps[s].clear()
            self._sec_items[s].clear()
        self._last.clear()

    @property
    def pending(self) -> int:
        return len(self._primary_q)

    # ------------------------------------------------------------------ internals
    def _nearest(self, stream: str, t: int, final: bool) -> tuple[bool, int]:
        """(decided, index of the nearest message or -1)."""
        stamps = self._sec_stamps[stream]
        j = bisect.bisect_left(stamps, t)
        if j >= len(stamps) and not final:
            return False, -1  # a later message could still be nearer
        best, best_d = -1, None
        for k in (j - 1, j):
            if 0 <= k < len(stamps):
                d = abs(stamps[k] - t)
                if best_d is None or d < best_d:
                    best, best_d = k, d
        if best_d is None or best_d > self.slop_ns:
            return True, -1
        return True, best

    def _resolve(self, final: bool) -> list[Match]:
        out: list[Match] = []
        while self._primary_q:
            t, item = self._primary_q[0]
            picks: dict[str, int] = {}
            decided = True
            for s in self.secondaries:
                ok, k = self._nearest(s, t, final)
                if not ok:
                    decided = False
                    break
                picks[s] = k
            if not decided:
                break
            self._primary_q.popleft()
            if any(k < 0 for k in picks.values()):
                self.stats.unmatched += 1
                self._prune(t - self.slop_ns)
                continue
            m = Match(stamp_ns=t, items={self.primary: item}, stamps={self.primary: t})
            for s, k in picks.items():
                m.items[s] = self._sec_items[s][k]
                m.stamps[s] = self._sec_stamps[s][k]
                self.stats.unused[s] += k  # older ones are never used now
                del self._sec_stamps[s][: k + 1]
                del self._sec_items[s][: k + 1]
            self.stats.matched += 1
            out.append(m)
        return out

    def _prune(self, before_ns: int) -> None:
        """Drop secondaries too old to match any later primary."""
        for s in self.secondaries:
            k = bisect.bisect_left(self._sec_stamps[s], before_ns)
            if k:
                self.stats.unused[s] += k
                del self._sec_stamps[s][:k]
                del self._sec_items[s][:k]
