"""Test double: nav_msgs message classes from the rosbags typestore."""
from _rosbags_msgs import package_types

globals().update(package_types("nav_msgs"))
