"""Launch files, evaluated: each launch file is run under the launch stand-in (a test double of
``launch`` / ``launch_ros``, test/rclpy_standin) for given arguments and the actions it produces
(nodes, their parameters and remappings, the bag player, sim time) are checked. Starting them for
real is test_ros_live.py (marked ``ros``). rviz/recon.rviz is YAML with the fixed frame map and
QoS matching the publishers."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from rclpy_standin import installed

REPO = Path(__file__).resolve().parents[1]
LIVE_ARGS = {"image_topic", "camera_info_topic", "depth_topic", "params_file", "namespace", "device",
             "checkpoint", "use_sim_time", "bag", "bag_rate", "rviz", "rviz_config", "refiner",
             "autostart", "log_level"}


def _arguments(path: Path) -> tuple[ast.Module, dict]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ARGUMENTS" for t in node.targets):
            args = ast.literal_eval(node.value)
            return tree, {name: (default, doc) for name, default, doc in args}
    raise AssertionError(f"{path.name} has no ARGUMENTS table")


def _load(name: str):
    """Import a launch file (under the launch stand-in, a test double, see test/rclpy_standin)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), REPO / "launch" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _evaluate(name: str, **given: str) -> tuple[dict, list]:
    """Declared arguments and the flat list of actions the launch file produces for ``given``."""
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction, TimerAction
    ld = _load(name).generate_launch_description()
    declared = {e.name: e for e in ld.entities if isinstance(e, DeclareLaunchArgument)}
    unknown = set(given) - set(declared)
    assert not unknown, f"not launch arguments: {unknown}"
    context = LaunchContext({**{k: d.default_value for k, d in declared.items()}, **given})
    actions, todo = [], [e for e in ld.entities if not isinstance(e, DeclareLaunchArgument)]
    while todo:
        a = todo.pop(0)
        actions.append(a)
        if isinstance(a, OpaqueFunction):
            todo[:0] = a.execute(context)
        elif isinstance(a, (GroupAction, TimerAction)):
            todo[:0] = a.actions
    return declared, actions


def _nodes(actions: list) -> dict:
    from launch_ros.actions import Node
    return {a.executable: a for a in actions if isinstance(a, Node)}


def _overrides(node) -> dict:
    out = {}
    for p in node.parameters:
        if isinstance(p, dict):
            out.update(p)
    return out


@pytest.fixture
def launch_standin():
    with installed():
        yield


def test_live_launch_declares_every_argument(launch_standin):
    declared, _ = _evaluate("live.launch.py")
    assert LIVE_ARGS <= set(declared), LIVE_ARGS - set(declared)
    assert all(len(d.description) > 10 for d in declared.values())
    _, table = _arguments(REPO / "launch" / "live.launch.py")
    assert {k: d.default_value for k, d in declared.items()} == {k: v[0] for k, v in table.items()}


def test_live_launch_defaults_start_recon_node_and_rviz(launch_standin):
    from launch.actions import ExecuteProcess
    from launch_ros.actions import SetParameter
    _, actions = _evaluate("live.launch.py")
    nodes = _nodes(actions)
    assert set(nodes) == {"recon_node", "rviz2"}  # refiner off, RViz on by default
    node = nodes["recon_node"]
    assert node.package == "recon_ros" and node.name == "recon_node"
    assert node.parameters[0] == str(REPO / "config" / "recon.yaml")  # the shipped parameter file first
    ov = _overrides(node)
    assert ov == {"model.runtime.device": "cuda", "lifecycle.autostart": True, "input.use_depth": False}
    remaps = dict(node.remappings)
    assert remaps["image"] == "/camera/color/image_raw" and remaps["camera_info"] == "/camera/color/camera_info"
    assert remaps["corrected_path"] == "recon_refiner/corrected_path" and "depth" not in remaps
    assert node.arguments[-2:] == ["--log-level", "info"]
    assert float(node.kwargs["sigterm_timeout"]) + float(node.kwargs["sigkill_timeout"]) == 60.0
    sim = [a for a in actions if isinstance(a, SetParameter)]
    assert [(a.name, a.value) for a in sim] == [("use_sim_time", False)]
    assert not [a for a in actions if isinstance(a, ExecuteProcess)]  # no bag, no player
    assert nodes["rviz2"].arguments == ["-d", str(REPO / "rviz" / "recon.rviz")]


