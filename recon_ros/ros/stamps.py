"""Input-stream bookkeeping for recon_node, pure Python: time jumps, rate, delay, health summary."""
from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels


@dataclass
class JumpDetector:
    """Detects input time going backwards (a bag restarted or looped) on any input stream.

    ``check(stream, stamp)`` answers ``"ok"``, ``"outlier"`` or ``"jump"``. A stamp older than
    that stream's newest one by more than ``tolerance_ns`` is an outlier (skip it) until
    ``confirm`` such stamps arrived in a row: then it is a jump, and the history of every stream
    is forgotten, so the other streams of the same restart do not report it again.
    """

    tolerance_ns: int
    confirm: int = 1
    jumps: int = 0
    _last: dict = field(default_factory=dict)
    _behind: dict = field(default_factory=dict)  # stream -> late stamps in a row

    def check(self, stream: str, stamp_ns: int) -> str:
        last = self._last.get(stream)
        if last is None or stamp_ns >= last - self.tolerance_ns:
            self._behind.pop(stream, None)
            self._last[stream] = stamp_ns if last is None else max(stamp_ns, last)
            return "ok"
        n = self._behind.get(stream, 0) + 1
        if n < self.confirm:
            self._behind[stream] = n
            return "outlier"
        self.jumps += 1
        self._last.clear()
        self._behind.clear()
        self._last[stream] = stamp_ns
        return "jump"

    def observe(self, stream: str, stamp_ns: int) -> bool:
        """True when ``stamp_ns`` confirms a jump backwards (see :meth:`check`)."""
        return self.check(stream, stamp_ns) == "jump"

    def last(self, stream: str) -> int:
        """The newest accepted stamp of ``stream`` (0 if none)."""
        return int(self._last.get(stream, 0))

    def reset(self) -> None:
        self._last.clear()
        self._behind.clear()


@dataclass
class StampMonitor:
    """Rate and delay of the matched input frames over the last ``window`` frames."""

    window: int = 30
    _arrivals: deque = field(default_factory=deque)  # (receive time ns, stamp ns)

    def observe(self, stamp_ns: int, now_ns: int) -> None:
        self._arrivals.append((now_ns, stamp_ns))
        while len(self._arrivals) > self.window:
            self._arrivals.popleft()

    def reset(self) -> None:
        self._arrivals.clear()

    def rate_hz(self) -> float:
        """Frames per second of the recent arrivals (0 with fewer than two)."""
        if len(self._arrivals) < 2:
            return 0.0
        span = self._arrivals[-1][0] - self._arrivals[0][0]
        return (len(self._arrivals) - 1) / (span * 1e-9) if span > 0 else 0.0

    def delay_s(self) -> float:
        """Receive time minus header stamp of the latest frame (seconds; 0 before any)."""
        if not self._arrivals:
            return 0.0
        now, stamp = self._arrivals[-1]
        return (now - stamp) * 1e-9

    def last_arrival_ns(self) -> Optional[int]:
        return self._arrivals[-1][0] if self._arrivals else None


@dataclass
class HealthInputs:
    """What the node knows at a diagnostics tick."""

    active: bool
    paused: bool
    rate_hz: float
    delay_s: float
    since_last_s: Optional[float]  # None: nothing received yet
    counters: dict
    inference_ms: float
    map_points: int
    scale: float
    gpu_memory_mb: Optional[float]
    min_rate_hz: float
    max_delay_s: float
    no_data_warn_s: float
    lost_streak: int = 0  # frames in a row whose pose the frontend could not estimate


def health_summary(h: HealthInputs) -> tuple[int, str, dict]:
    """(level, message, key/values) of recon_node's diagnostic status."""
    values = {
        "input rate (Hz)": f"{h.rate_hz:.2f}",
        "stamp delay (s)": f"{h.delay_s:.3f}",
        "inference (ms)": f"{h.inference_ms:.1f}",
        "map points": str(h.map_points),
        "scale": f"{h.scale:.4g}",
        "GPU memory (MB)": "n/a" if h.gpu_memory_mb is None else f"{h.gpu_memory_mb:.0f}",
    }
    values.update({k: str(v) for k, v in sorted(h.counters.items())})
    if not h.active:
        return WARN, "inactive (configure and activate the lifecycle node)", values
    if h.paused:
        return OK, "paused (~/set_paused false to resume)", values
    if h.since_last_s is None or h.since_last_s > h.no_data_warn_s:
        return ERROR, "no matched input frames (check topics, QoS, stamps; see the log)", values
    problems = []
    if h.lost_streak > 0:
        problems.append(f"tracking lost for {h.lost_streak} frame(s): no pose published")
    if h.min_rate_hz > 0 and h.rate_hz < h.min_rate_hz:
        problems.append(f"input rate {h.rate_hz:.2f} Hz below {h.min_rate_hz:g} Hz")
    if h.delay_s > h.max_delay_s:
        problems.append(f"stamps {h.delay_s:.2f} s behind the clock (use_sim_time? clocks in sync?)")
    if problems:
        return WARN, "; ".join(problems), values
    return OK, "mapping", values


def gpu_memory_mb() -> Optional[float]:
    """Memory held by torch on the current CUDA device (None without torch or CUDA).

    torch is only consulted if the core already imported it.
    """
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return None
        return float(torch.cuda.memory_reserved()) / 2 ** 20
    except Exception:  # a broken CUDA context must not break diagnostics
        return None


def free_gpu_memory() -> None:
    """Return cached CUDA memory to the driver after the model was released."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
