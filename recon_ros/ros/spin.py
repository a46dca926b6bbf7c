"""Running a node process: rclpy initialisation and a spin loop that ends cleanly on signals.

Both nodes use this: SIGINT (Ctrl-C, sent to the whole process group by a terminal *and*
forwarded by ``ros2 launch``) and SIGTERM only set the node's ``shutdown_requested`` event. No
KeyboardInterrupt is raised inside a callback or the shutdown work, and the rclpy context stays
valid until the node has finished (so final publications and the shutdown save succeed)::

    with signals_request_shutdown(node):
        try:
            spin_until_shutdown(node, executor)
        finally:
            ...  # shutdown work: save, destroy, rclpy.try_shutdown()
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, Iterator, Optional

import rclpy
from rclpy.executors import ExternalShutdownException

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def configure_process(node: Any) -> list[str]:
    """Apply the node's ``process.*`` parameters to this process (the executables call it once,
    before spinning): torch's CPU threads and the nice level. Returns what changed, also logged."""
    threads = int(node.get_parameter("process.cpu_threads").value)
    nice = int(node.get_parameter("process.nice").value)
    done = []
    if threads > 0:
        import torch
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
            done.append(f"{threads} torch CPU thread(s)")
    if nice > 0 and hasattr(os, "nice"):
        current = os.nice(0)
        if current < nice:
            os.nice(nice - current)
            done.append(f"nice {nice}")
    if done:
        node.get_logger().info(f"process: {', '.join(done)} (process.* parameters)")
    return done


def init_rclpy(args: Optional[list]) -> None:
    """``rclpy.init`` without rclpy's signal handlers (see :func:`signals_request_shutdown`)."""
    try:
        from rclpy.signals import SignalHandlerOptions
    except ImportError:  # an rclpy without selectable signal handling
        rclpy.init(args=args)
    else:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)


@contextlib.contextmanager
def signals_request_shutdown(node: Any) -> Iterator[list]:
    """While inside: SIGINT/SIGTERM set ``node.shutdown_requested`` (the yielded list collects the
    signal numbers); the previous handlers are restored on exit."""
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if not node.shutdown_requested.is_set():
            node.get_logger().info(f"{signal.Signals(signum).name}: shutting down")
        received.append(signum)
        node.shutdown_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def spin_until_shutdown(node: Any, executor: Any, period_s: float = 0.1) -> None:
    """Spin ``executor`` until ``node.shutdown_requested`` is set or the context is shut down."""
    while not node.shutdown_requested.is_set() and rclpy.ok():
        try:
            executor.spin_once(timeout_sec=period_s)
        except ExternalShutdownException:
            break
        except Exception as exc:  # e.g. rclpy raising for a lifecycle transition invalid in this state
            node.get_logger().error(f"a request could not be handled: {type(exc).__name__}: {exc}")
