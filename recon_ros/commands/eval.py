"""Evaluate an estimated trajectory and/or point cloud against ground truth.

Trajectories are TUM files (stamp tx ty tz qx qy qz qw). Clouds are PLY files; a ground truth
with triangles is sampled uniformly. Writes report.json and PNG plots to --out and prints a
short summary.

examples:
  recon-ros eval --gt-traj gt.tum --traj est.tum --out eval/
  recon-ros eval --gt-traj gt.tum --traj est.tum --gt-cloud gt.ply --cloud map.ply --icp --out eval/
"""
from __future__ import annotations

import argparse

from recon_ros.errors import UserInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt-traj", metavar="GT.tum", help="ground-truth trajectory (TUM)")
    parser.add_argument("--traj", metavar="EST.tum", help="estimated trajectory (TUM)")
    parser.add_argument("--gt-cloud", metavar="GT.ply", help="ground-truth surface (PLY points or mesh)")
    parser.add_argument("--cloud", metavar="MAP.ply", help="reconstructed point cloud (PLY)")
    parser.add_argument("--align", choices=("sim3", "se3", "none"), default="sim3",
                        help="alignment of the estimate to the ground truth (default: sim3)")
    parser.add_argument("--max-dt", type=float, default=0.02, metavar="S",
                        help="largest stamp difference for matching poses, seconds (default: 0.02)")
    parser.add_argument("--rpe-delta", type=int, default=1, metavar="N",
                        help="RPE over N frames (default: 1)")
    parser.add_argument("--rpe-distance", type=float, default=None, metavar="M",
                        help="also RPE over windows of M metres of travel (%% and deg/m)")
    parser.add_argument("--threshold", type=float, default=0.05, metavar="M",
                        help="F-score distance threshold, metres (default: 0.05)")
    parser.add_argument("--icp", action="store_true",
                        help="refine the cloud alignment by point-to-point ICP before scoring")
    parser.add_argument("--icp-max-dist", type=float, default=0.1, metavar="M",
                        help="ICP max correspondence distance, metres (default: 0.1)")
    parser.add_argument("--mesh-samples", type=int, default=200_000, metavar="N",
                        help="points sampled from a mesh (PLY with faces) (default: 200000)")
    parser.add_argument("--no-plots", action="store_true", help="write report.json only")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")


def run(args: argparse.Namespace) -> int:
    from recon_ros.eval.report import EvalOptions, evaluate_files, summary

    for name, value, lo in (("--max-dt", args.max_dt, 0.0), ("--threshold", args.threshold, 0.0),
                            ("--icp-max-dist", args.icp_max_dist, 0.0)):
        if not value > lo:
            raise UserInputError(f"{name} must be > {lo:g}, got {value}")
    if args.mesh_samples < 100:
        raise UserInputError(f"--mesh-samples must be >= 100, got {args.mesh_samples}")
    opt = EvalOptions(align=args.align, max_dt_s=args.max_dt, rpe_delta_frames=args.rpe_delta,
                      rpe_distance_m=args.rpe_distance, threshold_m=args.threshold, icp=args.icp,
                      icp_max_dist_m=args.icp_max_dist, mesh_samples=args.mesh_samples,
                      plots=not args.no_plots)
    report = evaluate_files(args.out, gt_traj=args.gt_traj, traj=args.traj,
                            gt_cloud=args.gt_cloud, cloud=args.cloud, options=opt)
    print(summary(report))
    print(f"report: {args.out}/report.json" + (f" (+ {len(report['plots'])} plots)" if report["plots"] else ""))
    return 0
