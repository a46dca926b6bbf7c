"""Frame-by-frame Spann3R: the spatial-memory loop as a streaming API.

When frame t arrives (t >= 1) the stream runs the pair step (t-1, t): it returns the final
pointmap of frame t-1 (head 1, fused with memory) and a provisional pointmap of frame t
(head 2). ``flush()`` returns the last frame's final output (the last head-2 output). All
pointmaps are in the camera frame of the sequence's first frame, up to an unknown scale.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

from recon_ros.errors import UserInputError
from recon_ros.geometry.camera import PixelMap
from recon_ros.model.config import MemoryConfig, RuntimeConfig
from recon_ros.model.memory import InsertResult, ReadResult, SpatialMemory
from recon_ros.model.network import PairOutput, Spann3RNet
from recon_ros.model.precision import Precision, resolve_precision
from recon_ros.model.preprocess import (check_target_size, crop_resize_geometry, img_to_rgb, preprocess_rgb,
                                        preprocess_rgb_torch, validate_model_input, validate_rgb)
from recon_ros.model.runtime import HostCopier, HostUploader, StaticStepper
from recon_ros.model.static_memory import StaticMemory

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
    enc: Optional[torch.Tensor]  # encoder tokens (eager mode; the static modes carry them themselves)
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
        runtime = runtime or RuntimeConfig()
        self.runtime = runtime
        self.precision: Precision = resolve_precision(runtime)
        self.model = model.to(self.precision.device).eval()
        self.memory_cfg = memory or MemoryConfig()
        self.target_wh = check_target_size(target_wh, model.arch.patch_size)
        self.want_provisional = provisional
        self.on_step = on_step
        dev = self.precision.device
        self._dynamic = SpatialMemory(self.memory_cfg)
        self.stepper: Optional[StaticStepper] = None
        if runtime.mode != "eager":
            self.stepper = StaticStepper(self.model, self.memory_cfg, self.precision, runtime.mode,
                                         graph_warmup=runtime.graph_warmup, snapshot_reads=on_step is not None)
        self.torch_preprocess = runtime.preprocess == "torch"
        self._copier = HostCopier(dev)
        self._upload = HostUploader(dev)
        self.reset()

    @property
    def mode(self) -> str:
        """The execution mode in use (after fallbacks): eager, static, graph or compile."""
        return "eager" if self.stepper is None else self.stepper.mode

    @property
    def memory(self) -> SpatialMemory | StaticMemory | None:
        """The memory of the current sequence (the static modes allocate it at the first frame)."""
        return self._dynamic if self.stepper is None else self.stepper.memory

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the sequence: a fresh memory; the next frame defines the world frame."""
        self._dynamic.reset()
        self._prev: Optional[_Pending] = None
        self._prev_k2: Optional[torch.Tensor] = None
        self._last: Optional[FrameOutput] = None
        self._hw: Optional[Tuple[int, int]] = None
        self._raw_hw: Optional[Tuple[int, int]] = None
        self._frames = 0
        self._steps = 0
        self._flushed = False
        self._mstats = dict(num_tokens=0, wm=0, lm=0, inserts=0, skips=0, prunes=0, reads=0)

    def stats(self) -> StreamStats:
        if self.stepper is None:
            m = self._dynamic
            c = dict(num_tokens=m.num_tokens, wm=m.wm, lm=m.lm, inserts=m.inserts, skips=m.skips,
                     prunes=m.prunes, reads=m.reads)
        else:
            c = self._mstats
        return StreamStats(frames_processed=self._frames, steps=self._steps, memory_tokens=c["num_tokens"],
                           working_memory_frames=c["wm"], long_term_tokens=c["lm"], inserts=c["inserts"],
                           skips=c["skips"], prunes=c["prunes"], reads=c["reads"])

    # ------------------------------------------------------------------ input
    def _prepare(self, frame: ImageInput) -> Tuple[torch.Tensor, Optional[np.ndarray], Optional[PixelMap],
                                                   Optional[torch.Tensor]]:
        """(model input on the device, colours or None, pixel map, colours on the device or None)."""
        if isinstance(frame, np.ndarray) and frame.dtype == np.uint8:
            raw_hw = (int(frame.shape[0]), int(frame.shape[1])) if frame.ndim >= 2 else None
            if self._raw_hw is not None and raw_hw != self._raw_hw:
                raise UserInputError(f"image size changed from {self._raw_hw[1]}x{self._raw_hw[0]} to "
                                     f"{frame.shape[1]}x{frame.shape[0]} within one sequence; "
                                     "call reset() to start a new sequence")
            if self.torch_preprocess:
                rgb = validate_rgb(frame)
                geom = crop_resize_geometry(rgb.shape[0], rgb.shape[1], self.target_wh)
                img, rgb_dev = preprocess_rgb_torch(self._upload(torch.from_numpy(np.ascontiguousarray(rgb))), geom)
                self._raw_hw = raw_hw
                return img, None, geom.pixel_map, rgb_dev
            pre = preprocess_rgb(frame, self.target_wh)
            self._raw_hw = raw_hw
            return self._upload(pre.img), pre.rgb, pre.pixel_map, None
        if isinstance(frame, torch.Tensor) and frame.dtype == torch.uint8:
            raise UserInputError("uint8 tensors are ambiguous; pass raw RGB as an H x W x 3 numpy array "
                                 "or a preprocessed float32 tensor in [-1, 1]")
        img = validate_model_input(frame, self._hw, self.model.arch.patch_size)
        return self._upload(img), img_to_rgb(img), None, None

    # ------------------------------------------------------------------ loop
    @torch.no_grad()
    def push(self, frame: ImageInput) -> Optional[StepResult]:
        """Add the next frame. Returns None for a sequence's first frame, else the finished
        output of the previous frame (and the provisional output of this one)."""
        if self._flushed:
            self.reset()
        img, rgb, pm, rgb_dev = self._prepare(frame)
        hw = (int(img.shape[2]), int(img.shape[3]))
        if self._hw is not None and hw != self._hw:
            raise UserInputError(f"model input size changed from {self._hw} to {hw}; call reset() first")
        index = self._frames
        if self._prev is None:
            if rgb is None:
                rgb = rgb_dev.cpu().numpy()
            if self.stepper is None:
                with self.precision.autocast():
                    enc, _ = self.model.encode(img)
            else:
                self.stepper.start(img)
                enc = None
            self._prev = _Pending(index, enc, rgb, pm)
            self._hw = hw
            self._frames += 1
            return None
        prev = self._prev
        if self.stepper is None:
            out, host = self._eager_step(prev, img, hw, rgb_dev)
        else:
            out, host = self._static_step(img, rgb_dev)
        if rgb is None:
            rgb = host["rgb"]
        self._frames += 1
        self._steps += 1
        final = FrameOutput(prev.index, host["pts1"], host["conf1"], prev.rgb, prev.pixel_map, provisional=False)
        newest = FrameOutput(index, host["pts2"], host["conf2"], rgb, pm, provisional=True)
        self._last = newest
        self._prev = _Pending(index, out.enc2 if self.stepper is None else None, rgb, pm)
        return StepResult(final=final, provisional=newest if self.want_provisional else None, insert=out.insert)

    def _outputs(self, res1: dict, res2: dict, rgb_dev: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = {"pts1": res1["pts3d"][0], "conf1": res1["conf"][0], "pts2": res2["pts3d"][0], "conf2": res2["conf"][0]}
        if rgb_dev is not None:
            out["rgb"] = rgb_dev
        return out

    def _eager_step(self, prev: _Pending, img: torch.Tensor, hw: Tuple[int, int],
                    rgb_dev: Optional[torch.Tensor]) -> Tuple[PairOutput, Dict[str, np.ndarray]]:
        with self.precision.autocast():
            out = self.model.pair_step(self._dynamic, prev.enc, img, self._prev_k2, hw)
        self._copier.start(self._outputs(out.res1, out.res2, rgb_dev))
        if self.on_step is not None:
            self.on_step(self._steps, out)
        self._prev_k2 = out.feat_k2
        return out, self._copier.finish()

    def _static_step(self, img: torch.Tensor, rgb_dev: Optional[torch.Tensor]
                     ) -> Tuple[PairOutput, Dict[str, np.ndarray]]:
        st, step = self.stepper, self._steps
        st.set_input(img)
        front = st.front()
        # pointmaps/confidences leave the device while the value encoder and memory write run
        self._copier.start(self._outputs({"pts3d": front["pts1"], "conf": front["conf1"]},
                                         {"pts3d": front["pts2"], "conf": front["conf2"]}, rgb_dev))
        back = st.back()
        self._copier.start({"trace": st.memory.trace})
        out = None
        if self.on_step is not None:
            out = self._debug_output(front, back, step)
            self.on_step(step, out)
        st.carry(front)
        host = self._copier.finish()
        ins = st.memory.insert_result(torch.from_numpy(host["trace"]), with_counts=out is not None)
        if out is None:
            out = _StaticStepOutput(insert=ins)
        m = self._mstats
        m.update(num_tokens=ins.tokens_after, wm=ins.wm_after, lm=ins.lm_after, reads=m["reads"] + (step > 0),
                 inserts=m["inserts"] + ins.inserted, skips=m["skips"] + (not ins.inserted),
                 prunes=m["prunes"] + ins.pruned)
        return out, host

    def _debug_output(self, front: Dict[str, torch.Tensor], back: Dict[str, torch.Tensor], step: int) -> PairOutput:
        """A :class:`PairOutput` with copies of the static step's tensors (reads the device)."""
        mem = self.stepper.memory
        read = None
        if "read_out" in front:
            n = int(front["read_tokens"])
            read = ReadResult(out=front["read_out"].clone(), weights=front["read_weights"][..., :n].clone(),
                              mem_tokens=n, accumulated=front["read_accumulated"][:, :n].clone())
        c = {k: v.clone() for k, v in front.items() if isinstance(v, torch.Tensor)}
        return PairOutput(enc1=c["enc1"], enc2=c["enc2"], dec_in1=c["fused"], dec1_last=c["dec1_last"],
                          dec2_last=c["dec2_last"], feat_k1=c["feat_k1"], feat_k2=c["feat_k2"],
                          cur_v=back["cur_v"].clone(), res1={"pts3d": c["pts1"], "conf": c["conf1"]},
                          res2={"pts3d": c["pts2"], "conf": c["conf2"]}, read=read,
                          insert=mem.insert_result())

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


@dataclass
class _StaticStepOutput:
    """What the stream keeps of a static-mode step when no ``on_step`` hook asks for more."""

    insert: InsertResult


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
