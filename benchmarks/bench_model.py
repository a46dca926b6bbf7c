#!/usr/bin/env python3
"""Spann3R speed and memory: the step modes side by side (random weights).

For each precision and each runtime mode (eager, static, graph, compile) the streaming loop runs
over the same frames: frames/s, step latency (p50/p99), the largest difference of the final
pointmaps to the eager run of the same precision (relative to the pointmaps' scale), GPU memory
over the run. A per-stage breakdown (H2D transfer, encoder, memory read, decoders, key heads,
DPT heads, value encoder, memory write, D2H transfer) is timed by running the stages one by one,
with CUDA events on GPU and wall time on CPU (eager and static; graph and compile run as a
whole). Modes that cannot run here fall back (graph -> static without CUDA) and are reported
under the mode that actually ran.

Examples:
    python3 benchmarks/bench_model.py                                   # defaults for the machine
    python3 benchmarks/bench_model.py --device cuda --frames 10000 --modes graph --precision bf16
    nice python3 benchmarks/bench_model.py --config full --frames 3 --modes eager,static,compile
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_ros.io.atomic import write_text_atomic  # noqa: E402
from recon_ros.model.config import RUNTIME_MODES, MemoryConfig, RuntimeConfig, arch_by_name  # noqa: E402
from recon_ros.model.memory import SpatialMemory  # noqa: E402
from recon_ros.model.network import build_random_model  # noqa: E402
from recon_ros.model.precision import resolve_precision  # noqa: E402
from recon_ros.model.static_memory import StaticMemory  # noqa: E402
from recon_ros.model.stream import Spann3RStream  # noqa: E402

log = logging.getLogger("bench_model")


@dataclass
class ModeResult:
    config: str
    device: str
    precision: str
    size: int
    mode_requested: str
    mode: str
    frames: int
    warmup: int
    setup_s: float  # first frames until the timed part (includes compiling / graph capture)
    seconds: float
    fps: float
    step_ms_p50: float
    step_ms_p99: float
    step_ms_max: float
    max_rel_diff_vs_eager: Optional[float]
    gpu_mem_mb_min: Optional[float] = None  # allocated, sampled over the timed frames
    gpu_mem_mb_max: Optional[float] = None
    peak_mem_mb: float = 0.0
    peak_mem_kind: str = ""
    memory_tokens: int = 0
    prunes: int = 0
    skips: int = 0
    stages_ms: Dict[str, float] = field(default_factory=dict)


def _frames(n: int, size: int, seed: int) -> List[torch.Tensor]:
    """A few smoothly drifting random images in [-1, 1] (cycled when more frames are needed)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, size // 8 + 8, size // 8 + 8, generator=gen)
    out = []
    for i in range(min(n, 64)):
        shift = i % 8
        crop = base[..., shift:shift + size // 8, :size // 8]
        img = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
        img = img + 0.05 * torch.rand(img.shape, generator=gen)
        out.append((img.clamp(0, 1) * 2 - 1)[0])
    return out


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class _Timer:
    """Per-stage timing: CUDA events on GPU, wall time (after a sync) on CPU."""

    def __init__(self, dev: torch.device) -> None:
        self.dev = dev
        self.times: Dict[str, List[float]] = {}
        self._events: List = []

    def __call__(self, name: str, fn: Callable):
        if self.dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = fn()
            b.record()
            self._events.append((name, a, b))
            return out
        t0 = time.perf_counter()
        out = fn()
        self.times.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)
        return out

    def result(self) -> Dict[str, float]:
        _sync(self.dev)
        for name, a, b in self._events:
            self.times.setdefault(name, []).append(a.elapsed_time(b))
        self._events = []
        return {k: statistics.median(v) for k, v in self.times.items()}


