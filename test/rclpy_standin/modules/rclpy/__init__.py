"""Test double for rclpy (see test/rclpy_standin/__init__.py): init/shutdown only."""
_state = {"ok": False}


def init(args=None, context=None, domain_id=None, signal_handler_options=None):
    _state["ok"] = True
    _state["signal_handler_options"] = signal_handler_options


def ok(context=None):
    return _state["ok"]


def shutdown(context=None):
    _state["ok"] = False


def try_shutdown(context=None):
    _state["ok"] = False
