"""Replay a bag made by `recon-ros convert` (ScanNet / ARKitScenes) through the live pipeline.

    ros2 launch recon_ros replay.launch.py bag:=/data/scene0000_00_bag

Topics are the converter's (RealSense names): /camera/color/image_raw, /camera/color/camera_info,
/camera/aligned_depth_to_color/image_raw; its /tf_static holds base_link -> camera_link ->
camera_color_optical_frame, so the body frame is base_link.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PythonExpression

DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"

ARGUMENTS = [
    ("bag", "", "bag written by `recon-ros convert` (required)"),
    ("bag_rate", "1.0", "playback rate"),
    ("use_depth", "true", "use the aligned depth for metric scale"),
    ("device", "cuda", "torch device of the model"),
    ("checkpoint", "", "Spann3R checkpoint file"),
    ("params_file", "", "YAML parameter file; default: the package's config/recon.yaml"),
    ("rviz", "true", "start RViz"),
    ("refiner", "false", "start recon_refiner"),
    ("log_level", "info", "log level"),
]


def generate_launch_description() -> LaunchDescription:
    live = os.path.join(get_package_share_directory("recon_ros"), "launch", "live.launch.py")
    depth_topic = PythonExpression([f"'{DEPTH_TOPIC}' if '", LaunchConfiguration("use_depth"),
                                    "'.lower() in ('1', 'true', 'yes', 'on') else ''"])
    forwarded = {name: LaunchConfiguration(name) for name, _, _ in ARGUMENTS if name != "use_depth"}
    forwarded.update({
        "image_topic": "/camera/color/image_raw",
        "camera_info_topic": "/camera/color/camera_info",
        "depth_topic": depth_topic,
        "base_frame": "base_link",
    })
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=doc) for name, default, doc in ARGUMENTS]
        + [IncludeLaunchDescription(PythonLaunchDescriptionSource(live), launch_arguments=forwarded.items())])
