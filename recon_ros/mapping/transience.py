"""The free-space vote that decides what is transient (a moving object, a passing person).

One rule serves the fused volume (:mod:`recon_ros.mapping.tsdf`, per voxel) and the keyframe
points of background refinement (:mod:`recon_ros.refine.transients`, per pixel): evidence is
counted as *violations* - views that see through the thing, i.e. measure a surface clearly
behind it - against all decisive views, and the thing is transient when

    violations >= min_violations  and  violations > vote_ratio * decisive views.

For a voxel a violation is a reading that lies at least ``map.transients.violation_truncations``
truncation distances behind it (the truncation already scales with the depth noise, so this is
a many-sigma test), and every reading that updated the voxel is decisive. A static surface is
seen through only by rare outliers; an object that moved away is seen through by every view of
the space it left (and a place it moved into was seen through before it arrived).
"""
from __future__ import annotations

from typing import TypeVar

A = TypeVar("A")  # numpy arrays or torch tensors: only element-wise operators are used


def free_space_vote(violations: A, decisive: A, min_violations: float, vote_ratio: float) -> A:
    """Boolean array: True where ``violations`` (views that see through) reach
    ``min_violations`` and exceed ``vote_ratio`` of the ``decisive`` views."""
    return (violations >= min_violations) & (violations > vote_ratio * decisive)
