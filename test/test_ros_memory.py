"""The refiner's resident-memory cap (recon_ros.ros.memory), measured on this process."""
from __future__ import annotations

import mmap
import sys
import time

import numpy as np
import pytest

from recon_ros.ros.memory import MIB, MemoryCap, PeakSampler, release_free_memory, rss_bytes

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")


def touched(n: int) -> mmap.mmap:
    """``n`` bytes of fresh anonymous memory, written (resident); the allocator's free lists,
    which may already be resident, are not involved."""
    m = mmap.mmap(-1, n)
    np.frombuffer(m, np.uint8)[:] = 1
    return m


@linux
def test_rss_follows_touched_memory():
    release_free_memory()
    before = rss_bytes()
    m = touched(64 * MIB)
    held = rss_bytes()
    m.close()
    after = rss_bytes()
    assert held - before >= 60 * MIB
    assert held - after >= 60 * MIB


@linux
def test_peak_sampler_sees_memory_freed_inside_the_block():
    with PeakSampler(interval_s=0.01) as peak:
        base = rss_bytes()
        m = touched(48 * MIB)
        time.sleep(0.1)
        m.close()
    assert peak.peak - base >= 44 * MIB
    assert rss_bytes() < peak.peak - 40 * MIB


def test_budget_is_headroom_under_the_cap():
    rss = {"now": 300 * MIB}
    cap = MemoryCap(1000 * MIB, 200 * MIB, probe=lambda: rss["now"])
    assert cap.store_budget(0) == 800 * MIB  # not measured yet: cap minus reserve
    cap.measure()
    assert cap.store_budget(100 * MIB) == (100 + 1000 - 200 - 300) * MIB
    cap.learn(before=300 * MIB, peak=650 * MIB)  # a stage used 350 MiB
    assert cap.reserve == 350 * MIB and cap.peak_rss == 650 * MIB
    cap.learn(before=300 * MIB, peak=400 * MIB)  # a smaller stage does not lower it
    assert cap.reserve == 350 * MIB
    rss["now"] = 900 * MIB
    cap.measure()
    assert cap.headroom() == -250 * MIB and cap.store_budget(100 * MIB) == 0


def test_a_stage_is_charged_its_fixed_part_only():
    cap = MemoryCap(1000 * MIB, 100 * MIB, probe=lambda: 300 * MIB, per_keyframe_bytes=4 * MIB)
    cap.measure()
    assert cap.headroom(50) == (1000 - 100 - 200 - 300) * MIB  # 50 keyframes x 4 MiB
    # 450 MiB rise on 50 keyframes while the store took in 30 MiB: 450 - 30 - 200 = 220 fixed
    cap.learn(before=300 * MIB, peak=750 * MIB, keyframes=50, store_growth=30 * MIB)
    assert cap.reserve == 220 * MIB and cap.peak_rss == 750 * MIB
    cap.learn(before=300 * MIB, peak=600 * MIB, keyframes=10, store_growth=-5 * MIB)  # 260 fixed
    assert cap.reserve == 260 * MIB


def test_zero_cap_disables_the_budget():
    assert MemoryCap(0, 100 * MIB, probe=lambda: 123).store_budget(0) is None