def test_live_launch_with_a_bag_and_the_refiner(launch_standin, tmp_path):
    from launch.actions import ExecuteProcess, TimerAction
    from launch_ros.actions import SetParameter
    params = tmp_path / "p.yaml"
    params.write_text("/**:\n  ros__parameters: {}\n")
    _, actions = _evaluate("live.launch.py", bag="/data/b", bag_rate="0.5", bag_delay="2.0", rviz="false",
                           refiner="true", device="cpu", base_frame="camera_link", autostart="false",
                           depth_topic="/d", params_file=str(params), checkpoint="/c.pth", log_level="debug")
    nodes = _nodes(actions)
    assert set(nodes) == {"recon_node", "recon_refiner"}
    assert [(a.name, a.value) for a in actions if isinstance(a, SetParameter)] == [("use_sim_time", True)]
    ov = _overrides(nodes["recon_node"])
    assert ov == {"model.runtime.device": "cpu", "lifecycle.autostart": False, "input.use_depth": True,
                  "model.checkpoint": "/c.pth", "frames.base_frame": "camera_link"}
    assert nodes["recon_node"].parameters[0] == str(params)
    assert dict(nodes["recon_node"].remappings)["depth"] == "/d"
    assert dict(nodes["recon_refiner"].remappings) == {"keyframes": "recon_node/keyframes",
                                                      "keyframe_info": "recon_node/keyframe_info",
                                                      "path": "recon_node/keyframe_poses"}
    assert nodes["recon_refiner"].parameters == [str(params)]
    timer = next(a for a in actions if isinstance(a, TimerAction))
    assert timer.period == 2.0
    play = next(a for a in timer.actions if isinstance(a, ExecuteProcess))
    assert play.cmd == ["ros2", "bag", "play", "/data/b", "--clock", "--rate", "0.5"]


def test_launch_overrides_are_schema_parameters(launch_standin):
    from recon_ros.ros.schema import recon_node_schema
    names = set(recon_node_schema().names())
    _, actions = _evaluate("live.launch.py", checkpoint="/c.pth", base_frame="b", odom_frame="o",
                           depth_topic="/d")
    ov = _overrides(_nodes(actions)["recon_node"])
    assert len(ov) == 6 and set(ov) <= names, set(ov) - names


def test_replay_launch_uses_converter_topics_and_live_arguments(launch_standin):
    from launch import LaunchContext, perform
    from launch.actions import IncludeLaunchDescription
    declared, actions = _evaluate("replay.launch.py", bag="/data/scan")
    include = next(a for a in actions if isinstance(a, IncludeLaunchDescription))
    assert include.launch_description_source.location == str(REPO / "launch" / "live.launch.py")
    live_declared, _ = _evaluate("live.launch.py")
    for use_depth, depth in (("true", "/camera/aligned_depth_to_color/image_raw"), ("false", "")):
        context = LaunchContext({**{k: d.default_value for k, d in declared.items()}, "bag": "/data/scan",
                                 "use_depth": use_depth})
        forwarded = {k: perform(v, context) for k, v in include.launch_arguments}
        assert set(forwarded) <= set(live_declared), set(forwarded) - set(live_declared)
        assert forwarded["bag"] == "/data/scan" and forwarded["depth_topic"] == depth
        assert forwarded["image_topic"] == "/camera/color/image_raw"
        assert forwarded["camera_info_topic"] == "/camera/color/camera_info"
        assert forwarded["base_frame"] == "base_link"  # the converter's static TF chain starts there


def test_rviz_config():
    cfg = yaml.safe_load((REPO / "rviz" / "recon.rviz").read_text())
    vm = cfg["Visualization Manager"]
    assert vm["Global Options"]["Fixed Frame"] == "map"
    displays = {d["Name"]: d for d in vm["Displays"]}
    cloud = displays["Map cloud"]
    assert cloud["Class"] == "rviz_default_plugins/PointCloud2" and cloud["Topic"]["Value"] == "/recon_node/map_cloud"
    assert cloud["Topic"]["Durability Policy"] == "Transient Local" and cloud["Topic"]["Reliability Policy"] == "Reliable"
    assert cloud["Color Transformer"] == "RGB8"
    path = displays["Keyframe path"]
    assert path["Topic"]["Value"] == "/recon_node/path" and path["Topic"]["Durability Policy"] == "Transient Local"
    assert displays["Camera image"]["Topic"]["Reliability Policy"] == "Best Effort"  # camera drivers
    assert "rviz_default_plugins/TF" in {d["Class"] for d in vm["Displays"]}
    mesh, grid = displays["Map mesh"], displays["Occupancy"]
    assert mesh["Class"] == "rviz_default_plugins/Marker" and mesh["Topic"]["Value"] == "/recon_node/map_mesh"
    assert grid["Class"] == "rviz_default_plugins/Map" and grid["Topic"]["Value"] == "/recon_node/occupancy"
    for d in (mesh, grid):  # both are latched by the node: a volatile display would miss them
        assert d["Topic"]["Durability Policy"] == "Transient Local" and d["Topic"]["Reliability Policy"] == "Reliable"


def test_launch_parameter_overrides_exist_in_the_node_schema():
    """Every dotted parameter name a launch file sets must be a real recon_node parameter."""
    import re

    from recon_ros.ros.schema import recon_node_schema
    names = set(recon_node_schema().names())
    for launch in ("live.launch.py", "replay.launch.py"):
        src = (REPO / "launch" / launch).read_text()
        keys = set(re.findall(r'"([a-z_]+(?:\.[a-z_0-9]+)+)"\s*:', src))
        if launch == "live.launch.py":
            assert "model.runtime.device" in keys  # the parser sees the overrides
        unknown = {k for k in keys if k not in names}
        assert not unknown, f"{launch} sets unknown parameters {unknown}"


def test_shipped_parameter_file_is_generated_from_the_schema():
    """config/recon.yaml must be exactly what `recon-ros config --node` prints (regenerate it
    with that command after changing the schema)."""
    from recon_ros.commands.config import render
    assert (REPO / "config" / "recon.yaml").read_text() == render(node=True)
