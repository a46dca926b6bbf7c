"""Test double for rclpy (see test/rclpy_standin/__init__.py): init/shutdown only."""
_state = {"ok": False}


def init(args=None, context=None):
    _state["ok"] = True


def ok(context=None):
    return _state["ok"]


def shutdown(context=None):
    _state["ok"] = False


def try_shutdown(context=None):
    _state["ok"] = False