@torch.no_grad()
def stage_breakdown(model, runtime: RuntimeConfig, memory: MemoryConfig, frames: List[torch.Tensor],
                    steps: int, static: bool) -> Dict[str, float]:
    """Median ms per stage of ``steps`` pair steps, the stages run one by one."""
    prec = resolve_precision(runtime)
    dev = prec.device
    timer = _Timer(dev)
    hw = tuple(frames[0].shape[-2:])
    with prec.autocast():
        enc1, grid = model.encode(frames[0][None].to(dev))
    mem = StaticMemory(memory, enc1.shape[1], enc1.shape[2], device=dev) if static else SpatialMemory(memory)
    k2 = None
    pin = dev.type == "cuda"
    for i in range(steps + 1):  # the first step (no read) is untimed
        host = frames[(i + 1) % len(frames)][None]
        if pin:
            host = host.pin_memory()
        img = timer("h2d", lambda: host.to(dev, non_blocking=True)) if i else host.to(dev)
        with prec.autocast():
            enc2, _ = timer("encoder", lambda: model.encode(img))
            if k2 is None:
                fused = enc1
            else:
                with torch.autocast(device_type=dev.type, enabled=False):
                    rd = timer("memory_read", lambda: mem.read(k2.float(), model.norm_q, model.norm_k, model.norm_v))
                fused = rd.out.to(enc1.dtype)
            dec1, dec2 = timer("decoders", lambda: model.dust3r.decode(fused, enc2, grid))
            fk1, fk2 = timer("key_heads", lambda: (model.attn_head_1(torch.cat([enc1, dec1[-1]], -1)),
                                                  model.attn_head_2(torch.cat([enc2, dec2[-1]], -1))))
            res1, res2 = timer("dpt_heads", lambda: (model.dust3r.downstream_head1(dec1, hw),
                                                    model.dust3r.downstream_head2(dec2, hw)))
            cur_v = timer("value_encoder", lambda: model.encode_value(res1["pts3d"]))
        with torch.autocast(device_type=dev.type, enabled=False):
            timer("memory_write", lambda: mem.insert(fk1.float(), cur_v.float() + fk1.float()))
        timer("d2h", lambda: [t.to("cpu", non_blocking=pin) for t in (res1["pts3d"], res1["conf"],
                                                                       res2["pts3d"], res2["conf"])])
        if i == 0:
            timer.result()
            timer.times.clear()
        enc1, k2 = enc2, fk2
    return timer.result()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.no_grad()
