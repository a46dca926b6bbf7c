#!/usr/bin/env python3
"""Spann3R speed and memory: frames/s and peak memory of the streaming loop (random weights).

On CUDA: the full model at 224x224 over 200 frames for each precision (fp32, bf16, fp16).
On CPU: the tiny test model over 200 frames and the full model over a few frames.
Examples:
    python3 benchmarks/bench_model.py                       # defaults for the machine
    python3 benchmarks/bench_model.py --device cuda --precision bf16 --frames 500 --json out.json
    python3 benchmarks/bench_model.py --config full --frames 5 --device cpu
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_ros.io.atomic import write_text_atomic  # noqa: E402
from recon_ros.model.config import MemoryConfig, RuntimeConfig, arch_by_name  # noqa: E402
from recon_ros.model.network import build_random_model  # noqa: E402
from recon_ros.model.stream import Spann3RStream  # noqa: E402

log = logging.getLogger("bench_model")


@dataclass
class BenchResult:
    config: str
    device: str
    precision: str
    size: int
    frames: int
    warmup: int
    seconds: float
    fps: float
    ms_per_frame: float
    peak_mem_mb: float
    peak_mem_kind: str
    memory_tokens: int
    prunes: int
    skips: int


def _frames(n: int, size: int, seed: int) -> List[torch.Tensor]:
    """Smoothly changing random images in [-1, 1] (a drifting pattern, so frames differ)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, size // 8 + 8, size // 8 + 8, generator=gen)
    out = []
    for i in range(n):
        shift = i % 8
        crop = base[..., shift:shift + size // 8, :size // 8]
        img = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
        img = img + 0.05 * torch.rand(img.shape, generator=gen)
        out.append((img.clamp(0, 1) * 2 - 1)[0])
    return out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(config: str, device: str, precision: str, frames: int, size: int, tf32: bool,
            warmup: int) -> BenchResult:
    arch = arch_by_name(config)
    runtime = RuntimeConfig(device=device, precision=precision, tf32=tf32)
    model = build_random_model(arch, device="cpu")
    stream = Spann3RStream(model, runtime, MemoryConfig(), target_wh=(size, size), provisional=True)
    dev = stream.precision.device
    imgs = _frames(frames + warmup, size, seed=0)
    for img in imgs[:warmup]:
        stream.push(img)
    stream.reset()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for img in imgs[warmup:]:
        stream.push(img)
    stream.flush()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    dt = time.perf_counter() - t0
    if dev.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda max allocated"
    else:
        peak, kind = _rss_mb(), "process peak RSS"
    st = stream.stats()
    res = BenchResult(config=config, device=str(dev), precision=stream.precision.name, size=size, frames=frames,
                      warmup=warmup, seconds=dt, fps=frames / dt, ms_per_frame=1000 * dt / frames,
                      peak_mem_mb=peak, peak_mem_kind=kind, memory_tokens=st.memory_tokens,
                      prunes=st.prunes, skips=st.skips)
    del stream, model
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--config", default="auto", choices=["auto", "tiny", "full"],
                   help="auto: full on CUDA; tiny and full on CPU")
    p.add_argument("--precision", default="auto", help="fp32, bf16, fp16, comma list, or auto "
                                                       "(all three on CUDA, fp32 on CPU)")
    p.add_argument("--frames", type=int, default=None, help="frames per run (default: 200; full on CPU: 4)")
    p.add_argument("--full-cpu-frames", type=int, default=4, help="frames of the full model on CPU (auto mode)")
    p.add_argument("--warmup", type=int, default=2, help="untimed frames before each run")
    p.add_argument("--size", type=int, default=224, help="square input size (multiple of 16)")
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
    if args.config == "auto":
        runs = [("full", args.frames or 200)] if cuda else \
            [("tiny", args.frames or 200), ("full", args.full_cpu_frames)]
    else:
        runs = [(args.config, args.frames or (args.full_cpu_frames if args.config == "full" and not cuda else 200))]
    results = []
    for config, frames in runs:
        for prec in precisions:
            log.info("running %s %s on %s for %d frames ...", config, prec, args.device, frames)
            results.append(run_one(config, args.device, prec, frames, args.size, not args.no_tf32, args.warmup))
    header = f"{'config':<6} {'device':<8} {'prec':<5} {'frames':>6} {'fps':>8} {'ms/frame':>9} {'peak MB':>9}  mem tokens/prunes"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.config:<6} {r.device:<8} {r.precision:<5} {r.frames:>6} {r.fps:>8.2f} {r.ms_per_frame:>9.1f} "
              f"{r.peak_mem_mb:>9.0f}  {r.memory_tokens}/{r.prunes}  ({r.peak_mem_kind})")
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
        write_text_atomic(args.json, json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
