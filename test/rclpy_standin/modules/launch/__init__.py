"""Test double for ROS 2 ``launch`` (see test/rclpy_standin/__init__.py): the launch description
and context objects the package's launch files use, recording what they are given so a test can
evaluate a launch file and inspect the actions it produces. Nothing is started."""
from __future__ import annotations

from typing import Any


class LaunchDescription:
    def __init__(self, entities: Any = None) -> None:
        self.entities = list(entities or [])


class LaunchContext:
    """Holds the launch configurations (argument values) substitutions read."""

    def __init__(self, configurations: dict | None = None) -> None:
        self.launch_configurations: dict[str, str] = dict(configurations or {})


def perform(value: Any, context: LaunchContext) -> str:
    """The text of a substitution, a plain string or a list of them."""
    if isinstance(value, (list, tuple)):
        return "".join(perform(v, context) for v in value)
    if hasattr(value, "perform"):
        return value.perform(context)
    return str(value)
