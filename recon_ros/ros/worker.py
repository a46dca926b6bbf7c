"""The GPU worker: one thread that owns the model, fed "latest frame wins".

Subscription callbacks never run inference: they hand frames to :meth:`GpuWorker.submit`, which
only replaces the single pending slot (the replaced frame is counted as dropped) and returns at
once. Control operations (reset, corrections, saving, map publishing) go through
:meth:`GpuWorker.call`, a FIFO served before the next frame, so the core is only ever touched from
this one thread and needs no lock. Pure Python; no ROS.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T")
_log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    """Counters of a :class:`GpuWorker` (a snapshot)."""

    submitted: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the pending slot before the worker got to them
    failed: int = 0  # the frame handler raised
    busy: bool = False
    last_ms: float = 0.0
    mean_ms: float = 0.0  # exponential moving average of the handler time


class GpuWorker(Generic[T]):
    """A single background thread with a latest-wins frame slot and a task queue."""

    def __init__(self, handle_frame: Callable[[T], None], name: str = "recon_worker",
                 on_error: Optional[Callable[[BaseException], None]] = None, nice: int = 0) -> None:
        """``nice``: raise this thread's Linux nice level by that much (its CPU share under load
        yields to the process's other threads; elsewhere ignored)."""
        self._handle = handle_frame
        self._nice = int(nice)
        self._on_error = on_error
        self._name = name
        self._cv = threading.Condition()
        self._pending: Optional[T] = None
        self._has_pending = False
        self._tasks: deque = deque()
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self._stats = WorkerStats()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Finish the current item and the queued tasks, drop the pending frame, join the thread.

        Returns False when the thread did not end within ``timeout``.
        """
        with self._cv:
            self._stop = True
            if self._has_pending:
                self._stats.dropped += 1
            self._pending, self._has_pending = None, False
            self._cv.notify_all()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        if not alive:
            self._thread = None
        return not alive

    def on_thread(self) -> bool:
        """Whether the caller runs on this worker's thread (where waiting for it deadlocks)."""
        return self._thread is not None and threading.current_thread() is self._thread

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop

    # -- feeding -----------------------------------------------------------------------------
    def submit(self, item: T) -> bool:
        """Offer a frame; never blocks. Returns True when it replaced (dropped) a pending one."""
        with self._cv:
            self._stats.submitted += 1
            replaced = self._has_pending
            if replaced:
                self._stats.dropped += 1
            self._pending, self._has_pending = item, True
            self._cv.notify()
            return replaced

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Run ``fn`` on the worker thread before the next frame; the Future carries its result."""
        fut: Future = Future()
        with self._cv:
            if self._stop or self._thread is None:
                fut.set_exception(RuntimeError("the worker is not running"))
                return fut
            self._tasks.append((fut, fn, args, kwargs))
            self._cv.notify()
        return fut

    def clear_pending(self) -> int:
        """Forget the pending frame (counted as dropped); returns how many were forgotten."""
        with self._cv:
            n = int(self._has_pending)
            self._stats.dropped += n
            self._pending, self._has_pending = None, False
            return n

    # -- observing ---------------------------------------------------------------------------
    def stats(self) -> WorkerStats:
        with self._cv:
            return WorkerStats(**self._stats.__dict__)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until nothing is pending, queued or running (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._has_pending or self._tasks or self._stats.busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    # -- the thread --------------------------------------------------------------------------
    def _lower_priority(self) -> None:
        """Linux schedules threads on their own: the nice level of this thread's id applies to
        this thread only."""
        if self._nice <= 0 or not sys.platform.startswith("linux"):
            return
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self._nice))
        except OSError as exc:
            _log.warning("could not lower the priority of thread %s: %s", self._name, exc)

    def _run(self) -> None:
        self._lower_priority()
        while True:
            with self._cv:
                while not (self._stop or self._tasks or self._has_pending):
                    self._cv.wait()
                if self._tasks:
                    task = self._tasks.popleft()
                    frame, is_frame = None, False
                elif self._has_pending and not self._stop:
                    task = None
                    frame, is_frame = self._pending, True
                    self._pending, self._has_pending = None, False
                else:  # stopping with nothing left to do
                    self._cv.notify_all()
                    return
                self._stats.busy = True
            try:
                if is_frame:
                    self._run_frame(frame)
                else:
                    self._run_task(task)
            finally:
                with self._cv:
                    self._stats.busy = False
                    self._cv.notify_all()

    def _run_task(self, task: tuple) -> None:
        fut, fn, args, kwargs = task
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller through the Future
            fut.set_exception(exc)

    def _run_frame(self, frame: Any) -> None:
        t0 = time.perf_counter()
        ok = True
        try:
            self._handle(frame)
        except Exception as exc:  # a bad frame must not kill the worker
            ok = False
            try:
                if self._on_error is None:
                    raise exc
                self._on_error(exc)
            except Exception:  # a failing error handler must not kill the worker either
                _log.exception("frame handler failed")
        ms = (time.perf_counter() - t0) * 1e3
        with self._cv:
            st = self._stats
            st.processed += int(ok)
            st.failed += int(not ok)
            st.last_ms = ms
            st.mean_ms = ms if st.processed + st.failed == 1 else 0.9 * st.mean_ms + 0.1 * ms
