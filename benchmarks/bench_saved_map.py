"""Saved maps: continue a map with a second recording, and localize in it (rgbd, no GPU).

A 640x480 RGB-D room loop of ``recon-ros synth`` (one turn, depth noise 5 mm at 1 m growing
quadratically, image noise 2 grey levels), run through the Reconstructor as ``recon-ros
replay`` runs it:

1. single: every frame in one run (the reference);
2. resume: the first half mapped and saved (``Reconstructor.save``, what ``--out`` writes),
   then the second half, on a clock 1,000 s later, continued from the saved folder
   (``map.load_path``, what ``--resume`` sets). Reported: frames until the second half is
   located, the ATE of both halves' trajectories together after one SE(3) alignment to the
   ground truth (and without alignment, in the first camera's frame), and the map accuracy
   against a single run (doubled walls would show as a worse accuracy);
3. localization: a second pass through the room (the loop sampled at other points) in
   ``mapping.mode: localization`` against the resumed map: ATE in the saved map's frame, and
   whether every file of the map folder is byte-identical afterwards.

    nice python3 benchmarks/bench_saved_map.py [--frames 300] [--width 640 --height 480]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon_ros.eval.surface import evaluate_surface  # noqa: E402
from recon_ros.eval.trajectory import alignment, apply_alignment  # noqa: E402
from recon_ros.io.synth import make_scene  # noqa: E402
from recon_ros.io.synth.config import SynthConfig  # noqa: E402
from recon_ros.io.synth.export import ground_truth_surface  # noqa: E402
from recon_ros.io.synth.frames import iter_frames  # noqa: E402
from recon_ros.mapping.reconstructor import ReconConfig, Reconstructor  # noqa: E402


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def feed(recon: Reconstructor, frames: list, shift_ns: int = 0) -> dict:
    """Run frames; (stamp -> gt pose), tracking states, seconds."""
    gt, states = {}, []
    t0 = time.perf_counter()
    for f in frames:
        f = replace(f, stamp_ns=f.stamp_ns + shift_ns)
        step = recon.process(f)
        states.append(step.tracking)
        gt[f.stamp_ns] = f.extras["T_world_cam_gt"]
    return {"gt": gt, "states": states, "seconds": time.perf_counter() - t0}


def ate(est: dict, gt: dict, T0: np.ndarray) -> dict:
    """ATE (m) of poses in the first camera's frame against gt: without and with SE(3) alignment."""
    stamps = sorted(set(est) & set(gt))
    E = np.stack([T0 @ est[s] for s in stamps])
    G = np.stack([gt[s] for s in stamps])
    raw = np.linalg.norm(E[:, :3, 3] - G[:, :3, 3], axis=1)
    S = alignment(E[:, :3, 3], G[:, :3, 3], "se3")
    al = np.linalg.norm(apply_alignment(S, E)[:, :3, 3] - G[:, :3, 3], axis=1)
    return {"frames": len(stamps), "rmse_m": round(float(np.sqrt(np.mean(raw ** 2))), 4),
            "rmse_se3_aligned_m": round(float(np.sqrt(np.mean(al ** 2))), 4),
            "max_m": round(float(raw.max()), 4)}


def accuracy(recon: Reconstructor, gt_points: np.ndarray, T0: np.ndarray) -> dict:
    xyz, _, _ = recon.fused_cloud()
    world = xyz.astype(np.float64) @ T0[:3, :3].T + T0[:3, 3]
    r = evaluate_surface(world, gt_points, threshold=0.02).report
    return {"points": r.n_pred, "accuracy_mean_m": round(r.accuracy_mean_m, 4),
            "completion_mean_m": round(r.completion_mean_m, 4), "precision_2cm": round(r.precision, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    cfg = SynthConfig(width=args.width, height=args.height, n_frames=args.frames, fps=15.0,
                      depth_noise_m=0.005, depth_noise_model="quadratic", image_noise_std=2.0)
    frames = list(iter_frames(cfg))
    # the second pass samples the same loop at other points (fewer frames: a faster walk)
    second_pass = list(iter_frames(replace(cfg, n_frames=int(args.frames * 0.7) + 1)))
    T0 = frames[0].extras["T_world_cam_gt"]
    gt_points = ground_truth_surface(make_scene(cfg), cfg, spacing=0.02, visible_only=False).points
    rc = ReconConfig()
    rc.frontend.name = "rgbd"
    out: dict = {"size": f"{args.width}x{args.height}", "frames": args.frames}

    single = Reconstructor(rc)
    s = feed(single, frames)
    out["single"] = {"ate": ate(dict(single.trajectory()), s["gt"], T0),
                     "map": accuracy(single, gt_points, T0), "frames_per_s": round(len(frames) / s["seconds"], 2)}
    print(json.dumps({"single": out["single"]}, indent=2), flush=True)
    del single

    half = len(frames) // 2
    with tempfile.TemporaryDirectory() as tmp:
        first = Reconstructor(rc)
        a = feed(first, frames[:half])
        t0 = time.perf_counter()
        first.save(Path(tmp) / "first")
        save_s = time.perf_counter() - t0
        traj_a = dict(first.trajectory())
        del first
        rc_b = replace(rc, map=replace(rc.map, load_path=str(Path(tmp) / "first")))
        t0 = time.perf_counter()
        second = Reconstructor(rc_b)
        load_s = time.perf_counter() - t0
        shift = 1_000 * 10**9
        b = feed(second, frames[half:], shift)
        located = next((i for i, st in enumerate(b["states"]) if st != "lost"), None)
        traj_b = dict(second.trajectory())
        both_gt = {**a["gt"], **b["gt"]}
        out["resume"] = {
            "save_s": round(save_s, 2), "load_s": round(load_s, 2),
            "second_half_located_after_frames": located,
            "lost_frames_second_half": b["states"].count("lost"),
            "ate_both_halves": ate({**traj_a, **traj_b}, both_gt, T0),
            "ate_second_half": ate(traj_b, b["gt"], T0),
            "map": accuracy(second, gt_points, T0),
            "keyframes": second.stats()["keyframes"]}
        out["resume"]["accuracy_vs_single"] = round(
            out["resume"]["map"]["accuracy_mean_m"] / out["single"]["map"]["accuracy_mean_m"] - 1.0, 4)
        print(json.dumps({"resume": out["resume"]}, indent=2), flush=True)
        second.save(Path(tmp) / "both")
        del second

        before = digest(Path(tmp) / "both")
        rc_l = replace(rc, map=replace(rc.map, load_path=str(Path(tmp) / "both")),
                       mapping=replace(rc.mapping, mode="localization"))
        loc = Reconstructor(rc_l)
        c = feed(loc, second_pass, 2_000 * 10**9)
        out["localization"] = {
            "frames": len(second_pass), "lost_frames": c["states"].count("lost"),
            "ate_in_map_frame": ate(dict(loc.trajectory()), c["gt"], T0),
            "map_files_unchanged": digest(Path(tmp) / "both") == before,
            "frames_per_s": round(len(second_pass) / c["seconds"], 2)}
        print(json.dumps({"localization": out["localization"]}, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
