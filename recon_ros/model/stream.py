"""Frame-by-frame Spann3R: the spatial-memory loop as a streaming API.

When frame t arrives (t >= 1) the stream runs the pair step (t-1, t): it returns the final
pointmap of frame t-1 (head 1, fused with memory) and a provisional pointmap of frame t
(head 2). ``flush()`` returns the last frame's final output (the last head-2 output). All
pointmaps are in the camera frame of the sequence's first frame, up to an unknown scale.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

from recon_ros.errors import UserInputError
from recon_ros.geometry.camera import PixelMap
from recon_ros.model.config import MemoryConfig, RuntimeConfig
from recon_ros.model.memory import InsertResult, SpatialMemory
from recon_ros.model.network import PairOutput, Spann3RNet
from recon_ros.model.precision import Precision, resolve_precision
from recon_ros.model.preprocess import check_target_size, img_to_rgb, preprocess_rgb, validate_model_input

log = logging.getLogger(__name__)

ImageInput = Union[np.ndarray, torch.Tensor]
StepHook = Callable[[int, PairOutput], None]


@dataclass
class FrameOutput:
    """One frame's pointmap at model resolution, in the first frame's camera frame."""

    index: int  # position of the frame in the sequence (0-based)
    pts3d: np.ndarray  # H x W x 3 float32
    conf: np.ndarray  # H x W float32, >= 1
    rgb: np.ndarray  # H x W x 3 uint8 model-resolution colours
    pixel_map: Optional[PixelMap]  # model pixels <-> input image pixels (None for preprocessed input)
    provisional: bool  # True for head-2 output that a later step supersedes


@dataclass
class StepResult:
    final: FrameOutput  # frame t-1
    provisional: Optional[FrameOutput]  # frame t (head 2), when requested
    insert: InsertResult  # what the memory did with frame t-1


@dataclass
class StreamStats:
    frames_processed: int
    steps: int
    memory_tokens: int
    working_memory_frames: int
    long_term_tokens: int
    inserts: int
    skips: int
    prunes: int
    reads: int


@dataclass
class _Pending:
    index: int
    enc: torch.Tensor
    rgb: np.ndarray
    pixel_map: Optional[PixelMap]


class Spann3RStream:
    """Spann3R over a stream of frames, one memory per sequence.

    ``push`` takes a raw H x W x 3 uint8 RGB frame (preprocessed to ``target_wh``) or an already
    preprocessed [3,H,W] / [1,3,H,W] float32 tensor in [-1, 1]. ``on_step`` (debugging) is called
    with the step index and the full :class:`PairOutput` of every pair step.
    """

    def __init__(self, model: Spann3RNet, runtime: Optional[RuntimeConfig] = None,
                 memory: Optional[MemoryConfig] = None, target_wh: Tuple[int, int] = (224, 224),
                 provisional: bool = True, on_step: Optional[StepHook] = None) -> None:
        self.precision: Precision = resolve_precision(runtime or RuntimeConfig())
        self.model = model.to(self.precision.device).eval()
        self.memory_cfg = memory or MemoryConfig()
        self.target_wh = check_target_size(target_wh, model.arch.patch_size)
        self.want_provisional = provisional
        self.on_step = on_step
        self.memory = SpatialMemory(self.memory_cfg)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the sequence: a fresh memory; the next frame defines the world frame."""
        self.memory.reset()
        self._prev: Optional[_Pending] = None
        self._prev_k2: Optional[torch.Tensor] = None
        self._last: Optional[FrameOutput] = None
        self._hw: Optional[Tuple[int, int]] = None
        self._raw_hw: Optional[Tuple[int, int]] = None
        self._frames = 0
        self._steps = 0
        self._flushed = False

    def stats(self) -> StreamStats:
        m = self.memory
        return StreamStats(frames_processed=self._frames, steps=self._steps, memory_tokens=m.num_tokens,
                           working_memory_frames=m.wm, long_term_tokens=m.lm, inserts=m.inserts,
                           skips=m.skips, prunes=m.prunes, reads=m.reads)

    # ------------------------------------------------------------------ input
    def _prepare(self, frame: ImageInput) -> Tuple[torch.Tensor, np.ndarray, Optional[PixelMap]]:
        if isinstance(frame, np.ndarray) and frame.dtype == np.uint8:
            raw_hw = (int(frame.shape[0]), int(frame.shape[1])) if frame.ndim >= 2 else None
            if self._raw_hw is not None and raw_hw != self._raw_hw:
                raise UserInputError(f"image size changed from {self._raw_hw[1]}x{self._raw_hw[0]} to "
                                     f"{frame.shape[1]}x{frame.shape[0]} within one sequence; "
                                     "call reset() to start a new sequence")
            pre = preprocess_rgb(frame, self.target_wh)
            self._raw_hw = raw_hw
            return pre.img, pre.rgb, pre.pixel_map
        if isinstance(frame, torch.Tensor) and frame.dtype == torch.uint8:
            raise UserInputError("uint8 tensors are ambiguous; pass raw RGB as an H x W x 3 numpy array "
                                 "or a preprocessed float32 tensor in [-1, 1]")
        img = validate_model_input(frame, self._hw, self.model.arch.patch_size)
        return img, img_to_rgb(img), None

    # ------------------------------------------------------------------ loop
    @torch.no_grad()
    def push(self, frame: ImageInput) -> Optional[StepResult]:
        """Add the next frame. Returns None for a sequence's first frame, else the finished
        output of the previous frame (and the provisional output of this one)."""
        if self._flushed:
            self.reset()
        img, rgb, pm = self._prepare(frame)
        hw = (int(img.shape[2]), int(img.shape[3]))
        if self._hw is not None and hw != self._hw:
            raise UserInputError(f"model input size changed from {self._hw} to {hw}; call reset() first")
        img = img.to(self.precision.device, non_blocking=True)
        index = self._frames
        with self.precision.autocast():
            if self._prev is None:
                enc, _ = self.model.encode(img)
                self._prev = _Pending(index, enc, rgb, pm)
                self._hw = hw
                self._frames += 1
                return None
            prev = self._prev
            out = self.model.pair_step(self.memory, prev.enc, img, self._prev_k2, hw)
        self._frames += 1
        step = self._steps
        self._steps += 1
        if self.on_step is not None:
            self.on_step(step, out)
        final = FrameOutput(prev.index, *_to_numpy(out.res1), prev.rgb, prev.pixel_map, provisional=False)
        newest = FrameOutput(index, *_to_numpy(out.res2), rgb, pm, provisional=True)
        self._last = newest
        self._prev = _Pending(index, out.enc2, rgb, pm)
        self._prev_k2 = out.feat_k2
        return StepResult(final=final, provisional=newest if self.want_provisional else None, insert=out.insert)

    def flush(self) -> Optional[FrameOutput]:
        """End the sequence: the last frame's final output (None if fewer than two frames were
        pushed). The memory stays inspectable until the next push, which starts a new sequence."""
        self._flushed = True
        if self._last is None:
            if self._prev is not None:
                log.warning("sequence of a single frame: Spann3R needs two frames for a pointmap")
            return None
        last = self._last
        return FrameOutput(last.index, last.pts3d, last.conf, last.rgb, last.pixel_map, provisional=False)


def _to_numpy(res: dict) -> Tuple[np.ndarray, np.ndarray]:
    return (res["pts3d"][0].float().cpu().numpy(), res["conf"][0].float().cpu().numpy())


def run_sequence(stream: Spann3RStream, frames: Iterable[ImageInput]) -> List[FrameOutput]:
    """Push every frame of one sequence, flush, and return the final per-frame outputs in order."""
    stream.reset()
    outputs: List[FrameOutput] = []
    for frame in frames:
        res = stream.push(frame)
        if res is not None:
            outputs.append(res.final)
    last = stream.flush()
    if last is not None:
        outputs.append(last)
    return outputs
