"""What a refinement correction costs on the mapping thread (rgbd, no GPU).

A 640x480 RGB-D room loop of ``recon-ros synth`` (depth noise 5 mm at 1 m, quadratic) is
mapped for ``--frames`` frames; then every keyframe but the first is corrected (a small
rotation and a 3 cm shift, growing along the path, as a loop closure would move them) with
``Reconstructor.apply_corrections``, as the node does when the refiner's corrected path
arrives, and ``--after`` more frames are processed. Reported for ``map.repose_budget_ms``
0 (every moved frame re-fused at once) and the default: the time apply_corrections takes,
the per-frame step times after it (median, p95, max), how many frames the re-fusion
stays pending, and the step time before the correction for comparison.

    nice python3 benchmarks/bench_corrections.py [--frames 150] [--after 40]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon_ros.geometry.transforms import make_T, rotvec_to_matrix  # noqa: E402
from recon_ros.io.synth.config import SynthConfig  # noqa: E402
from recon_ros.io.synth.frames import iter_frames  # noqa: E402
from recon_ros.mapping.reconstructor import ReconConfig, Reconstructor  # noqa: E402


def ms_stats(xs: list) -> dict:
    a = np.asarray(xs, dtype=np.float64)
    return {"median": round(float(np.median(a)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "max": round(float(a.max()), 1)}


def run(frames: list, n_before: int, budget_ms: float) -> dict:
    cfg = ReconConfig()
    cfg.frontend.name = "rgbd"
    cfg.map.repose_budget_ms = budget_ms
    recon = Reconstructor(cfg)
    before = []
    for f in frames[:n_before]:
        t0 = time.perf_counter()
        recon.process(f)
        before.append((time.perf_counter() - t0) * 1e3)
    kfs = recon.keyframes()
    poses = {}
    for j, kf in enumerate(kfs[1:], start=1):
        a = j / len(kfs)
        C = make_T(rotvec_to_matrix(np.array([0.0, 0.01 * a, 0.0])), np.array([0.03 * a, 0.0, 0.0]))
        poses[kf.stamp_ns] = C @ kf.T_world_cam
    t0 = time.perf_counter()
    moved = recon.apply_corrections(poses)
    apply_ms = (time.perf_counter() - t0) * 1e3
    pending = recon.surface.pending
    after, pending_after = [], []
    for f in frames[n_before:]:
        t0 = time.perf_counter()
        recon.process(f)
        after.append((time.perf_counter() - t0) * 1e3)
        pending_after.append(recon.surface.pending)
    drained = next((i + 1 for i, p in enumerate(pending_after) if p == 0), None)
    return {"repose_budget_ms": budget_ms, "keyframes_moved": moved,
            "frames_to_refuse": recon.stats()["surface_frames_reposed"] + recon.surface.pending,
            "apply_corrections_ms": round(apply_ms, 1), "pending_after_apply": pending,
            "frames_until_refused": drained, "step_ms_before": ms_stats(before[5:]),
            "step_ms_after": ms_stats(after)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=150, help="frames mapped before the correction")
    ap.add_argument("--after", type=int, default=40, help="frames processed after it")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    cfg = SynthConfig(width=args.width, height=args.height, n_frames=args.frames + args.after, fps=15.0,
                      depth_noise_m=0.005, depth_noise_model="quadratic", image_noise_std=2.0)
    frames = list(iter_frames(cfg))
    out = {"size": f"{args.width}x{args.height}", "frames": args.frames, "after": args.after,
           "runs": [run(frames, args.frames, b) for b in (0.0, ReconConfig().map.repose_budget_ms)]}
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
