"""Map accuracy with the pipeline's own poses, against TSDF fusion with ground-truth poses.

For each 640x480 RGB-D room loop of ``recon-ros synth`` (300 frames, seed 7 by default):

1. own poses: the frames through the Reconstructor with the rgbd frontend and default settings,
   as ``recon-ros replay --frontend rgbd`` runs them; the fused map is put into the ground
   truth's frame by the SE(3) alignment of the trajectory (as ``recon-ros eval --align se3``);
2. this map fed the ground-truth poses (``SurfaceMap`` with the default map settings);
3. Open3D's TSDF (``ScalableTSDFVolume``, the same 2 cm voxels, ``--o3d-trunc`` truncation)
   fed the ground-truth poses, run with ``--open3d-python`` (an interpreter with open3d; it
   needs numpy and open3d only). Open3D 0.20.0's TSDF integration returns no points on these
   scenes; 0.19.0 works.

Every map is scored by one evaluator (``recon_ros.eval.surface.evaluate_surface``) against two
ground truths: the surface sampled every 4 mm (``--gt-spacing``; a mean distance floor of about
1.5 mm) and every 2 cm, the file ``recon-ros synth`` writes (a floor of about 0.7 cm: on
surfaces parallel to the voxel grid, zero crossings land on the sample grid and score far below
it, so this one rewards the grid's orientation rather than the map).

Cases: depth noise 0.5 % of the depth; 1.5 % of the depth and 5 % of the pixels invalid; 0.5 %
at 1 m growing with depth squared.

    nice python3 benchmarks/bench_map_accuracy.py [--frames 300] [--open3d-python /path/python] [--own-only]
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon_ros.io.ply import read_ply, write_ply  # noqa: E402
from recon_ros.io.synth import SynthConfig, iter_frames  # noqa: E402

CASES = {
    "linear_0.5%": dict(depth_noise_m=0.005, depth_noise_model="linear"),
    "linear_1.5%_holes_5%": dict(depth_noise_m=0.015, depth_noise_model="linear", depth_dropout=0.05),
    "quadratic_0.5%": dict(depth_noise_m=0.005, depth_noise_model="quadratic"),
}


def synth_config(case: str, args) -> SynthConfig:
    return SynthConfig(seed=args.seed, width=args.width, height=args.height, n_frames=args.frames,
                       **CASES[case])


def open3d_reference(case: str, args, out: Path) -> None:
    """Open3D's TSDF with ground-truth poses (numpy and open3d only: no torch)."""
    import open3d as o3d
    cfg = synth_config(case, args)
    vol = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=args.voxel, sdf_trunc=args.o3d_trunc,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8)
    for f in iter_frames(cfg):
        K = f.K
        intr = o3d.camera.PinholeCameraIntrinsic(cfg.width, cfg.height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(f.rgb)), o3d.geometry.Image(f.depth.astype(np.float32)),
            depth_scale=1.0, depth_trunc=8.0, convert_rgb_to_intensity=False)
        vol.integrate(rgbd, intr, np.linalg.inv(f.extras["T_world_cam_gt"]))
    pts = np.asarray(vol.extract_point_cloud().points)
    write_ply(out, pts if len(pts) else np.zeros((0, 3)))
    print(json.dumps({"open3d": o3d.__version__, "points": int(len(pts))}))


def score(xyz: np.ndarray, gts: dict) -> dict:
    from recon_ros.eval.surface import evaluate_surface
    out = {"points": int(len(xyz))}
    for name, (pts, normals) in gts.items():
        r = evaluate_surface(xyz, pts, threshold=0.02, gt_normals=normals).report
        out[name] = {"accuracy_cm": round(r.accuracy_mean_m * 100, 3),
                     "accuracy_median_cm": round(r.accuracy_median_m * 100, 3),
                     "precision_2cm": round(r.precision, 4),
                     "completion_cm": round(r.completion_mean_m * 100, 3)}
    return out


