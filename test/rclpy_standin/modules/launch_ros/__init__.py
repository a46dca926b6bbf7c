"""Test double for launch_ros (see launch/__init__.py of the stand-in)."""
