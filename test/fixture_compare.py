"""One comparison rule for computed tensors against reference fixture tensors.

A computed tensor ``got`` matches a reference tensor ``want`` when every element satisfies

    |got - want| <= rtol * max|want| + ATOL

that is, the tolerance is relative to the reference tensor's own scale (its largest magnitude),
not to each element. Float32 rounding after many recurrent steps gives absolute errors that grow
with the magnitudes flowing through the network, not with the size of an individual element:
an element near zero in a tensor reaching 2 can be off by 1e-5 from noise alone, which an
element-wise tolerance would call a failure. ``ATOL`` (1e-12) only keeps an all-zero reference
comparable.

``PARITY_RTOL`` (5e-5 of the scale) is the default for network tensors on CPU float32: observed
float32 noise stays below 1e-5 of the scale (8e-6 after 17 recurrent steps with other weights),
while any real error, such as a shift of 1e-3 of the scale, is 20 times above it
(``test_model_parity.py::test_comparison_catches_small_errors`` checks both sides).
Deterministic bookkeeping (intrinsics, poses from a closed-form or RANSAC step) is compared with
the same rule and a tighter ``rtol``.
"""
from __future__ import annotations

import numpy as np

PARITY_RTOL = 5e-5
ATOL = 1e-12


def scale_error(got, want) -> float:
    """Largest absolute difference divided by the reference's largest magnitude."""
    got = np.asarray(got, dtype=np.float64).reshape(np.shape(want))
    want = np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), ATOL))


def assert_matches_reference(name: str, got, want, rtol: float = PARITY_RTOL) -> None:
    """Assert ``|got - want| <= rtol * max|want| + ATOL`` element-wise (shapes must agree)."""
    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    assert got.size == want.size, f"{name}: {got.size} values computed, reference has {want.size}"
    got = got.reshape(want.shape)
    assert np.isfinite(got).all(), f"{name}: non-finite values"
    scale = np.abs(want).max() if want.size else 0.0
    tol = rtol * scale + ATOL
    err = np.abs(got - want)
    bad = err > tol
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {bad.size} values off by more than "
                           f"{rtol:g} of the scale {scale:.4g}; max error {err.max():.3g} "
                           f"({err.max() / max(scale, ATOL):.3g} of the scale)")
