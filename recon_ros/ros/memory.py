"""The refiner's memory cap: what the process holds (resident set), not an estimate of it.

The keyframe store counts its arrays, but the process also holds Python, torch and rclpy, the
stages' caches and, while a stage runs, its working memory. :class:`MemoryCap` turns a cap on
the resident memory into the store's byte budget and corrects it from measurements:

* working memory: a stage needs ``reserve`` plus ``per_keyframe`` for every keyframe it runs on.
  ``reserve`` starts at a configured value and learns: the largest rise of the resident set
  measured while a stage ran, less the stage's per-keyframe part and less what the keyframe
  store took in meanwhile (keyframes keep arriving while a stage runs; they are the store's, not
  the stage's);
* the store's budget is recomputed after every stage from the resident set measured with the
  stage's memory given back: ``store bytes + (cap - reserve - resident)`` (the store's bytes
  without the stage's per-keyframe share, which is not resident), so whatever the estimate
  misses (allocator overhead, caches) is charged to the keyframes.

Pure Python (Linux ``/proc`` and glibc's ``malloc_trim``; elsewhere the resident set reads as
unknown and the budget stays the configured cap minus the reserve).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Callable, Optional

MIB = 2 ** 20
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process in bytes (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _load_trim() -> Optional[Callable[[int], int]]:
    name = ctypes.util.find_library("c")
    try:
        fn = getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_TRIM = _load_trim()


def release_free_memory() -> None:
    """Give the allocator's free pages back to the system (glibc ``malloc_trim``; no-op elsewhere).

    Freed keyframes and stage buffers otherwise stay resident in the heap's free lists."""
    if _TRIM is not None:
        _TRIM(0)


class PeakSampler:
    """Samples the resident set on a thread while a ``with`` block runs; ``peak`` is the largest."""

    def __init__(self, probe: Callable[[], int] = rss_bytes, interval_s: float = 0.05) -> None:
        self.probe, self.interval_s = probe, interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.probe())
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> "PeakSampler":
        self.peak = self.probe()
        self._thread = threading.Thread(target=self._sample, name="recon_rss_sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.probe())


class MemoryCap:
    """The keyframe store's byte budget under a cap on the resident memory (see module doc).

    ``cap_bytes`` 0 disables the cap (the budget is None: keyframe count only)."""

    def __init__(self, cap_bytes: int, reserve_bytes: int, probe: Callable[[], int] = rss_bytes,
                 per_keyframe_bytes: int = 0) -> None:
        self.cap = int(cap_bytes)
        self.reserve = int(reserve_bytes)
        self.per_keyframe = int(per_keyframe_bytes)
        self.probe = probe
        self.last_rss = 0
        self.peak_rss = 0

    @property
    def enabled(self) -> bool:
        return self.cap > 0

    def measure(self) -> int:
        """The resident set now (also kept as ``last_rss``, and the peak seen)."""
        self.last_rss = int(self.probe())
        self.peak_rss = max(self.peak_rss, self.last_rss)
        return self.last_rss

    def learn(self, before: int, peak: int, keyframes: int = 0, store_growth: int = 0) -> None:
        """A stage on ``keyframes`` keyframes raised the resident set from ``before`` to ``peak``
        while the keyframe store grew by ``store_growth`` bytes: hold back what the stage used
        beyond its per-keyframe part."""
        self.peak_rss = max(self.peak_rss, peak)
        if before > 0:
            used = peak - before - max(0, int(store_growth)) - self.per_keyframe * int(keyframes)
            self.reserve = max(self.reserve, int(used))

    def store_budget(self, store_bytes: int, keyframes: int = 0) -> Optional[int]:
        """Bytes the store may hold: what it holds plus the measured headroom under the cap.

        ``store_bytes`` is what the store charges for its ``keyframes`` keyframes, a stage's
        per-keyframe share included; that share is held back, not resident, so it is not in the
        measured resident set. Without a measurement (``last_rss`` 0) the whole cap minus the
        reserve."""
        if not self.enabled:
            return None
        if self.last_rss <= 0:
            return max(0, self.cap - self.reserve)
        resident = int(store_bytes) - self.per_keyframe * int(keyframes)
        return max(0, resident + self.cap - self.reserve - self.last_rss)

    def headroom(self, keyframes: int = 0) -> int:
        """Bytes left under the cap at the last measurement beside a stage on ``keyframes``
        keyframes (negative: over)."""
        return self.cap - self.reserve - self.per_keyframe * int(keyframes) - self.last_rss
