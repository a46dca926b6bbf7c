"""Test double for launch_ros.actions: Node, SetParameter, PushRosNamespace keep their arguments."""
from __future__ import annotations

from typing import Any

from launch.actions import Action


class Node(Action):
    def __init__(self, *, package: str, executable: str, name: str = "", parameters: Any = None,
                 remappings: Any = None, arguments: Any = None, **kwargs: Any) -> None:
        super().__init__(package=package, executable=executable, name=name, **kwargs)
        self.package, self.executable, self.name = package, executable, name
        self.parameters = list(parameters or [])
        self.remappings = list(remappings or [])
        self.arguments = list(arguments or [])


class SetParameter(Action):
    def __init__(self, name: str, value: Any, **kwargs: Any) -> None:
        super().__init__(name=name, value=value, **kwargs)
        self.name, self.value = name, value


class PushRosNamespace(Action):
    def __init__(self, namespace: str, **kwargs: Any) -> None:
        super().__init__(namespace, **kwargs)
        self.namespace = namespace