def run_case(case: str, args) -> dict:
    from recon_ros.eval.trajectory import alignment, apply_alignment
    from recon_ros.io.synth import ground_truth_surface, make_scene
    from recon_ros.mapping.reconstructor import ReconConfig, Reconstructor
    from recon_ros.mapping.surface_map import SurfaceMap

    cfg = synth_config(case, args)
    scene = make_scene(cfg)
    gts = {}
    for name, spacing in (("gt_dense", args.gt_spacing), ("gt_2cm", 0.02)):
        s = ground_truth_surface(scene, cfg, spacing=spacing)
        gts[name] = (s.points, s.normals)
    res: dict = {"case": case, "gt_dense_spacing_m": args.gt_spacing}

    rc = ReconConfig()
    rc.frontend.name = "rgbd"
    recon = Reconstructor(rc)
    gt_pose, t0 = {}, time.perf_counter()
    for f in iter_frames(cfg):
        recon.process(f)
        gt_pose[f.stamp_ns] = f.extras["T_world_cam_gt"]
    seconds = time.perf_counter() - t0
    est = dict(recon.trajectory())
    stamps = sorted(set(est) & set(gt_pose))
    E = np.stack([est[s] for s in stamps])
    G = np.stack([gt_pose[s] for s in stamps])
    S = alignment(E[:, :3, 3], G[:, :3, 3], "se3")
    ate = np.linalg.norm(apply_alignment(S, E)[:, :3, 3] - G[:, :3, 3], axis=1)
    xyz = recon.fused_cloud()[0].astype(np.float64)
    res["own_poses"] = {"ate_rmse_mm": round(float(np.sqrt(np.mean(ate ** 2))) * 1e3, 2),
                        "frames_per_s": round(len(stamps) / seconds, 2),
                        **score(xyz @ S[:3, :3].T + S[:3, 3], gts)}
    print(json.dumps({case: {"own_poses": res["own_poses"]}}), flush=True)
    del recon
    if args.own_only:
        return res

    m = SurfaceMap(rc.map)
    for f in iter_frames(cfg):
        m.integrate_depth(f.stamp_ns, f.depth, f.rgb, np.ones(f.depth.shape, np.float32), f.K,
                          f.extras["T_world_cam_gt"])
    res["gt_poses"] = score(m.points()[0].astype(np.float64), gts)
    print(json.dumps({case: {"gt_poses": res["gt_poses"]}}), flush=True)
    del m

    if args.open3d_python:
        with tempfile.TemporaryDirectory() as tmp:
            ply = Path(tmp) / "o3d.ply"
            cmd = [args.open3d_python, __file__, "--open3d-reference", case, "--ply", str(ply),
                   "--frames", str(args.frames), "--width", str(args.width),
                   "--height", str(args.height), "--seed", str(args.seed),
                   "--voxel", str(args.voxel), "--o3d-trunc", str(args.o3d_trunc)]
            info = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True)
                              .stdout.strip().splitlines()[-1])
            pts = read_ply(ply).points.astype(np.float64)
        res["open3d_gt_poses"] = {"version": info["open3d"], "sdf_trunc_m": args.o3d_trunc,
                                  **(score(pts, gts) if len(pts) else {"points": 0})}
        print(json.dumps({case: {"open3d_gt_poses": res["open3d_gt_poses"]}}), flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--gt-spacing", type=float, default=0.004, help="dense ground-truth spacing (m)")
    ap.add_argument("--voxel", type=float, default=0.02, help="Open3D voxel size (m): the map's default")
    ap.add_argument("--o3d-trunc", type=float, default=0.08, help="Open3D sdf_trunc (m)")
    ap.add_argument("--open3d-python", help="interpreter with open3d for the Open3D reference")
    ap.add_argument("--own-only", action="store_true",
                    help="only the own-pose run (the ground-truth-pose references do not depend on tracking)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--open3d-reference", choices=list(CASES), help=argparse.SUPPRESS)
    ap.add_argument("--ply", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.open3d_reference:
        open3d_reference(args.open3d_reference, args, args.ply)
        return 0
    logging.basicConfig(level=logging.ERROR)
    results = [run_case(c, args) for c in args.cases]
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
