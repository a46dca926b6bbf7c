"""Lost tracking and relocalization of the rgbd frontend (no GPU needed).

1. retrieval: how well the global descriptor ranks keyframes. A synthetic room loop of
   ``recon-ros synth`` (two turns); the database holds every 4th frame of the first turn, the
   queries are frames of the second turn, and the true keyframe of a query is the database
   frame nearest in pose (translation + rotation / 30 deg). Reported for the plain tf-idf
   cosine (``BowIndex.similarity()``, what scored every pair 0.8-0.9) and the centred
   descriptor used by relocalization (``BowIndex.query``): top-1 / top-3 rates and the
   spread of the scores (min / median / max per query, averaged).
2. acceptance: a 640x480 RGB-D loop (1.63 turns in 16 s at 15 Hz, depth noise 5 mm at 1 m
   growing quadratically, image noise 2 grey levels) with a 2 s blackout (black image, no
   depth) at 11 s, in the second turn, and a kidnap at 14 s (the camera is carried back to
   where it was at 5 s, half a frame off that path), run through the Reconstructor as ``recon-ros replay`` runs it. Reported: time
   from a valid view returning to the first good pose, ATE of the frames after each
   relocalization (world = first camera, no alignment, and SE(3)-aligned), keyframes and
   poses added while lost, and the fused map's accuracy against the true surface compared
   with an undisturbed run of the same length (the two runs go in parallel processes).

    nice python3 benchmarks/bench_reloc.py [--width 640 --height 480] [--skip-retrieval]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon_ros.eval.surface import evaluate_surface  # noqa: E402
from recon_ros.eval.trajectory import alignment, apply_alignment  # noqa: E402
from recon_ros.geometry.transforms import invert_T, rotation_angle_deg  # noqa: E402
from recon_ros.io.synth import make_scene  # noqa: E402
from recon_ros.io.synth.config import SynthConfig  # noqa: E402
from recon_ros.io.synth.export import ground_truth_surface  # noqa: E402
from recon_ros.io.synth.frames import iter_frames, render_frame  # noqa: E402
from recon_ros.io.synth.trajectory import blacked_out, trajectory  # noqa: E402
from recon_ros.mapping.reconstructor import ReconConfig, Reconstructor  # noqa: E402
from recon_ros.refine.matching import extract_features  # noqa: E402
from recon_ros.refine.retrieval import BowIndex  # noqa: E402


def pose_distance(Ta: np.ndarray, Tb: np.ndarray) -> float:
    D = invert_T(Ta) @ Tb
    return float(np.linalg.norm(D[:3, 3]) + rotation_angle_deg(D[:3, :3]) / 30.0)


_FEATURES: dict = {}


def bench_retrieval(width: int, height: int, vocabulary: int) -> dict:
    cfg = SynthConfig(width=width, height=height, n_frames=240, loops=2.0)
    poses = trajectory(cfg)
    db = list(range(0, 120, 4))
    queries = list(range(122, 240, 6))
    if not _FEATURES:
        scene = make_scene(cfg)
        _FEATURES.update({i: extract_features(render_frame(scene, cfg, i, poses).rgb, max_features=800)
                          for i in db + queries})
    feats = _FEATURES
    bow = BowIndex(vocabulary_size=vocabulary)
    bow.build_vocabulary([feats[i].strong() for i in db])
    for i in db:
        bow.add(i, feats[i].strong())
    out = {}
    for name in ("plain_tfidf_cosine", "centred"):
        top1 = top3 = 0
        spread = []
        for q in queries:
            true = min(db, key=lambda i: pose_distance(poses[i], poses[q]))
            bow.add(-1, feats[q].strong())  # score the query as one more indexed keyframe
            ids, S = bow.similarity(centred=name == "centred")
            del bow.counts[-1]
            row = S[ids.index(-1)]
            scores = {i: float(row[ids.index(i)]) for i in db}
            if name == "centred":  # what relocalization uses: the query against the database
                scores = dict(bow.query(feats[q].strong(), len(db)))
            order = sorted(db, key=lambda i: -scores[i])
            top1 += order[0] == true
            top3 += true in order[:3]
            s = np.array(list(scores.values()))
            spread.append((s.min(), np.median(s), s.max(), scores[true]))
        sp = np.mean(spread, axis=0)
        out[name] = {"top1": top1 / len(queries), "top3": top3 / len(queries),
                     "score_min": round(float(sp[0]), 3), "score_median": round(float(sp[1]), 3),
                     "score_max": round(float(sp[2]), 3), "score_true": round(float(sp[3]), 3)}
    out["queries"] = len(queries)
    out["database"] = len(db)
    return out


def run(cfg: SynthConfig, recon_cfg: ReconConfig) -> dict:
    """Render ``cfg`` and run it through a Reconstructor; per-frame records and the map's
    accuracy (runs in a worker process)."""
    logging.basicConfig(level=logging.ERROR)
    recon = Reconstructor(recon_cfg)
    recs = []
    t_proc = 0.0
    for f in iter_frames(cfg):
        t0 = time.perf_counter()
        step = recon.process(f)
        t_proc += time.perf_counter() - t0
        recs.append({"stamp": f.stamp_ns, "state": step.tracking, "reason": step.tracking_reason,
                     "new_kf": len(step.new_keyframes), "ms": step.timings_ms.get("total", 0.0),
                     "T_gt": f.extras["T_world_cam_gt"]})
    xyz, _, _ = recon.fused_cloud()
    gt = ground_truth_surface(make_scene(cfg), cfg, spacing=0.02, visible_only=False)
    T0 = recs[0]["T_gt"]
    world = xyz.astype(np.float64) @ T0[:3, :3].T + T0[:3, 3]
    surf = evaluate_surface(world, gt.points, threshold=0.05).report
    return {"records": recs, "traj": dict(recon.trajectory(corrected=False)), "surface": surf,
            "stats": recon.stats(), "seconds": t_proc, "keyframe_stamps": [k.stamp_ns for k in recon.keyframes()]}


def summarise(cfg: SynthConfig, out: dict, ref: dict) -> dict:
    recs = out["records"]
    stamps = np.array([r["stamp"] for r in recs])
    t = (stamps - stamps[0]) * 1e-9
    black = blacked_out(cfg)
    states = [r["state"] for r in recs]
    T0 = recs[0]["T_gt"]
    # events: a valid view returns at the first frame after the blackout and at the kidnap
    events = {}
    if cfg.blackout_s > 0:
        events["blackout"] = int(np.flatnonzero(black)[-1] + 1)
    if cfg.kidnap_at_s > 0:
        events["kidnap"] = int(np.flatnonzero(t >= cfg.kidnap_at_s - 1e-9)[0])
    report: dict = {"events": {}}
    for name, i0 in events.items():
        good = [i for i in range(i0, len(recs)) if states[i] != "lost"]
        first = good[0] if good else None
        ev = {"valid_view_at_s": round(float(t[i0]), 3),
              "recovered_at_s": None if first is None else round(float(t[first]), 3),
              "recovery_delay_s": None if first is None else round(float(t[first] - t[i0]), 3),
              "state_at_recovery": None if first is None else states[first],
              "how": None if first is None else recs[first]["reason"]}
        end = min([j for j in events.values() if j > i0] + [len(recs)])
        if first is not None:
            idx = [i for i in range(first, end) if recs[i]["stamp"] in out["traj"]]
            est = np.stack([T0 @ out["traj"][recs[i]["stamp"]] for i in idx])
            gt = np.stack([recs[i]["T_gt"] for i in idx])
            err = np.linalg.norm(est[:, :3, 3] - gt[:, :3, 3], axis=1)
            S = alignment(est[:, :3, 3], gt[:, :3, 3], "se3")
            err_al = np.linalg.norm(apply_alignment(S, est)[:, :3, 3] - gt[:, :3, 3], axis=1)
            ev["frames_after"] = len(idx)
            ev["ate_rmse_m"] = round(float(np.sqrt(np.mean(err ** 2))), 4)
            ev["ate_rmse_se3_aligned_m"] = round(float(np.sqrt(np.mean(err_al ** 2))), 4)
            ev["max_error_m"] = round(float(err.max()), 4)
        report["events"][name] = ev
    lost_stamps = {r["stamp"] for r in recs if r["state"] == "lost"}
    report["frames"] = {s: states.count(s) for s in ("tracking", "lost", "relocalized")}
    report["keyframes_while_lost"] = sum(r["new_kf"] for r in recs if r["stamp"] in lost_stamps)
    report["lost_poses_in_trajectory"] = len(lost_stamps & set(out["traj"]))
    all_idx = [i for i, r in enumerate(recs) if r["stamp"] in out["traj"]]
    err = [np.linalg.norm((T0 @ out["traj"][recs[i]["stamp"]])[:3, 3] - recs[i]["T_gt"][:3, 3]) for i in all_idx]
    report["ate_rmse_all_tracked_m"] = round(float(np.sqrt(np.mean(np.square(err)))), 4)
    for key, run_ in (("map", out), ("map_undisturbed", ref)):
        s = run_["surface"]
        report[key] = {"points": s.n_pred, "accuracy_mean_m": round(s.accuracy_mean_m, 4),
                       "accuracy_median_m": round(s.accuracy_median_m, 4),
                       "precision_5cm": round(s.precision, 4)}
    report["accuracy_change"] = round(out["surface"].accuracy_mean_m / ref["surface"].accuracy_mean_m - 1.0, 4)
    ms = np.array([r["ms"] for r in recs])
    lost_ms = np.array([r["ms"] for r in recs if r["state"] != "tracking"])
    report["step_ms"] = {"mean": round(float(ms.mean()), 1), "p95": round(float(np.percentile(ms, 95)), 1),
                         "max": round(float(ms.max()), 1),
                         "mean_lost_or_relocalized": round(float(lost_ms.mean()), 1) if len(lost_ms) else None}
    report["frontend"] = {k: v for k, v in out["stats"].items() if k.startswith("frontend_reloc")
                          or k in ("frontend_gaps", "frontend_relocalizations", "frontend_lost_frames")}
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--seconds", type=float, default=16.0, help="length of the sequence")
    ap.add_argument("--depth-noise", type=float, default=0.005, help="depth noise std at 1 m (quadratic)")
    ap.add_argument("--skip-retrieval", action="store_true")
    ap.add_argument("--skip-acceptance", action="store_true")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results: dict = {"machine": "see README"}
    if not args.skip_retrieval:
        t0 = time.perf_counter()
        results["retrieval"] = {f"vocabulary_{v}": bench_retrieval(320, 240, v) for v in (64, 256)}
        results["retrieval"]["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({"retrieval": results["retrieval"]}, indent=2), flush=True)
    if not args.skip_acceptance:
        n = int(round(args.seconds * args.fps))
        base = SynthConfig(width=args.width, height=args.height, n_frames=n, fps=args.fps,
                           loops=1.63 * args.seconds / 16.0, depth_noise_m=args.depth_noise,
                           depth_noise_model="quadratic", image_noise_std=2.0)
        # a loop of 1.63 turns never revisits a pose exactly; the kidnap lands half a frame
        # off the first turn's path
        disturbed = replace(base, blackout_start_s=11.0, blackout_s=2.0, kidnap_at_s=14.0,
                            kidnap_to_s=5.0 + 0.5 / args.fps)
        rc = ReconConfig()
        rc.frontend.name = "rgbd"
        t0 = time.perf_counter()
        with ProcessPoolExecutor(2) as pool:  # the two runs are independent
            ref_job, out_job = pool.submit(run, base, rc), pool.submit(run, disturbed, rc)
            ref, out = ref_job.result(), out_job.result()
        rep = summarise(disturbed, out, ref)
        rep["size"] = f"{args.width}x{args.height}"
        rep["frames"]["total"] = n
        rep["frames_per_s"] = {"disturbed": round(n / out["seconds"], 2), "undisturbed": round(n / ref["seconds"], 2)}
        rep["wall_s"] = round(time.perf_counter() - t0, 1)
        results["acceptance"] = rep
        print(json.dumps({"acceptance": rep}, indent=2, default=str), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
