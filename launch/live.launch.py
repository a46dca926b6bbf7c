"""Live reconstruction: recon_node (+ recon_refiner, RViz, optional bag playback).

    ros2 launch recon_ros live.launch.py image_topic:=/camera/color/image_raw \
        camera_info_topic:=/camera/color/camera_info checkpoint:=/path/to/spann3r.pth
    ros2 launch recon_ros live.launch.py bag:=/data/scene0000_00 base_frame:=base_link

With ``bag:=`` the bag is played with ``--clock`` and ``use_sim_time`` is turned on for every node.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, ExecuteProcess, GroupAction, LogInfo,
                            OpaqueFunction, TimerAction)
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node, PushRosNamespace, SetParameter

PKG = "recon_ros"

ARGUMENTS = [
    ("image_topic", "/camera/color/image_raw", "colour image topic (sensor_msgs/Image; its '/compressed' sibling with image_transport:=compressed in the params file)"),
    ("camera_info_topic", "/camera/color/camera_info", "CameraInfo of the colour image"),
    ("depth_topic", "", "aligned depth image (16UC1 mm or 32FC1 m) for metric scale; empty: none"),
    ("params_file", "", "YAML parameter file (/**: ros__parameters:); default: the package's config/recon.yaml"),
    ("namespace", "", "namespace of the nodes"),
    ("device", "cuda", "torch device of the model (cuda, cuda:1, cpu)"),
    ("checkpoint", "", "Spann3R checkpoint file; empty: the one in the parameter file"),
    ("base_frame", "", "robot body frame (e.g. base_link, camera_link); empty: the image's camera frame"),
    ("odom_frame", "", "odometry frame; when set, map -> odom is published instead of map -> base"),
    ("use_sim_time", "false", "use /clock (forced on when bag is set)"),
    ("bag", "", "rosbag2 to play with --clock (turns use_sim_time on everywhere)"),
    ("bag_rate", "1.0", "playback rate of the bag"),
    ("bag_delay", "5.0", "seconds to wait before playing the bag (model loading)"),
    ("rviz", "true", "start RViz (rviz_config)"),
    ("rviz_config", "", "RViz config; default: the package's rviz/recon.rviz"),
    ("refiner", "false", "start recon_refiner (background global alignment and depth refinement)"),
    ("autostart", "true", "configure and activate recon_node at start (false: manage its lifecycle yourself)"),
    ("log_level", "info", "log level of the nodes (debug, info, warn, error)"),
    ("shutdown_timeout", "60", "seconds recon_node may take after Ctrl-C (its shutdown save) before the launch kills it"),
]


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _setup(context, *args, **kwargs):
    arg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    share = get_package_share_directory(PKG)
    params_file = arg["params_file"] or os.path.join(share, "config", "recon.yaml")
    rviz_config = arg["rviz_config"] or os.path.join(share, "rviz", "recon.rviz")
    bag = arg["bag"]
    sim_time = bool(bag) or _truthy(arg["use_sim_time"])
    log_args = ["--ros-args", "--log-level", arg["log_level"]]

    overrides = {"model.runtime.device": arg["device"], "lifecycle.autostart": _truthy(arg["autostart"]),
                 "input.use_depth": bool(arg["depth_topic"])}
    if arg["checkpoint"]:
        overrides["model.checkpoint"] = arg["checkpoint"]
    if arg["base_frame"]:
        overrides["frames.base_frame"] = arg["base_frame"]
    if arg["odom_frame"]:
        overrides["frames.odom_frame"] = arg["odom_frame"]
    params = ([params_file] if os.path.isfile(params_file) else []) + [overrides]

    remaps = [("image", arg["image_topic"]), ("image/compressed", arg["image_topic"] + "/compressed"),
              ("camera_info", arg["camera_info_topic"]), ("corrected_path", "recon_refiner/corrected_path"),
              ("refined_keyframes", "recon_refiner/refined_keyframes")]
    if arg["depth_topic"]:
        remaps.append(("depth", arg["depth_topic"]))

    actions = [SetParameter(name="use_sim_time", value=sim_time)]
    if arg["namespace"]:
        actions.append(PushRosNamespace(arg["namespace"]))
    # SIGINT, then SIGTERM after sigterm_timeout, SIGKILL after sigkill_timeout: both signals
    # only ask the node to finish, so the whole timeout is available to the shutdown save
    wait = str(max(float(arg["shutdown_timeout"]) / 2.0, 1.0))
    actions.append(Node(package=PKG, executable="recon_node", name="recon_node", output="screen",
                        parameters=params, remappings=remaps, arguments=log_args,
                        sigterm_timeout=wait, sigkill_timeout=wait))
    if _truthy(arg["refiner"]):
        actions.append(Node(package=PKG, executable="recon_refiner", name="recon_refiner", output="screen",
                            parameters=([params_file] if os.path.isfile(params_file) else []),
                            remappings=[("keyframes", "recon_node/keyframes"),
                                        ("keyframe_info", "recon_node/keyframe_info"),
                                        ("path", "recon_node/keyframe_poses")],
                            arguments=log_args))
    if _truthy(arg["rviz"]):
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", output="log",
                            arguments=["-d", rviz_config]))
    out = [GroupAction(actions)]
    if bag:
        out.append(LogInfo(msg=f"playing {bag} with --clock at rate {arg['bag_rate']} in {arg['bag_delay']} s"))
        out.append(TimerAction(period=float(arg["bag_delay"]), actions=[ExecuteProcess(
            cmd=["ros2", "bag", "play", bag, "--clock", "--rate", arg["bag_rate"]], output="screen")]))
    return out


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=doc) for name, default, doc in ARGUMENTS]
        + [OpaqueFunction(function=_setup)])
