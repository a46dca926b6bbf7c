"""Test double for rclpy.lifecycle: the primary states and the trigger_* transitions."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from rclpy.node import Node


class TransitionCallbackReturn(enum.IntEnum):
    SUCCESS = 97
    FAILURE = 98
    ERROR = 99


@dataclass
class State:
    state_id: int
    label: str


_IDS = {"unconfigured": 1, "inactive": 2, "active": 3, "finalized": 4}


class LifecycleNode(Node):
    def __init__(self, node_name: str, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.state_label = "unconfigured"

    def _state(self) -> State:
        return State(_IDS[self.state_label], self.state_label)

    def _transition(self, allowed: tuple, callback, success: str, failure: str) -> TransitionCallbackReturn:
        if self.state_label not in allowed:
            raise RuntimeError(f"transition not allowed from state {self.state_label}")
        try:
            ret = callback(self._state())
        except Exception:
            ret = TransitionCallbackReturn.ERROR
        if ret == TransitionCallbackReturn.SUCCESS:
            self.state_label = success
        elif ret == TransitionCallbackReturn.FAILURE:
            self.state_label = failure
        else:
            err = self.on_error(self._state())
            self.state_label = "unconfigured" if err == TransitionCallbackReturn.SUCCESS else "finalized"
        return ret

    def trigger_configure(self):
        return self._transition(("unconfigured",), self.on_configure, "inactive", "unconfigured")

    def trigger_activate(self):
        return self._transition(("inactive",), self.on_activate, "active", "inactive")

    def trigger_deactivate(self):
        return self._transition(("active",), self.on_deactivate, "inactive", "active")

    def trigger_cleanup(self):
        return self._transition(("inactive",), self.on_cleanup, "unconfigured", "inactive")

    def trigger_shutdown(self):
        return self._transition(("unconfigured", "inactive", "active"), self.on_shutdown, "finalized", "finalized")

    def on_configure(self, state): return TransitionCallbackReturn.SUCCESS
    def on_activate(self, state): return TransitionCallbackReturn.SUCCESS
    def on_deactivate(self, state): return TransitionCallbackReturn.SUCCESS
    def on_cleanup(self, state): return TransitionCallbackReturn.SUCCESS
    def on_shutdown(self, state): return TransitionCallbackReturn.SUCCESS
    def on_error(self, state): return TransitionCallbackReturn.SUCCESS
