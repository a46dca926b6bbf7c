"""ROS parameters declared from the one schema, and their run-time validation.

Every parameter of a node's :class:`~recon_ros.ros.schema.NodeSchema` becomes a ROS parameter
with its description, range (IntegerRange / FloatingPointRange) and ``read_only`` unless the
schema marks it dynamic. Changes at run time go through the schema's validation; a rejected
change leaves the configuration untouched and returns the reason to the caller
(``ros2 param set`` prints it).
"""
from __future__ import annotations

from typing import Any, Callable

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)

from recon_ros.config import ParamSpec
from recon_ros.errors import UserInputError
from recon_ros.ros.schema import NodeSchema

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
_FLOAT_INF = 1.0e300


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ParameterDescriptor of one schema entry."""
    rng = spec.describe_range()
    text = spec.doc + (f" ({rng})" if rng else "") + ("" if spec.dynamic else " [read-only at run time]")
    d = ParameterDescriptor(name=spec.name, description=text, read_only=not spec.dynamic)
    if spec.type in _TYPES:
        d.type = _TYPES[spec.type]
    # Floats accept integers written in YAML ("voxel_size_m: 1"); lists accept any element type.
    # The schema validates both.
    d.dynamic_typing = spec.type in (float, list)
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(str(c) for c in spec.choices)
    if spec.type is int and (spec.min is not None or spec.max is not None):
        d.integer_range = [IntegerRange(
            from_value=int(spec.min) if spec.min is not None else -(2 ** 63),
            to_value=int(spec.max) if spec.max is not None else 2 ** 63 - 1, step=0)]
    if spec.type is float and (spec.min is not None or spec.max is not None):
        d.floating_point_range = [FloatingPointRange(
            from_value=float(spec.min) if spec.min is not None else -_FLOAT_INF,
            to_value=float(spec.max) if spec.max is not None else _FLOAT_INF, step=0.0)]
    return d


def declare_all(node: Any, schema: NodeSchema) -> None:
    """Declare every schema parameter on ``node`` (launch/YAML overrides are applied by rclpy)."""
    for spec in schema.specs():
        default = list(spec.default) if spec.type is list else spec.default
        node.declare_parameter(spec.name, default, descriptor(spec))


def read_all(node: Any, schema: NodeSchema) -> None:
    """Copy the declared values (defaults or overrides) into the schema, validating each.

    Raises UserInputError naming the first bad value.
    """
    for name in schema.names():
        value = node.get_parameter(name).value
        if value is None:
            continue
        schema.set(name, value)


def on_set_callback(schema: NodeSchema,
                    on_applied: Callable[[dict], None]) -> Callable[[list], SetParametersResult]:
    """The add_on_set_parameters_callback function: all-or-nothing validation of a batch."""

    def callback(params: list) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        reason = schema.check_runtime_change(changes)
        if reason is not None:
            return SetParametersResult(successful=False, reason=reason)
        try:
            applied = schema.apply(changes)
        except UserInputError as exc:  # already checked; kept for safety
            return SetParametersResult(successful=False, reason=str(exc))
        if applied:
            on_applied(applied)
        return SetParametersResult(successful=True, reason="")

    return callback
