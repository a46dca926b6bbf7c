"""Our node classes never shadow attributes of rclpy's Node / LifecycleNode.

rclpy keeps a node's timers, services, clients, subscriptions, publishers, parameters ... in
private attributes (``Node._timers``, ``Node._services`` ...). A subclass that assigns one of those
names silently hides its entities from the executor (lifecycle and parameter services never
answer, timers never fire). With a real rclpy importable (a sourced ROS 2) the names come from the
real base classes; otherwise from the list below (rclpy Jazzy's ``node.py``, ``lifecycle/node.py``
and ``lifecycle/managed_entity.py``). Our attribute names are read from the node modules' source
(every ``self.<name> = ...``), so the check does not depend on the stand-in.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rclpy_standin import installed, real_rclpy_available

REPO = Path(__file__).resolve().parents[1]
NODE_MODULES = {"ReconNode": REPO / "recon_ros" / "ros" / "recon_node.py",
                "RefinerNode": REPO / "recon_ros" / "ros" / "refiner_node.py"}

# rclpy (Jazzy) Node / LifecycleNode instance attributes, name-mangled ones included.
RCLPY_PRIVATE = {
    "_Node__executor_weakref", "_Node__handle", "_Node__node", "_Node__waitables",
    "_allow_undeclared_parameters", "_callbacks", "_clients", "_clock", "_context",
    "_default_callback_group", "_descriptors", "_enabled", "_guards", "_logger", "_logger_service",
    "_managed_entities", "_parameter_event_publisher", "_parameter_overrides", "_parameter_service",
    "_parameters", "_post_set_parameters_callbacks", "_pre_set_parameters_callbacks", "_publishers",
    "_rate_group", "_service_change_state", "_service_get_available_states",
    "_service_get_available_transitions", "_service_get_state", "_service_get_transition_graph",
    "_services", "_state_machine", "_subscriptions", "_time_source", "_timers",
    "_type_description_service", "_waitables", "_executor", "_name", "_namespace",
}


def assigned_attributes(path: Path, cls_name: str) -> set[str]:
    """Every ``self.<name>`` assigned (plain or annotated) in the methods of ``cls_name``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
    names = set()
    for node in ast.walk(cls):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        for t in targets:
            for el in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if isinstance(el, ast.Attribute) and isinstance(el.value, ast.Name) and el.value.id == "self":
                    names.add(el.attr)
    return names


def real_base_attributes() -> set[str]:
    """Instance and class attribute names of a real, bare rclpy LifecycleNode (includes Node's)."""
    import rclpy
    from rclpy.lifecycle import LifecycleNode
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        probe = LifecycleNode("recon_ros_attribute_probe", context=context)
        try:
            return set(vars(probe)) | set(dir(LifecycleNode))
        finally:
            probe.destroy_node()
    finally:
        rclpy.shutdown(context=context)


@pytest.fixture(scope="module")
def base_names() -> set[str]:
    if real_rclpy_available():
        names = real_base_attributes()
        assert "_timers" in names and "_services" in names  # the probe really sees rclpy's own
        return names
    return RCLPY_PRIVATE | {"get_logger", "get_clock", "destroy_node", "create_timer", "create_service"}


@pytest.mark.parametrize("cls_name", sorted(NODE_MODULES))
def test_node_classes_assign_no_rclpy_attribute(cls_name, base_names):
    ours = assigned_attributes(NODE_MODULES[cls_name], cls_name)
    assert len(ours) > 10  # the scan sees the node's attributes
    clash = ours & base_names
    assert not clash, f"{cls_name} assigns rclpy's own attribute(s) {sorted(clash)}: rename them"


def test_the_scan_catches_a_shadowing_assignment(tmp_path, base_names):
    src = tmp_path / "node.py"
    src.write_text("class N:\n    def __init__(self):\n        self._timers = []\n        self._mine = 1\n"
                   "        self._a, self._services = 1, []\n")
    assert assigned_attributes(src, "N") & base_names == {"_timers", "_services"}


def test_configured_stand_in_nodes_hold_no_rclpy_private_name(tmp_path):
    """The same at run time, on configured and active nodes (stand-in): every instance attribute
    the node added on top of its stand-in base."""
    with installed():
        import recon_ros.ros.recon_node as recon_node
        import recon_ros.ros.refiner_node as refiner_node
        from rclpy.lifecycle import LifecycleNode
        from rclpy.node import Node
        from rclpy.parameter import Parameter
        from rclpy_standin.doubles import FakeCoreConfig, FakeReconstructor, FakeRefiner

        node = recon_node.ReconNode(core_cls=FakeCoreConfig, reconstructor_factory=FakeReconstructor,
                                    parameter_overrides=[Parameter(name="save.on_shutdown", value=False)])
        node.trigger_configure()
        node.trigger_activate()
        added = set(vars(node)) - set(vars(LifecycleNode("bare")))
        assert "_worker" in added and not added & RCLPY_PRIVATE, sorted(added & RCLPY_PRIVATE)
        node.finish()
        ref = refiner_node.RefinerNode(core_cls=FakeCoreConfig, refiner_factory=FakeRefiner)
        added = set(vars(ref)) - set(vars(Node("bare")))
        assert "_store" in added and not added & RCLPY_PRIVATE, sorted(added & RCLPY_PRIVATE)


@pytest.mark.ros
@pytest.mark.parametrize("cls_name", sorted(NODE_MODULES))
def test_against_the_real_rclpy(cls_name):
    """The same check against the sourced ROS 2's own Node / LifecycleNode (marked ``ros``)."""
    if not real_rclpy_available():
        pytest.fail("marked ros but no real rclpy is importable: source a ROS 2 installation")
    names = real_base_attributes()
    assert {"_timers", "_services", "_subscriptions"} <= names
    clash = assigned_attributes(NODE_MODULES[cls_name], cls_name) & names
    assert not clash, f"{cls_name} assigns rclpy's own attribute(s) {sorted(clash)}"
