"""Launch files and the RViz config, checked statically (the ``launch`` package is ROS-only):
parsed with ast, every documented argument declared, referenced executables and paths exist;
rviz/recon.rviz is YAML with the fixed frame map and QoS matching the publishers."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

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


def test_live_launch_declares_every_argument():
    tree, args = _arguments(REPO / "launch" / "live.launch.py")
    assert LIVE_ARGS <= set(args), LIVE_ARGS - set(args)
    assert all(len(doc) > 10 for _, doc in args.values())
    src = (REPO / "launch" / "live.launch.py").read_text()
    assert "generate_launch_description" in {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}
    for needed in ('"--clock"', 'name="use_sim_time"', '"recon_node"', '"recon_refiner"', '"rviz2"',
                   '"lifecycle.autostart"', '"model.runtime.device"'):
        assert needed in src, needed
    # Every argument is read inside the setup function.
    assert "for name, _, _ in ARGUMENTS" in src


def test_launch_overrides_are_schema_parameters():
    from recon_ros.config import iter_params
    from recon_ros.ros.schema import ReconNodeConfig
    names = {s.name for s in iter_params(ReconNodeConfig)}
    src = (REPO / "launch" / "live.launch.py").read_text()
    for name in ("lifecycle.autostart", "input.use_depth", "frames.base_frame", "frames.odom_frame"):
        assert f'"{name}"' in src and name in names


def test_replay_launch_uses_converter_topics_and_live_arguments():
    tree, args = _arguments(REPO / "launch" / "replay.launch.py")
    _, live = _arguments(REPO / "launch" / "live.launch.py")
    src = (REPO / "launch" / "replay.launch.py").read_text()
    assert "bag" in args
    for topic in ("/camera/color/image_raw", "/camera/color/camera_info", "/camera/aligned_depth_to_color/image_raw"):
        assert topic in src
    forwarded = set(args) - {"use_depth"} | {"image_topic", "camera_info_topic", "depth_topic", "base_frame"}
    assert forwarded <= set(live), forwarded - set(live)
    assert "live.launch.py" in src


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
