"""Test double for std_srvs."""
