"""ROS parameters declared from the one schema, and their run-time validation.

Every parameter of a node's :class:`~recon_ros.ros.schema.NodeSchema` becomes a ROS parameter
with its description and range (IntegerRange / FloatingPointRange). Parameters the schema does not
mark dynamic are ``read_only`` for a plain node; a lifecycle node accepts them while it is
unconfigured (they take effect at ``configure``) and refuses them with the reason otherwise. Changes at run time go through the schema's validation; a rejected
change leaves the configuration untouched and returns the reason to the caller
(``ros2 param set`` prints it).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)

from recon_ros.config import ParamSpec
from recon_ros.errors import UserInputError
from recon_ros.ros.schema import NodeSchema

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
_FLOAT_INF = 1.0e300


def descriptor(spec: ParamSpec, lifecycle: bool = False) -> ParameterDescriptor:
    """The ParameterDescriptor of one schema entry (``lifecycle``: static ones settable while
    the node is unconfigured, so not ``read_only`` for rclpy)."""
    rng = spec.describe_range()
    note = "" if spec.dynamic else (" [set while unconfigured]" if lifecycle else " [read-only at run time]")
    text = spec.doc + (f" ({rng})" if rng else "") + note
    d = ParameterDescriptor(name=spec.name, description=text, read_only=not (spec.dynamic or lifecycle))
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


def declare_all(node: Any, schema: NodeSchema, lifecycle: bool = False) -> None:
    """Declare every schema parameter on ``node`` (launch/YAML overrides are applied by rclpy)."""
    for spec in schema.specs():
        default = list(spec.default) if spec.type is list else spec.default
        node.declare_parameter(spec.name, default, descriptor(spec, lifecycle))


def read_all(node: Any, schema: NodeSchema) -> None:
    """Copy the declared values (defaults or overrides) into the schema, validating each.

    Raises UserInputError naming the first bad value.
    """
    for name in schema.names():
        value = node.get_parameter(name).value
        if value is None:
            continue
        schema.set(name, value)


def on_set_callback(schema: NodeSchema, on_applied: Callable[[dict], None],
                    static_allowed: Optional[Callable[[], bool]] = None,
                    apply: Optional[Callable[[Callable[[], dict]], dict]] = None,
                    ) -> Callable[[list], SetParametersResult]:
    """The add_on_set_parameters_callback function: all-or-nothing validation of a batch.

    ``static_allowed()`` says whether non-dynamic parameters may change now (a lifecycle node
    while unconfigured); ``apply(fn)`` runs the store ``fn`` where the configuration's reader
    lives (e.g. on the worker thread) and returns its result.
    """

    def callback(params: list) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        allow = static_allowed is not None and static_allowed()
        reason = schema.check_runtime_change(changes, allow_static=allow,
                                             lifecycle=static_allowed is not None)
        if reason is not None:
            return SetParametersResult(successful=False, reason=reason)
        try:
            applied = apply(lambda: schema.apply(changes)) if apply is not None else schema.apply(changes)
        except Exception as exc:  # checked already; a store that cannot run is reported
            return SetParametersResult(successful=False, reason=str(exc))
        if applied:
            on_applied(applied)
        return SetParametersResult(successful=True, reason="")

    return callback


def coerce_floats(schema: NodeSchema, params: list) -> list:
    """Integers given for float parameters become floats (``ros2 param set x 2`` stores 2.0)."""
    from rclpy.parameter import Parameter
    out = []
    for p in params:
        spec = schema._specs.get(p.name)
        if spec is not None and spec.type is float and isinstance(p.value, int) and not isinstance(p.value, bool):
            p = Parameter(p.name, value=float(p.value))  # the type follows the value: double
        out.append(p)
    return out


def add_callbacks(node: Any, schema: NodeSchema, on_applied: Callable[[dict], None],
                  static_allowed: Optional[Callable[[], bool]] = None,
                  apply: Optional[Callable[[Callable[[], dict]], dict]] = None) -> None:
    """Register the validation (and, where rclpy has it, the int -> float coercion) on ``node``."""
    if hasattr(node, "add_pre_set_parameters_callback"):  # rclpy >= Jazzy
        node.add_pre_set_parameters_callback(lambda ps: coerce_floats(schema, ps))
    node.add_on_set_parameters_callback(on_set_callback(schema, on_applied, static_allowed, apply))
