"""Test double for rclpy.executors (tests call callbacks directly; spin is not supported)."""


class ExternalShutdownException(Exception):
    pass


class MultiThreadedExecutor:
    def __init__(self, num_threads=None, context=None):
        self.nodes = []

    def add_node(self, node):
        self.nodes.append(node)

    def spin(self):
        raise KeyboardInterrupt  # the stand-in has no event loop: behave like Ctrl-C at once
