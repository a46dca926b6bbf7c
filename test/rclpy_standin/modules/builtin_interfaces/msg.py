"""Test double: builtin_interfaces message classes from the rosbags typestore."""
from _rosbags_msgs import package_types

globals().update(package_types("builtin_interfaces"))
