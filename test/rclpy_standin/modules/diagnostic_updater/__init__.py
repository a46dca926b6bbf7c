"""Test double for diagnostic_updater: the Updater and DiagnosticStatusWrapper calls the node uses."""
from __future__ import annotations


class DiagnosticStatusWrapper:
    def __init__(self, name: str = "") -> None:
        self.name = name
        self.level = 0
        self.message = ""
        self.values: dict[str, str] = {}

    def summary(self, level, message) -> None:
        self.level, self.message = int(level), str(message)

    def add(self, key, value) -> None:
        self.values[str(key)] = str(value)


class Updater:
    def __init__(self, node, period: float = 1.0) -> None:
        self.node, self.period = node, period
        self.tasks: list = []
        self.hardware_id = ""

    def setHardwareID(self, hwid: str) -> None:
        self.hardware_id = hwid

    def add(self, name: str, fn) -> None:
        self.tasks.append((name, fn))

    def force_update(self) -> list:
        """Run every task now; returns the statuses (what would be published on /diagnostics)."""
        return [fn(DiagnosticStatusWrapper(name)) for name, fn in self.tasks]
