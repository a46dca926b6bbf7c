"""Test double for rcl_interfaces."""
