"""Test double for rclpy.parameter.Parameter."""
from dataclasses import dataclass
from typing import Any


@dataclass
class Parameter:
    name: str
    type_: Any = None
    value: Any = None

    @classmethod
    def of(cls, name, value):
        return cls(name=name, value=value)
