"""Test double for launch.substitutions: LaunchConfiguration and PythonExpression."""
from __future__ import annotations

from typing import Any


class LaunchConfiguration:
    def __init__(self, variable_name: str, default: Any = None) -> None:
        self.variable_name, self.default = variable_name, default

    def perform(self, context: Any) -> str:
        if self.variable_name in context.launch_configurations:
            return context.launch_configurations[self.variable_name]
        if self.default is None:
            raise KeyError(f"launch configuration '{self.variable_name}' is not set")
        return str(self.default)


class PythonExpression:
    def __init__(self, expression: list) -> None:
        self.expression = list(expression)

    def perform(self, context: Any) -> str:
        from launch import perform
        return str(eval(perform(self.expression, context), {}, {}))
