"""Test double for launch.actions: each action keeps its constructor arguments."""
from __future__ import annotations

from typing import Any, Callable


class Action:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class DeclareLaunchArgument(Action):
    def __init__(self, name: str, default_value: Any = None, description: str = "", **kwargs: Any) -> None:
        super().__init__(name, default_value=default_value, description=description, **kwargs)
        self.name, self.default_value, self.description = name, default_value, description


class OpaqueFunction(Action):
    def __init__(self, function: Callable, args: Any = None, kwargs: Any = None) -> None:
        super().__init__(function=function)
        self.function = function

    def execute(self, context: Any) -> list:
        return list(self.function(context) or [])


class GroupAction(Action):
    def __init__(self, actions: list, **kwargs: Any) -> None:
        super().__init__(actions, **kwargs)
        self.actions = list(actions)


class TimerAction(Action):
    def __init__(self, period: Any, actions: list, **kwargs: Any) -> None:
        super().__init__(period=period, actions=actions, **kwargs)
        self.period, self.actions = period, list(actions)


class ExecuteProcess(Action):
    def __init__(self, cmd: list, **kwargs: Any) -> None:
        super().__init__(cmd=cmd, **kwargs)
        self.cmd = list(cmd)


class LogInfo(Action):
    def __init__(self, msg: Any, **kwargs: Any) -> None:
        super().__init__(msg=msg, **kwargs)
        self.msg = msg


class IncludeLaunchDescription(Action):
    def __init__(self, launch_description_source: Any, launch_arguments: Any = None, **kwargs: Any) -> None:
        super().__init__(launch_description_source, **kwargs)
        self.launch_description_source = launch_description_source
        self.launch_arguments = list(launch_arguments or [])