def run_mode(model, config: str, runtime: RuntimeConfig, memory: MemoryConfig, frames: List[torch.Tensor],
             n_frames: int, warmup: int, size: int, sample_every: int) -> tuple:
    stream = Spann3RStream(model, runtime, memory, target_wh=(size, size), provisional=True)
    dev = stream.precision.device
    t0 = time.perf_counter()
    for i in range(warmup):
        stream.push(frames[i % len(frames)])
    stream.reset()
    # the timed sequence starts fresh; graphs captured during warm-up stay valid
    _sync(dev)
    setup = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    lat, mem_samples, finals = [], [], []
    t0 = time.perf_counter()
    for i in range(n_frames):
        ts = time.perf_counter()
        res = stream.push(frames[i % len(frames)])  # returns host arrays: the step is complete
        lat.append((time.perf_counter() - ts) * 1e3)
        if res is not None and len(finals) < 64:
            finals.append(res.final.pts3d)
        if dev.type == "cuda" and i % sample_every == 0:
            mem_samples.append(torch.cuda.memory_allocated(dev) / 2**20)
    last = stream.flush()
    _sync(dev)
    dt = time.perf_counter() - t0
    if last is not None and len(finals) < 64:
        finals.append(last.pts3d)
    lat = lat[1:] or lat  # the first frame only encodes
    st = stream.stats()
    r = ModeResult(config=config, device=str(dev), precision=stream.precision.name, size=size,
                   mode_requested=runtime.mode, mode=stream.mode, frames=n_frames, warmup=warmup, setup_s=setup,
                   seconds=dt, fps=n_frames / dt, step_ms_p50=float(np.percentile(lat, 50)),
                   step_ms_p99=float(np.percentile(lat, 99)), step_ms_max=float(np.max(lat)),
                   max_rel_diff_vs_eager=None, memory_tokens=st.memory_tokens, prunes=st.prunes, skips=st.skips)
    if dev.type == "cuda":
        r.peak_mem_mb, r.peak_mem_kind = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda max allocated"
        if mem_samples:
            r.gpu_mem_mb_min, r.gpu_mem_mb_max = min(mem_samples), max(mem_samples)
    else:
        r.peak_mem_mb, r.peak_mem_kind = _rss_mb(), "process peak RSS"
    del stream
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return r, np.stack(finals)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--config", default="auto", choices=["auto", "tiny", "full"],
                   help="auto: full on CUDA; tiny and full on CPU")
    p.add_argument("--precision", default="auto", help="fp32, bf16, fp16, comma list, or auto "
                                                       "(all three on CUDA, fp32 on CPU)")
    p.add_argument("--modes", default="eager,static,graph,compile",
                   help=f"comma list of runtime modes ({', '.join(RUNTIME_MODES)}); eager always runs first")
    p.add_argument("--frames", type=int, default=None, help="timed frames per run (default: 200; full on CPU: 3)")
    p.add_argument("--full-cpu-frames", type=int, default=3, help="frames of the full model on CPU (auto config)")
    p.add_argument("--warmup", type=int, default=None, help="untimed frames before each run (default 5; 3 for "
                                                            "the full model on CPU); compiling and graph capture "
                                                            "happen in them")
    p.add_argument("--size", type=int, default=224, help="square input size (multiple of 16)")
    p.add_argument("--stage-steps", type=int, default=None, help="steps of the per-stage breakdown "
                                                                 "(default 20; 2 for the full model on CPU; 0: skip)")
    p.add_argument("--mem-sample-every", type=int, default=50, help="frames between GPU memory samples")
    p.add_argument("--no-tf32", action="store_true", help="disable TF32 on CUDA")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    precisions = (["fp32", "bf16", "fp16"] if cuda else ["fp32"]) if args.precision == "auto" \
        else [s.strip() for s in args.precision.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in RUNTIME_MODES]
    if bad:
        p.error(f"unknown modes {bad}; use {RUNTIME_MODES}")
    modes = ["eager"] + [m for m in modes if m != "eager"]
    if args.config == "auto":
        runs = [("full", args.frames or 200)] if cuda else \
            [("tiny", args.frames or 200), ("full", args.full_cpu_frames)]
    else:
        slow = args.config == "full" and not cuda
        runs = [(args.config, args.frames or (args.full_cpu_frames if slow else 200))]
    results: List[ModeResult] = []
    for config, frames in runs:
        slow = config == "full" and not cuda
        warmup = args.warmup if args.warmup is not None else (3 if slow else 5)
        stage_steps = args.stage_steps if args.stage_steps is not None else (2 if slow else 20)
        model = build_random_model(arch_by_name(config), device="cpu")
        imgs = _frames(frames + warmup, args.size, seed=0)
        mem_cfg = MemoryConfig()
        for prec in precisions:
            eager_pts = None
            for mode in modes:
                rt = RuntimeConfig(device=args.device, precision=prec, tf32=not args.no_tf32, mode=mode)
                log.info("running %s %s %s for %d frames ...", config, prec, mode, frames)
                r, pts = run_mode(model, config, rt, mem_cfg, imgs, frames, warmup, args.size, args.mem_sample_every)
                if eager_pts is None:
                    eager_pts = pts
                else:
                    n = min(len(pts), len(eager_pts))
                    r.max_rel_diff_vs_eager = float(np.abs(pts[:n] - eager_pts[:n]).max()
                                                    / max(np.abs(eager_pts[:n]).max(), 1e-30))
                if stage_steps > 0 and r.mode in ("eager", "static"):
                    r.stages_ms = stage_breakdown(model.to(r.device), rt, mem_cfg, imgs, stage_steps,
                                                  static=r.mode == "static")
                results.append(r)
                log.info("  %s: %.2f frames/s", r.mode, r.fps)
        del model
        gc.collect()
    header = (f"{'config':<6} {'device':<7} {'prec':<5} {'mode':<16} {'frames':>6} {'fps':>8} {'x eager':>7} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'rel diff':>9} {'setup s':>8}")
    print(header)
    print("-" * len(header))
    base: Dict[tuple, float] = {}
    for r in results:
        key = (r.config, r.precision)
        if r.mode_requested == "eager":
            base[key] = r.fps
        mode = r.mode if r.mode == r.mode_requested else f"{r.mode_requested}->{r.mode}"
        diff = "" if r.max_rel_diff_vs_eager is None else f"{r.max_rel_diff_vs_eager:.1e}"
        print(f"{r.config:<6} {r.device:<7} {r.precision:<5} {mode:<16} {r.frames:>6} {r.fps:>8.2f} "
              f"{r.fps / base[key]:>7.2f} {r.step_ms_p50:>8.1f} {r.step_ms_p99:>8.1f} {diff:>9} {r.setup_s:>8.1f}")
    for r in results:
        if r.stages_ms:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in r.stages_ms.items())
            print(f"stages ms ({r.config} {r.precision} {r.mode}): {parts}")
        if r.gpu_mem_mb_min is not None:
            print(f"GPU memory ({r.config} {r.precision} {r.mode}): {r.gpu_mem_mb_min:.1f}-{r.gpu_mem_mb_max:.1f} MB "
                  f"allocated over {r.frames} frames, peak {r.peak_mem_mb:.1f} MB")
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                "processor": platform.processor(),
                "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
        write_text_atomic(args.json, json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
