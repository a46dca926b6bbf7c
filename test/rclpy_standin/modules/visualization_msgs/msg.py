"""Test double: visualization_msgs message classes from the rosbags typestore."""
from _rosbags_msgs import package_types

globals().update(package_types("visualization_msgs"))
