"""Test double: message package backed by rosbags classes."""
