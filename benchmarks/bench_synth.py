"""Speed of the synthetic renderer and of the evaluation metrics (run: python3 benchmarks/bench_synth.py).

Reports wall and CPU milliseconds per call; numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from typing import Callable, Tuple

import numpy as np

from recon_ros.eval.surface import evaluate_surface
from recon_ros.eval.trajectory import evaluate_trajectory
from recon_ros.geometry.transforms import make_T, rotvec_to_matrix, transform_points
from recon_ros.io.synth import (SynthConfig, export_ground_truth, intrinsics, iter_frames,
                                make_scene, trajectory)
from recon_ros.io.synth.trajectory import frame_stamps_ns


def timed(fn: Callable[[], object], repeat: int = 1) -> Tuple[float, float]:
    """(wall ms, cpu ms) per call."""
    w, c = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - w) * 1e3 / repeat, (time.process_time() - c) * 1e3 / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--frames", type=int, default=120)
    args = ap.parse_args()
    cfg = SynthConfig(width=args.width, height=args.height, n_frames=args.frames,
                      depth_noise_m=0.002, depth_noise_model="quadratic", depth_dropout=0.01,
                      dynamic_object=True)
    scene = make_scene(cfg)
    poses, K = trajectory(cfg), intrinsics(cfg)
    print(f"synthetic scene {cfg.width}x{cfg.height}, {cfg.n_frames} frames")
    w, c = timed(lambda: list(iter_frames(cfg, scene)))
    print(f"  iter_frames (rgb + noisy depth + gt)  {w / cfg.n_frames:7.1f} ms/frame wall  {c / cfg.n_frames:7.1f} cpu")
    it = iter(range(0, cfg.n_frames, 7))
    w, c = timed(lambda: scene.render_depth(poses[next(it)], K, cfg.width, cfg.height), repeat=10)
    print(f"  render_depth only                     {w:7.1f} ms/frame wall  {c:7.1f} cpu")
    with tempfile.TemporaryDirectory() as tmp:
        w, c = timed(lambda: export_ground_truth(scene, cfg, tmp, spacing=0.02))
    print(f"  export_ground_truth (2 cm, visible)   {w / 1e3:7.2f} s wall  {c / 1e3:7.2f} cpu")

    surf = scene.sample_surface(0.02)
    rng = np.random.default_rng(0)
    pred = surf.points[rng.random(len(surf.points)) < 0.5] + rng.normal(0, 0.01, size=(1, 3))
    print(f"evaluation: {len(pred)} predicted vs {len(surf.points)} ground-truth points")
    w, c = timed(lambda: evaluate_surface(pred, surf.points, gt_normals=surf.normals))
    print(f"  evaluate_surface (PCA normals)        {w:7.0f} ms wall  {c:7.0f} cpu")
    T = make_T(rotvec_to_matrix([0.01, -0.01, 0.02]), [0.02, 0.01, -0.01])
    moved = transform_points(T, pred)
    w, c = timed(lambda: evaluate_surface(moved, surf.points, gt_normals=surf.normals, icp=True))
    print(f"  evaluate_surface + ICP                {w:7.0f} ms wall  {c:7.0f} cpu")
    stamps = frame_stamps_ns(cfg)
    w, c = timed(lambda: evaluate_trajectory(stamps, poses, stamps, poses, rpe_distance_m=1.0), repeat=20)
    print(f"  evaluate_trajectory ({cfg.n_frames} poses)      {w:7.1f} ms wall  {c:7.1f} cpu")


if __name__ == "__main__":
    main()
