"""Approximate-time matcher and TF buffer."""
from __future__ import annotations

import numpy as np
import pytest

from recon_ros.geometry.transforms import make_T, rotvec_to_matrix
from recon_ros.io.sync import ApproximateTimeMatcher
from recon_ros.io.tf_buffer import TfBuffer, TransformLookupError

MS = 1_000_000


def test_matcher_pairs_nearest_within_slop_any_arrival_order():
    m = ApproximateTimeMatcher("img", ["depth"], slop_ns=5 * MS)
    out = []
    # depth arrives late and slightly offset; one depth far off (no partner for image 3)
    events = [("img", 0), ("img", 33), ("depth", 2), ("img", 66), ("depth", 31), ("depth", 35),
              ("img", 100), ("depth", 80), ("depth", 132), ("img", 133)]
    for s, t in events:
        out += m.push(s, t * MS, (s, t))
    out += m.flush()
    pairs = [(mm.items["img"][1], mm.items["depth"][1]) for mm in out]
    # brute-force expectation: nearest depth within slop for every image
    assert pairs == [(0, 2), (33, 31), (133, 132)]
    assert m.stats.unmatched == 2  # images 66 and 100
    assert m.stats.matched == 3


def test_matcher_waits_for_later_partner_and_drops_backwards_stamps():
    m = ApproximateTimeMatcher("img", ["depth"], slop_ns=10 * MS)
    assert m.push("img", 100 * MS, "a") == []
    assert m.push("depth", 95 * MS, "d95") == []  # a nearer one could still come
    res = m.push("depth", 101 * MS, "d101")
    assert [(r.items["img"], r.items["depth"]) for r in res] == [("a", "d101")]
    assert m.push("img", 50 * MS, "old") == []
    assert m.stats.out_of_order == 1


def test_matcher_queue_overflow_is_counted():
    m = ApproximateTimeMatcher("img", ["depth"], slop_ns=MS, max_queue=3)
    for i in range(10):
        m.push("img", i * MS, i)
    assert m.stats.overflow == 7 and m.pending == 3


def _T(rv, t):
    return make_T(rotvec_to_matrix(np.asarray(rv, float)), np.asarray(t, float))


def test_tf_chain_and_interpolation():
    buf = TfBuffer(max_extrapolation_ns=0)
    T_base_cam = _T([0.1, 0.2, 0.3], [0.1, 0, 0.2])
    buf.add("base_link", "cam", 0, T_base_cam, static=True)
    A = _T([0, 0, 0.0], [0, 0, 0])
    B = _T([0, 0, 0.4], [1.0, 2.0, 0])
    buf.add("odom", "base_link", 100, A)
    buf.add("odom", "base_link", 200, B)
    # exact stamps compose the chain
    np.testing.assert_allclose(buf.lookup("odom", "cam", 200), B @ T_base_cam, atol=1e-12)
    # halfway: translation halfway, rotation half the angle about z
    mid = _T([0, 0, 0.2], [0.5, 1.0, 0])
    np.testing.assert_allclose(buf.lookup("odom", "cam", 150), mid @ T_base_cam, atol=1e-9)
    # inverse direction
    np.testing.assert_allclose(buf.lookup("cam", "odom", 150), np.linalg.inv(mid @ T_base_cam), atol=1e-9)
    with pytest.raises(TransformLookupError, match="no transform"):
        buf.lookup("odom", "cam", 250)
    with pytest.raises(TransformLookupError, match="not in the TF data"):
        buf.lookup("map", "cam", 150)
    buf.add("gt/world", "gt/camera", 150, np.eye(4))
    with pytest.raises(TransformLookupError, match="not connected"):
        buf.lookup("gt/world", "cam", 150)


def test_tf_tolerance_and_out_of_order_insertion():
    buf = TfBuffer(max_extrapolation_ns=10)
    buf.add("odom", "base", 300, _T([0, 0, 0], [3, 0, 0]))
    buf.add("odom", "base", 100, _T([0, 0, 0], [1, 0, 0]))
    np.testing.assert_allclose(buf.lookup("odom", "base", 200)[:3, 3], [2, 0, 0])
    np.testing.assert_allclose(buf.lookup("odom", "base", 305)[:3, 3], [3, 0, 0])
    assert not buf.can_transform("odom", "base", 320)
