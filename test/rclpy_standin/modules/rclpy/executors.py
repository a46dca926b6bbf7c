"""Test double for rclpy.executors (tests call callbacks directly; there is no event loop).

``spin_once`` calls the hook ``on_spin_once(executor)`` when a test set one (e.g. to send a
signal or request a shutdown), then returns: each call is one "tick" of the loop."""


class ExternalShutdownException(Exception):
    pass


class MultiThreadedExecutor:
    def __init__(self, num_threads=None, context=None):
        self.nodes = []

    def add_node(self, node):
        self.nodes.append(node)

        self.spins = 0
        self.is_shutdown = False

    on_spin_once = None  # class-level hook for tests

    def spin(self):
        raise KeyboardInterrupt  # the stand-in has no event loop: behave like Ctrl-C at once

    def spin_once(self, timeout_sec=None):
        self.spins += 1
        hook = type(self).on_spin_once
        if hook is not None:
            hook(self)

    def shutdown(self, timeout_sec=None):
        self.is_shutdown = True
        return True
