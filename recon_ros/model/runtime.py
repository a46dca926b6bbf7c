"""Execution modes of the Spann3R pair step over the fixed-capacity memory, and the host I/O.

``RuntimeConfig.mode`` selects how a step runs:

* ``eager``: :meth:`Spann3RNet.pair_step` over the growing :class:`SpatialMemory` (the
  reference's layout; handled by the stream itself, not by this module).
* ``static``: the same network over :class:`StaticMemory`: fixed shapes, no host
  synchronisation inside a step.
* ``graph``: ``static`` captured as CUDA graphs after ``graph_warmup`` eager steps and replayed;
  re-captured only when the input size changes. Without CUDA it runs ``static`` (logged).
* ``compile``: ``static`` through ``torch.compile``; if compiling fails the step runs ``static``
  (logged with the reason).

A step has two phases: the *front* (encoder, memory read, decoders, key heads, DPT heads) and
the *back* (value encoder, memory insert). The device-to-host copy of the pointmaps and
confidences starts on a side stream as soon as the front is done, so on CUDA it overlaps with
the back's compute; :class:`HostCopier` owns the pinned host buffers.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, ContextManager, Dict, Optional, Tuple

import numpy as np
import torch

from recon_ros.model.config import RUNTIME_MODES, MemoryConfig
from recon_ros.model.network import Spann3RNet
from recon_ros.model.precision import Precision
from recon_ros.model.static_memory import StaticMemory

log = logging.getLogger(__name__)

TensorDict = Dict[str, torch.Tensor]


def resolve_mode(mode: str, device: torch.device) -> str:
    """The mode that will actually run: ``graph`` needs CUDA (else ``static``, logged)."""
    if mode not in RUNTIME_MODES:
        raise ValueError(f"unknown runtime mode {mode!r}; use one of {RUNTIME_MODES}")
    if mode == "graph" and device.type != "cuda":
        log.info("runtime mode 'graph' needs CUDA (device is %s): running 'static' instead", device)
        return "static"
    return mode


class HostCopier:
    """Device-to-host copies of step outputs.

    On CUDA the copies go to pinned host buffers (allocated once per name and shape) on a side
    stream that waits for an event of the compute stream, so they overlap with compute queued
    after :meth:`start`; :meth:`finish` waits for the last copy only. On CPU it hands out the
    tensors themselves. :meth:`finish` returns numpy copies (the buffers are reused).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._bufs: Dict[str, torch.Tensor] = {}
        self._pending: Dict[str, torch.Tensor] = {}
        if self.cuda:
            self.stream = torch.cuda.Stream(device)
            self._done = torch.cuda.Event()

    def _buffer(self, name: str, t: torch.Tensor) -> torch.Tensor:
        buf = self._bufs.get(name)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self._bufs[name] = buf
        return buf

    def start(self, tensors: TensorDict) -> None:
        """Queue copies of ``tensors`` (after everything queued so far on the current stream)."""
        if not self.cuda:
            self._pending.update({k: t.detach() for k, t in tensors.items()})
            return
        ready = torch.cuda.Event()
        ready.record()
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            for name, t in tensors.items():
                buf = self._buffer(name, t)
                buf.copy_(t.detach(), non_blocking=True)
                self._pending[name] = buf
            self._done.record(self.stream)

    def finish(self) -> Dict[str, np.ndarray]:
        """Wait for the queued copies; numpy copies of every tensor queued since the last finish."""
        if self.cuda:
            self._done.synchronize()
        out = {k: t.numpy().copy() for k, t in self._pending.items()}
        self._pending = {}
        return out


