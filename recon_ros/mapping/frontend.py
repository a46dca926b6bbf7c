"""The frontend interface: camera frames in, posed pointmaps (FrameEstimates) out.

Contract every frontend follows:

* ``step(frame)`` consumes one :class:`~recon_ros.mapping.frame.Frame` and returns
  0..n :class:`~recon_ros.mapping.frame.FrameEstimate` records, in input order.
  A frontend may *lag*: Spann3R returns frame i's final estimate when frame i+1 arrives,
  so its first ``step`` returns nothing and ``flush()`` returns the last one. The RGB-D
  frontend has no lag (one estimate per tracked frame).
* Besides the final estimates, a step may return a *provisional* estimate of the newest
  frame (``FrameEstimate.provisional = True``) for low-latency display; it is superseded
  by the final estimate of the same ``index`` later and must not enter the map or the
  keyframe selection.
* ``FrameEstimate.tracking_ok = False`` marks an estimate whose pose could not be
  determined (the pose is the last good one, held); it must not enter the map either.
* A frame the frontend cannot use at all (no valid depth before initialisation, say) is
  logged and counted in ``stats()`` and yields no estimate. Invalid input that the user must
  fix (wrong shapes, a missing depth image for a depth frontend) raises
  :class:`~recon_ros.errors.UserInputError`.
* ``flush()`` returns the estimates still held back (end of stream); ``reset()`` forgets all
  state so the next frame starts a new world; ``stats()`` returns plain counters and timings
  for diagnostics (JSON-serialisable values).
* Estimates are expressed in the frontend's world frame (the first frame's camera frame);
  its unit is metres for depth-based frontends and unknown for monocular ones.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from recon_ros.mapping.frame import Frame, FrameEstimate


class Frontend(ABC):
    """Base class of the frontends (Spann3R, RGB-D)."""

    #: short name used in configs and logs ("spann3r", "rgbd")
    name: str = "frontend"
    #: True when the world's unit is metres (depth-based frontends)
    metric: bool = False

    @abstractmethod
    def step(self, frame: Frame) -> list[FrameEstimate]:
        """Consume one frame; return the estimates that became available (maybe none)."""

    def flush(self) -> list[FrameEstimate]:
        """Return the estimates still held back at the end of a stream."""
        return []

    @abstractmethod
    def reset(self) -> None:
        """Forget every frame seen; the next frame starts a new world."""

    @abstractmethod
    def stats(self) -> dict:
        """Counters and timings for diagnostics (plain, JSON-serialisable values)."""


def final_estimates(estimates: list[FrameEstimate]) -> list[FrameEstimate]:
    """The estimates that may enter the map: neither provisional nor failed."""
    return [e for e in estimates if not e.provisional and e.tracking_ok]
