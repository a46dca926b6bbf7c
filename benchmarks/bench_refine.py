#!/usr/bin/env python3
"""Timing of the background refinement stages on synthetic data.

* Sparse global alignment: wall time of a full run (coarse + fine phases) against the keyframe
  count, with synthetic correspondences (noise-free projections of random scene points, a
  drifting start, ~4 edges per keyframe including loop edges).
* MVS plane sweep: time per keyframe for a reference with 4 sources (textured plane scene).

Usage: ``python3 benchmarks/bench_refine.py [--sizes 10 50 100 200] [--device cpu|cuda|all]
[--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_ros.geometry.camera import PixelMap, make_K  # noqa: E402
from recon_ros.geometry.transforms import invert_T, make_T, rotvec_to_matrix, transform_points  # noqa: E402
from recon_ros.io.atomic import write_text_atomic  # noqa: E402
from recon_ros.mapping.frame import Keyframe  # noqa: E402
from recon_ros.refine.align import GlobalAligner  # noqa: E402
from recon_ros.refine.matching import PairMatches  # noqa: E402
from recon_ros.refine.mvs import DepthRefiner  # noqa: E402
from recon_ros.refine.schema import AlignConfig, MvsConfig  # noqa: E402

W, H = 640, 480
MODEL = 28  # pointmap grid used only for depth statistics and anchor cells


def _look(eye: np.ndarray, yaw: float) -> np.ndarray:
    z = np.array([np.sin(yaw), 0.0, np.cos(yaw)])
    x = np.array([np.cos(yaw), 0.0, -np.sin(yaw)])
    return make_T(np.stack([x, np.cross(z, x), z], 1), eye)


def synthetic_alignment_problem(n: int, matches_per_edge: int, seed: int = 0):
    """Keyframes on a loop, edges with projected correspondences, drifted starting poses."""
    rng = np.random.default_rng(seed)
    K = make_K(500.0, 500.0, (W - 1) / 2, (H - 1) / 2)
    pm = PixelMap(MODEL / W, MODEL / H, 0.0, 0.0, (W, H), (MODEL, MODEL))
    radius = max(2.0, 0.05 * n)
    poses = [_look(np.array([radius * np.cos(a), 0.0, radius * np.sin(a)]), -a + 0.3)
             for a in np.linspace(0, 2 * np.pi, n, endpoint=False)]
    kfs = []
    for i, T in enumerate(poses):
        pts = np.ones((MODEL, MODEL, 3), np.float32) * np.array([0, 0, 3.0], np.float32)
        kfs.append(Keyframe(id=i, stamp_ns=i, rgb=np.zeros((1, 1, 3), np.uint8), points_cam=pts,
                            confidence=np.ones((MODEL, MODEL), np.float32),
                            colors=np.zeros((MODEL, MODEL, 3), np.uint8), K=pm.K_to_model(K), K_image=K,
                            pixel_map=pm, T_world_cam=T, valid=np.ones((MODEL, MODEL), bool)))
    pairs = set()
    for i in range(n):
        for d in (1, 2, 4):
            if i + d < n:
                pairs.add((i, i + d))
    for i in range(0, n, max(1, n // 10)):
        pairs.add((min(i, (i + n // 2) % n), max(i, (i + n // 2) % n)))  # loop-like long edges
    edges = []
    for a, b in sorted(pairs):
        if a == b:
            continue
        m = 8 * matches_per_edge  # sample more, keep the points both cameras see
        uv = np.stack([rng.uniform(0, W, m), rng.uniform(0, H, m)], 1)
        z = rng.uniform(2.0, 4.0, m)
        Xa = np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0] * z, (uv[:, 1] - K[1, 2]) / K[1, 1] * z, z], 1)
        Xw = transform_points(poses[a], Xa)
        Xb = transform_points(invert_T(poses[b]), Xw)
        with np.errstate(divide="ignore", invalid="ignore"):
            uvb = np.stack([K[0, 0] * Xb[:, 0] / Xb[:, 2] + K[0, 2], K[1, 1] * Xb[:, 1] / Xb[:, 2] + K[1, 2]], 1)
        seen = (Xb[:, 2] > 0.5) & np.all((uvb >= 0) & (uvb < [W, H]), axis=1)
        keep = np.flatnonzero(seen)[:matches_per_edge]
        if len(keep) < 20:
            continue  # the cameras do not overlap
        edges.append(PairMatches(a, b, uv[keep] + 0.3 * rng.standard_normal((len(keep), 2)), uvb[keep],
                                 Xa[keep], Xb[keep], np.ones(len(keep)), np.eye(4), len(keep)))
    drift = np.eye(4)
    start = {}
    for i, T in enumerate(poses):
        if i:
            drift = drift @ make_T(rotvec_to_matrix(rng.normal(0, 0.003, 3)), rng.normal(0, 0.01, 3),
                                   np.exp(rng.normal(0, 0.003)))
        start[i] = drift @ T
    return kfs, edges, start


def bench_alignment(sizes, devices, matches_per_edge: int) -> list[dict]:
    rows = []
    for n in sizes:
        kfs, edges, start = synthetic_alignment_problem(n, matches_per_edge)
        for dev in devices:
            aligner = GlobalAligner(AlignConfig(device=dev))
            aligner.align(kfs[:10], [e for e in edges if e.b < 10], poses=start)  # warm-up
            if dev == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            res = aligner.align(kfs, edges, poses=start)
            if dev == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            rows.append({"stage": "align", "device": dev, "keyframes": n, "edges": len(edges),
                         "matches": int(sum(len(e) for e in edges)), "seconds": round(dt, 3),
                         "iterations": res.stats.get("coarse_iterations", 0) + res.stats.get("fine_iterations", 0),
                         "reproj_px_after": round(res.reproj_median_after, 3)})
            print(f"align  {dev:4s} N={n:4d} edges={len(edges):4d} matches={rows[-1]['matches']:7d} "
                  f"{dt:7.2f} s  iterations={rows[-1]['iterations']}  reproj={res.reproj_median_after:.3f} px",
                  flush=True)
    return rows


def _plane_keyframes(width: int, height: int, model: int, n: int = 5, seed: int = 0) -> list[Keyframe]:
    """A textured fronto-parallel plane at 3 m seen by sideways-translated cameras (exact homographies)."""
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (2048, 2048)).astype(np.float32), (0, 0), 3.0)
    tex = cv2.normalize(tex, None, 10, 245, cv2.NORM_MINMAX)
    f = 0.8 * width
    K = make_K(f, f, (width - 1) / 2, (height - 1) / 2)
    side = min(width, height)
    s = model / side
    pm = PixelMap(s, s, -(width - side) / 2 * s, -(height - side) / 2 * s, (width, height), (model, model))
    Km = pm.K_to_model(K)
    depth = 3.0
    px_per_m = 300.0
    kfs = []
    for i in range(n):
        cx = 0.15 * (i - n // 2)
        # image pixel -> plane point (x, y) -> texture pixel
        u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        x = (u - K[0, 2]) / K[0, 0] * depth + cx
        y = (v - K[1, 2]) / K[1, 1] * depth
        img = cv2.remap(tex, (x * px_per_m + 1024).astype(np.float32), (y * px_per_m + 1024).astype(np.float32),
                        cv2.INTER_LINEAR)
        rgb = np.repeat(img[..., None], 3, axis=2).astype(np.uint8)
        um, vm = np.meshgrid(np.arange(model, dtype=np.float32), np.arange(model, dtype=np.float32))
        z = depth * np.exp(0.05 * rng.standard_normal((model, model))).astype(np.float32)
        pts = np.stack([(um - Km[0, 2]) / Km[0, 0] * z, (vm - Km[1, 2]) / Km[1, 1] * z, z], -1).astype(np.float32)
        kfs.append(Keyframe(id=i, stamp_ns=i, rgb=rgb, points_cam=pts, confidence=np.ones((model, model), np.float32),
                            colors=np.zeros((model, model, 3), np.uint8), K=Km, K_image=K, pixel_map=pm,
                            T_world_cam=make_T(np.eye(3), [cx, 0.0, 0.0]), valid=np.ones((model, model), bool)))
    return kfs


def bench_mvs(devices, repeats: int = 3) -> list[dict]:
    rows = []
    for width, height, model in ((320, 240, 224), (640, 480, 224), (640, 480, 480)):
        kfs = _plane_keyframes(width, height, model)
        for dev in devices:
            refiner = DepthRefiner(MvsConfig(device=dev))
            refiner.refine(kfs, only=[2])  # warm-up
            times = []
            for _ in range(repeats):
                if dev == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                out = refiner.refine(kfs, only=[2])
                if dev == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            # refine(only=[2]) sweeps the reference and its sources (for the geometric check)
            n_sweeps = 1 + len(out[2].sources)
            per_kf = min(times) / n_sweeps
            rows.append({"stage": "mvs", "device": dev, "image": f"{width}x{height}", "grid": f"{model}x{model}",
                         "hypotheses": refiner.cfg.num_hypotheses, "sources": len(out[2].sources),
                         "seconds_per_keyframe": round(per_kf, 4),
                         "replaced_fraction": round(float(out[2].replaced.mean()), 3)})
            print(f"mvs    {dev:4s} image {width}x{height} grid {model}x{model}: {per_kf:.3f} s per keyframe "
                  f"({len(out[2].sources)} sources, {refiner.cfg.num_hypotheses} hypotheses, "
                  f"{100 * out[2].replaced.mean():.0f}% replaced)", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100, 200])
    ap.add_argument("--matches-per-edge", type=int, default=300)
    ap.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    ap.add_argument("--skip-mvs", action="store_true")
    ap.add_argument("--skip-align", action="store_true")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads for this run (0 = torch's default)")
    ap.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and args.device != "cpu" else [])
    if args.device == "cuda":
        devices = ["cuda"] if torch.cuda.is_available() else []
        if not devices:
            print("no CUDA device available", file=sys.stderr)
            return 2
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, devices {devices}")
    rows = []
    if not args.skip_align:
        rows += bench_alignment(args.sizes, devices, args.matches_per_edge)
    if not args.skip_mvs:
        rows += bench_mvs(devices)
    if args.json:
        write_text_atomic(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
