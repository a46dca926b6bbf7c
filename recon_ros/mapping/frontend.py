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
  determined (the pose is the last good one, held); it must not enter the map, the keyframes
  or the trajectory, and it is not a pose to publish (the :class:`Reconstructor
  <recon_ros.mapping.reconstructor.Reconstructor>` withholds it from ``StepResult.estimates``
  and reports the state instead).
* ``status`` is the :class:`TrackingStatus` after the last step: ``tracking`` (poses are
  good), ``lost`` (no pose: the frames are neither fused, keyframed nor published) or
  ``relocalized`` (the last frame was found again in the map after a loss or a gap; its pose
  is good and the frames after it are ``tracking`` again), with a human-readable reason.
* ``notify_gap()`` tells the frontend that processing paused (a map save, applied
  corrections, a lifecycle deactivate): the next frame must not be predicted from the motion
  before the pause. A frontend also treats a stamp gap above its threshold as a pause.
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
from dataclasses import dataclass
from typing import Optional

import numpy as np

from recon_ros.errors import UserInputError
from recon_ros.mapping.frame import Frame, FrameEstimate

TRACKING = "tracking"
LOST = "lost"
RELOCALIZED = "relocalized"
TRACKING_STATES = (TRACKING, LOST, RELOCALIZED)


@dataclass
class TrackingStatus:
    """Where a frontend's tracking stands after its last step.

    ``state`` is one of :data:`TRACKING_STATES`; ``reason`` says why (empty while tracking
    normally); ``lost_since_ns`` is the stamp of the first lost frame of the current loss
    (None unless lost); ``lost_frames`` counts the frames of the current loss and
    ``relocalizations`` the recoveries so far.
    """

    state: str = TRACKING
    reason: str = ""
    lost_since_ns: Optional[int] = None
    lost_frames: int = 0
    relocalizations: int = 0
    segment: int = 0  # the map segment the frames are tracked in (see the rgbd frontend)

    @property
    def ok(self) -> bool:
        """True when the last frame has a good pose (tracking or relocalized)."""
        return self.state != LOST

    def lose(self, reason: str, stamp_ns: int) -> "TrackingStatus":
        """The status after a frame without a pose."""
        first = self.state != LOST
        return TrackingStatus(state=LOST, reason=reason,
                              lost_since_ns=stamp_ns if first else self.lost_since_ns,
                              lost_frames=1 if first else self.lost_frames + 1,
                              relocalizations=self.relocalizations, segment=self.segment)

    def found(self, reason: str = "", relocalized: bool = False) -> "TrackingStatus":
        """The status after a frame with a pose; ``relocalized`` when it was found again."""
        if relocalized:
            return TrackingStatus(state=RELOCALIZED, reason=reason,
                                  relocalizations=self.relocalizations + 1, segment=self.segment)
        return TrackingStatus(reason=reason, relocalizations=self.relocalizations, segment=self.segment)


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

    @property
    def status(self) -> TrackingStatus:
        """The tracking state after the last step (a copy; see the module docstring)."""
        st = getattr(self, "_status", None)
        return TrackingStatus() if st is None else TrackingStatus(**vars(st))

    def notify_gap(self) -> None:
        """Processing paused: do not predict the next frame from the motion before the pause."""

    def finish_step(self) -> None:
        """Do the bookkeeping the last :meth:`step` left for after its pose went out (indexing
        a keyframe for relocalization, say). :meth:`step` does it first when nobody called
        this, so skipping it only delays the work."""

    def take_segment_joins(self) -> list[tuple[int, int, np.ndarray]]:
        """Segments joined since the last call: (joined segment, segment it joined, the
        transform from the joined segment's world into the other's). Frames of a frontend that
        never starts segments are all in segment 0."""
        return []

    def export_map(self) -> Optional[dict[str, np.ndarray]]:
        """What a saved map needs for this frontend to find itself in it again (arrays for
        one ``.npz``), or None when the frontend cannot relocalize."""
        return None

    def adopt_map(self, arrays: dict[str, np.ndarray]) -> None:
        """Start over inside a saved map (what :meth:`export_map` returned): the next frames
        are relocalized in it instead of starting a new world."""
        raise UserInputError(
            f"the {self.name} frontend cannot relocalize in a saved map; continuing a map "
            "(map.load_path, --resume) and localization mode need the rgbd frontend")

    @abstractmethod
    def reset(self) -> None:
        """Forget every frame seen; the next frame starts a new world."""

    @abstractmethod
    def stats(self) -> dict:
        """Counters and timings for diagnostics (plain, JSON-serialisable values)."""


def final_estimates(estimates: list[FrameEstimate]) -> list[FrameEstimate]:
    """The estimates that may enter the map: neither provisional nor failed."""
    return [e for e in estimates if not e.provisional and e.tracking_ok]
