"""Default topic names and frame ids, in one place for readers, writers and converters.

The defaults follow the RealSense ROS 2 wrapper (``/camera/color/image_raw`` etc.), which is what
most recorded RGB-D bags look like. Ground-truth poses written by the converters live in their own
TF namespace (``gt/world -> gt/camera``) so RViz can show them while readers ignore them unless
asked.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"

BASE_FRAME = "base_link"
CAMERA_LINK_FRAME = "camera_link"
CAMERA_OPTICAL_FRAME = "camera_color_optical_frame"
GT_WORLD_FRAME = "gt/world"
GT_CAMERA_FRAME = "gt/camera"

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
TF_TYPE = "tf2_msgs/msg/TFMessage"
POINTCLOUD2_TYPE = "sensor_msgs/msg/PointCloud2"
PATH_TYPE = "nav_msgs/msg/Path"
ODOMETRY_TYPE = "nav_msgs/msg/Odometry"
POSE_STAMPED_TYPE = "geometry_msgs/msg/PoseStamped"


@dataclass(frozen=True)
class CameraTopics:
    """Topic names of one camera stream.

    ``image`` carries sensor_msgs/Image; when ``compressed`` is used the colour stream is
    ``image + '/compressed'`` (the image_transport convention). ``depth`` is an aligned depth
    Image (16UC1 millimetres or 32FC1 metres) registered to the colour image; set it to None
    when there is none.
    """

    image: str = "/camera/color/image_raw"
    camera_info: str = "/camera/color/camera_info"
    depth: Optional[str] = "/camera/aligned_depth_to_color/image_raw"
    depth_info: Optional[str] = "/camera/aligned_depth_to_color/camera_info"
    tf: str = TF_TOPIC
    tf_static: str = TF_STATIC_TOPIC

    @property
    def compressed_image(self) -> str:
        return compressed_topic(self.image)

    def without_depth(self) -> "CameraTopics":
        return replace(self, depth=None, depth_info=None)


@dataclass(frozen=True)
class CameraFrames:
    """Frame ids written by the converters (REP-103 optical frame for the images)."""

    base: str = BASE_FRAME
    camera_link: str = CAMERA_LINK_FRAME
    optical: str = CAMERA_OPTICAL_FRAME
    gt_world: str = GT_WORLD_FRAME
    gt_camera: str = GT_CAMERA_FRAME


def compressed_topic(image_topic: str) -> str:
    """image_transport's name for the compressed stream of ``image_topic``."""
    return image_topic.rstrip("/") + "/compressed"


def sibling_topic(image_topic: str, name: str) -> str:
    """``/ns/image_raw`` -> ``/ns/<name>`` (e.g. the camera_info beside an image topic)."""
    base = image_topic.rstrip("/")
    if base.endswith("/compressed"):
        base = base[: -len("/compressed")]
    parent = base.rsplit("/", 1)[0] if "/" in base else ""
    return f"{parent}/{name}"
