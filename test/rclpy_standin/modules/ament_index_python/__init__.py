"""Test double for ament_index_python (see launch/__init__.py of the stand-in)."""
