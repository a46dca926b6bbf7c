"""When the background stages run: one schedule for ``recon-ros replay --refine`` and
recon_refiner (no heavy imports: the node reads it at start-up)."""
from __future__ import annotations

from typing import Any, Optional

STAGES = ("align", "refine")


class StageSchedule:
    """When the background stages are due, for both runners: each stage every
    ``schedule.<stage>_period_s`` (0: only on request; read at every call, the node's are
    dynamic) of the runner's clock (stream time in replay, ROS time in the node). The first
    period starts at the first :meth:`due` call; a stage that was started, or was due but could
    not start (too few keyframes, busy), waits a whole period again; a clock that goes
    backwards (a bag restarting) starts the periods anew."""

    def __init__(self, schedule: Any) -> None:
        self.schedule = schedule
        self._last: dict[str, Optional[int]] = {stage: None for stage in STAGES}

    def period_ns(self, stage: str) -> float:
        return float(getattr(self.schedule, f"{stage}_period_s")) * 1e9

    def due(self, now_ns: int) -> list[str]:
        """The stages due at ``now_ns``, in order (align first)."""
        out = []
        for stage in STAGES:
            last = self._last[stage]
            if last is None or now_ns < last:
                self._last[stage] = now_ns
                continue
            period = self.period_ns(stage)
            if period > 0 and now_ns - last >= period:
                out.append(stage)
        return out

    def ran(self, stage: str, now_ns: int) -> None:
        """``stage`` was started (or tried) at ``now_ns``: its next period starts now."""
        self._last[stage] = now_ns
