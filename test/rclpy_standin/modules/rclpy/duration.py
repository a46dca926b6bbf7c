"""Test double for rclpy.duration.Duration."""


class Duration:
    def __init__(self, seconds=0, nanoseconds=0):
        self.nanoseconds = int(seconds * 1_000_000_000) + int(nanoseconds)
