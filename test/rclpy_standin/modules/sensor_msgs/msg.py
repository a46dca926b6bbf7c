"""Test double: sensor_msgs message classes from the rosbags typestore."""
from _rosbags_msgs import package_types

globals().update(package_types("sensor_msgs"))