class HostUploader:
    """Host-to-device copies of input frames through pinned buffers (non-blocking on CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._bufs: Dict[Tuple, Tuple[torch.Tensor, torch.cuda.Event]] = {}

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if not self.cuda or t.device.type != "cpu":
            return t.to(self.device)
        key = (tuple(t.shape), t.dtype)
        entry = self._bufs.get(key)
        if entry is None:
            if len(self._bufs) > 8:
                self._bufs.clear()
            entry = self._bufs[key] = (torch.empty(t.shape, dtype=t.dtype, pin_memory=True), torch.cuda.Event())
        buf, copied = entry
        copied.synchronize()  # the previous copy out of this buffer is done before it is overwritten
        buf.copy_(t)
        out = buf.to(self.device, non_blocking=True)
        copied.record()
        return out


class StaticStepper:
    """Runs pair steps over a :class:`StaticMemory` in ``static``, ``graph`` or ``compile`` mode.

    Owns the memory, the carried tensors (previous frame's encoder tokens and head-2 key) and,
    in graph mode, an input buffer and the captured graphs. Use :meth:`start` with the first
    frame of a sequence, then :meth:`front`, :meth:`back` and :meth:`carry` per step.
    ``snapshot_reads`` keeps copies of each read's weights and accumulated attention (testing).
    """

    def __init__(self, model: Spann3RNet, memory_cfg: MemoryConfig, precision: Precision, mode: str,
                 graph_warmup: int = 2, snapshot_reads: bool = False) -> None:
        self.model = model
        self.memory_cfg = memory_cfg
        self.precision = precision
        self.requested_mode = mode
        self.mode = resolve_mode(mode, precision.device)
        if self.mode == "eager":
            raise ValueError("StaticStepper runs static, graph or compile modes")
        self.graph_warmup = max(1, int(graph_warmup))
        self.snapshot_reads = snapshot_reads
        self.memory: Optional[StaticMemory] = None
        self.hw: Optional[Tuple[int, int]] = None
        self.grid: Optional[Tuple[int, int]] = None
        self.enc_prev: Optional[torch.Tensor] = None
        self.k2_prev: Optional[torch.Tensor] = None
        self.img_buf: Optional[torch.Tensor] = None
        self._step = 0
        self._graphs: Optional[Tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph, TensorDict, TensorDict]] = None
        self._back_pending: Optional[Callable[[], TensorDict]] = None
        self._compiled: Optional[Tuple[Callable, Callable]] = None
        self.captures = 0  # CUDA graph captures so far (for tests and benchmarks)
        self._capturing = False
        if self.mode == "compile":
            try:
                # the insert stays uncompiled: Inductor turned its in-place gather of the bank
                # (a prune's permutation) into a kernel that reads the slots it overwrites
                self._compiled = (torch.compile(self._front_read, dynamic=False),
                                  torch.compile(self._entry_fn, dynamic=False))
                log.info("runtime mode 'compile': the first steps with a memory read compile the step")
            except Exception as exc:  # noqa: BLE001 - e.g. an unsupported Python version
                self._compile_failed(exc)

    # ------------------------------------------------------------------ contexts
    def _autocast(self, capture: bool = False) -> ContextManager:
        dt = self.precision.autocast_dtype
        if dt is None:
            return contextlib.nullcontext()
        # a captured graph must not rely on autocast's weight-cast cache
        return torch.autocast(device_type=self.precision.device.type, dtype=dt, cache_enabled=not capture)

    # ------------------------------------------------------------------ sequence
    def start(self, img: torch.Tensor) -> None:
        """First frame of a sequence: encode it and reset the memory (re-allocating buffers and
        dropping captured graphs only when the input size changed)."""
        hw = (int(img.shape[2]), int(img.shape[3]))
        with self._autocast():
            enc, grid = self.model.encode(img)
        if hw != self.hw or self.memory is None:
            if self._graphs is not None:
                log.info("model input size changed from %s to %s: CUDA graphs will be re-captured", self.hw, hw)
            self._graphs = None
            self.hw, self.grid = hw, grid
            self.memory = StaticMemory(self.memory_cfg, enc.shape[1], enc.shape[2], enc.shape[0],
                                       device=enc.device)
            self.enc_prev = enc.clone()
            self.k2_prev = None
            self.img_buf = torch.empty_like(img)
        else:
            self.memory.reset()
            self.enc_prev.copy_(enc)
        self._step = 0

    def set_input(self, img: torch.Tensor) -> None:
        self.img_buf.copy_(img, non_blocking=True)

    # ------------------------------------------------------------------ the step's functions
    def _front_fn(self, read: bool) -> TensorDict:
        model, mem = self.model, self.memory
        with self._autocast(capture=self._capturing):
            enc1 = self.enc_prev
            enc2, grid = model.encode(self.img_buf)
            out: TensorDict = {}
            if read:
                with torch.autocast(device_type=enc1.device.type, enabled=False):
                    rd = mem.read(self.k2_prev.float(), model.norm_q, model.norm_k, model.norm_v)
                fused = rd.out.to(enc1.dtype)
                out["read_out"] = rd.out
                out["read_tokens"] = rd.num_tokens
                if self.snapshot_reads:
                    out["read_weights"] = rd.weights.clone()
                    out["read_accumulated"] = rd.accumulated.clone()
            else:
                fused = enc1
            f = model.pair_front(enc1, enc2, fused, grid, self.hw)
        out.update(enc2=enc2, fused=fused, dec1_last=f.dec1_last, dec2_last=f.dec2_last, feat_k1=f.feat_k1,
                   feat_k2=f.feat_k2, pts1=f.res1["pts3d"], conf1=f.res1["conf"], pts2=f.res2["pts3d"],
                   conf2=f.res2["conf"])
        return out

    def _front_read(self) -> TensorDict:
        return self._front_fn(True)

    def _entry_fn(self, pts1: torch.Tensor, feat_k1: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        with self._autocast(capture=self._capturing):
            return self.model.memory_entry(pts1, feat_k1)

    def _back_fn(self, pts1: torch.Tensor, feat_k1: torch.Tensor,
                 entry: Optional[Callable[..., Tuple[torch.Tensor, ...]]] = None) -> TensorDict:
        cur_v, key, value = (entry or self._entry_fn)(pts1, feat_k1)
        with torch.autocast(device_type=pts1.device.type, enabled=False):
            self.memory.insert(key, value)
        return {"cur_v": cur_v}

    # ------------------------------------------------------------------ one step
    def front(self) -> TensorDict:
        """Queue the front of the next step (input already set with :meth:`set_input`)."""
        step = self._step
        if step == 0:
            out = self._front_fn(False)
            self._back_pending = lambda: self._back_fn(out["pts1"], out["feat_k1"])
        elif self.mode == "graph":
            out = self._graph_front(step)
        elif self.mode == "compile":
            out = self._compiled_front()
        else:
            out = self._front_read()
            self._back_pending = lambda: self._back_fn(out["pts1"], out["feat_k1"])
        out["enc1"] = self.enc_prev
        return out

    def back(self) -> TensorDict:
        """Queue the back of the step whose front was queued last."""
        fn, self._back_pending = self._back_pending, None
        return fn()

    def carry(self, front: TensorDict) -> None:
        """Keep this step's target-frame tokens and head-2 key for the next step."""
        self.enc_prev.copy_(front["enc2"])
        if self.k2_prev is None:
            self.k2_prev = front["feat_k2"].clone()
        else:
            self.k2_prev.copy_(front["feat_k2"])
        self._step += 1

    # ------------------------------------------------------------------ compile
    def _compiled_front(self) -> TensorDict:
        front_c, back_c = self._compiled
        try:
            out = front_c()
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to static
            self._compile_failed(exc)
            out = self._front_read()
            self._back_pending = lambda: self._back_fn(out["pts1"], out["feat_k1"])
            return out

        def run_back() -> TensorDict:
            if self.mode != "compile":
                return self._back_fn(out["pts1"], out["feat_k1"])
            try:
                return self._back_fn(out["pts1"], out["feat_k1"], entry=back_c)
            except Exception as exc:  # noqa: BLE001
                self._compile_failed(exc)
                return self._back_fn(out["pts1"], out["feat_k1"])
        self._back_pending = run_back
        return out

    def _compile_failed(self, exc: BaseException) -> None:
        log.warning("torch.compile failed (%s: %s); running the 'static' mode instead",
                    type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        self.mode = "static"
        self._compiled = None

    # ------------------------------------------------------------------ CUDA graphs
    def _graph_front(self, step: int) -> TensorDict:
        if self._graphs is None and step > self.graph_warmup:
            self._capture()
        if self._graphs is None:  # warm-up: plain static steps
            out = self._front_read()
            self._back_pending = lambda: self._back_fn(out["pts1"], out["feat_k1"])
            return out
        g_front, g_back, out_front, out_back = self._graphs
        g_front.replay()

        def run_back() -> TensorDict:
            g_back.replay()
            return out_back
        self._back_pending = run_back
        return dict(out_front)

    def _capture(self) -> None:
        """Capture front and back as two graphs sharing one memory pool. Capturing runs nothing,
        so the memory state is unchanged; the caller replays right after."""
        torch.cuda.synchronize(self.precision.device)
        self._capturing = True
        try:
            g_front = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g_front):
                out_front = self._front_read()
            g_back = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g_back, pool=g_front.pool()):
                out_back = self._back_fn(out_front["pts1"], out_front["feat_k1"])
        finally:
            self._capturing = False
        self._graphs = (g_front, g_back, out_front, out_back)
        self.captures += 1
        log.info("captured the Spann3R step as CUDA graphs for input %dx%d", self.hw[1], self.hw[0])
