"""A moving object in the fused volume: how much of it stays, and what the static surface pays.

Synthetic scenes of ``recon-ros synth`` (ground-truth poses, so that only the map is measured),
fused into the TSDF volume with the default map settings, with the free-space vote on
(``map.transients.enabled``, the default) and off (free-space carving alone):

1. moving box (``--synth.dynamic_object true``, 0.5 cm depth noise, 320x240, 120 frames) for
   two scenes (seed 0, and seed 2 with 1.3 camera loops, which sees the box at other moments):
   box points left = surface points more than 5 cm from the static surface inside the region
   the box sweeps, against the points the frames measured on the box (every pixel of the
   ground-truth dynamic mask, back-projected); the static surface's accuracy (mean distance of
   the points within 5 cm of it), recall (share of the static surface within 5 cm of a point)
   and completion (mean distance of the static surface to the points);
2. static loops at 640x480, 300 frames (seed 1, 0.5 % and 1.5 % + 5 % holes depth noise
   growing with depth squared): accuracy, precision@2cm, completion and fusion time per frame.

    python3 benchmarks/bench_moving.py [--quick] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon_ros.geometry.camera import backproject_depth  # noqa: E402
from recon_ros.geometry.transforms import transform_points  # noqa: E402
from recon_ros.io.synth import SynthConfig, ground_truth_surface, iter_frames, make_scene  # noqa: E402
from recon_ros.mapping.schema import MapConfig  # noqa: E402
from recon_ros.mapping.surface_map import SurfaceMap  # noqa: E402


def fuse(frames, enabled: bool) -> tuple[np.ndarray, float]:
    cfg = MapConfig()
    cfg.transients.enabled = enabled
    m = SurfaceMap(cfg)
    t = []
    for f in frames:
        t0 = time.perf_counter()
        m.integrate_depth(f.stamp_ns, f.depth, f.rgb, np.ones(f.depth.shape, np.float32), f.K,
                          f.extras["T_world_cam_gt"])
        t.append(time.perf_counter() - t0)
    return m.points()[0], float(np.median(t[3:]) * 1e3)


def static_metrics(xyz: np.ndarray, static: np.ndarray) -> dict:
    d = cKDTree(static).query(xyz)[0]
    dc = cKDTree(xyz).query(static)[0]
    return {"points": int(len(xyz)), "accuracy_cm": round(float(d[d < 0.05].mean()) * 100, 3),
            "precision_2cm": round(float((d < 0.02).mean()), 4),
            "recall_5cm": round(float((dc < 0.05).mean()), 4),
            "completion_cm": round(float(dc.mean()) * 100, 3)}


def moving_box(seed: int, loops: float) -> dict:
    cfg = SynthConfig(seed=seed, loops=loops, dynamic_object=True, depth_noise_m=0.005)
    scene = make_scene(cfg)
    frames = list(iter_frames(cfg, scene))
    static = ground_truth_surface(scene, cfg, 0.02).points
    box, motion = scene.solids[scene.dynamic_index], scene.motion
    lo = box.center - box.half + np.minimum(motion.start, motion.end) - 0.05
    hi = box.center + box.half + np.maximum(motion.start, motion.end) + 0.05
    measured = sum(int((f.extras["dynamic_mask"] & (f.depth > 0)).sum()) for f in frames)
    # the box as the frames measured it, thinned to the map's 2 cm voxels
    pts = []
    for f in frames:
        pc = backproject_depth(np.where(f.extras["dynamic_mask"], f.depth, 0.0), f.K).reshape(-1, 3)
        pts.append(transform_points(f.extras["T_world_cam_gt"], pc[np.isfinite(pc).all(1)].astype(np.float64)))
    pts = np.concatenate(pts)
    box_voxels = len(np.unique(np.floor(pts / 0.02).astype(np.int64), axis=0))
    tree = cKDTree(static)
    out = {"scene": f"seed {seed}, {loops} loops", "box_pixels": measured, "box_voxels_2cm": box_voxels}
    for enabled in (False, True):
        xyz, ms = fuse(frames, enabled)
        off = tree.query(xyz)[0] > 0.05
        lane = np.all((xyz >= lo) & (xyz <= hi), axis=1)
        on_static = xyz[~off]
        key = "vote" if enabled else "carving_only"
        out[key] = {"box_points": int((off & lane).sum()), "other_off_static": int((off & ~lane).sum()),
                    **static_metrics(on_static, static), "ms_per_frame": round(ms, 1)}
    return out


def static_loop(noise: float, dropout: float, n: int) -> dict:
    cfg = SynthConfig(seed=1, width=640, height=480, n_frames=300, depth_noise_m=noise,
                      depth_noise_model="quadratic", depth_dropout=dropout)
    scene = make_scene(cfg)
    static = ground_truth_surface(scene, cfg, 0.02).points
    frames = [f for i, f in zip(range(n), iter_frames(cfg, scene))]
    out = {"scene": f"640x480 loop, {noise * 100:.1f} % noise, {dropout * 100:.0f} % holes, {len(frames)} frames"}
    for enabled in (False, True):
        xyz, ms = fuse(frames, enabled)
        out["vote" if enabled else "carving_only"] = {**static_metrics(xyz, static), "ms_per_frame": round(ms, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="moving-box scenes only")
    ap.add_argument("--frames", type=int, default=300, help="frames of the static 640x480 loops")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [moving_box(0, 1.0), moving_box(2, 1.3)]
    for r in results:
        print(json.dumps(r), flush=True)
    if not args.quick:
        for noise, dropout in ((0.005, 0.0), (0.015, 0.05)):
            r = static_loop(noise, dropout, args.frames)
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
