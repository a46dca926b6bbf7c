"""Test double for rclpy.time.Time."""


class Time:
    def __init__(self, seconds=0, nanoseconds=0, clock_type=None):
        self.nanoseconds = int(seconds * 1_000_000_000) + int(nanoseconds)

    def to_msg(self):
        from builtin_interfaces.msg import Time as T
        return T(sec=self.nanoseconds // 1_000_000_000, nanosec=self.nanoseconds % 1_000_000_000)
