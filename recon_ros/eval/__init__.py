"""Metrics (trajectory, surface, depth) and plots."""
