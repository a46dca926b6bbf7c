"""The whole pipeline on a fresh machine: no ROS, no GPU, no downloads.

1. makes a synthetic RGB-D room scene with ground truth (a rosbag2),
2. replays it through the online reconstruction (the rgbd frontend; with --checkpoint the
   Spann3R frontend on the colour images),
3. evaluates trajectory and map against the ground truth,
and prints the numbers and where the map (PLY), plots and output bag are.

examples:
  recon-ros demo
  recon-ros demo --checkpoint spann3r.pth --device cuda
  recon-ros demo --frames 300 --out /tmp/demo
  recon-ros demo --frames 15 --loops 0.125 --size 160x120   (a quick check: an eighth of the loop)
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="recon_demo", metavar="DIR", help="output folder (default: recon_demo)")
    parser.add_argument("--frames", type=int, default=120, metavar="N", help="frames of the synthetic loop (default 120)")
    parser.add_argument("--loops", type=float, default=1.0, metavar="T",
                        help="turns around the room (default 1; less keeps the per-frame motion of "
                             "the default with fewer frames)")
    parser.add_argument("--size", default="320x240", metavar="WxH", help="image size (default 320x240)")
    parser.add_argument("--depth-noise", type=float, default=0.01, metavar="M",
                        help="depth noise std in metres (default 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed")
    parser.add_argument("--checkpoint", metavar="PTH", help="run the Spann3R frontend with these weights")
    parser.add_argument("--device", default="auto", help="torch device for Spann3R (default auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from recon_ros.commands.synth import make_synthetic_bag
    from recon_ros.config import set_value
    from recon_ros.errors import UserInputError
    from recon_ros.eval.report import EvalOptions, evaluate_files, summary
    from recon_ros.io.sources import open_source, parse_size
    from recon_ros.io.synth import SynthConfig
    from recon_ros.mapping.reconstructor import ReconConfig, Reconstructor
    from recon_ros.pipeline.replay import run_replay

    if args.frames < 10:
        raise UserInputError(f"--frames must be at least 10, got {args.frames}")
    w, h = parse_size(args.size)
    out = Path(args.out)
    progress = not args.no_progress
    synth = SynthConfig(seed=args.seed, width=w, height=h, n_frames=args.frames)
    set_value(synth, "loops", args.loops)
    set_value(synth, "depth_noise_m", args.depth_noise)

    print(f"[1/3] synthetic scene: {args.frames} frames at {w}x{h} ({args.loops:g} loop), "
          f"depth noise {args.depth_noise} m")
    scene = make_synthetic_bag(synth, out / "scene_bag", overwrite=True, progress=progress)

    cfg = ReconConfig()
    if args.checkpoint:
        set_value(cfg, "frontend.name", "spann3r")
        set_value(cfg, "model.checkpoint", args.checkpoint)
        set_value(cfg, "model.runtime.device", args.device)
        set_value(cfg, "scale.mode", "depth")
    else:
        set_value(cfg, "frontend.name", "rgbd")
    print(f"[2/3] online reconstruction with the {cfg.frontend.name} frontend")
    with open_source(scene["bag"]) as source:
        recon = Reconstructor(cfg)
        res = run_replay(recon, source, out / "recon", total=len(source) or None, progress=progress,
                         source_skips=source.skips)
    st = res.stats
    print(f"      {res.frames_in} frames at {res.fps:.1f} frames/s, {st['keyframes']} keyframes, "
          f"{st['map_points']} map points")

    print("[3/3] evaluation against the ground truth")
    opt = EvalOptions(align="se3" if recon.frontend.metric else "sim3")
    report = evaluate_files(out / "eval", gt_traj=str(scene["trajectory"]), traj=str(res.files["trajectory"]),
                            gt_cloud=str(scene["surface"]), cloud=str(res.files["map"]), options=opt)
    print(summary(report))
    tr = report.get("trajectory") or {}
    if tr.get("gt_length_m"):
        print(f"  ATE rmse = {100 * tr['ate_trans_m']['rmse'] / tr['gt_length_m']:.2f} % of the "
              f"{tr['gt_length_m']:.2f} m trajectory")
    print("outputs:")
    print(f"  map (PLY)        {res.files['map']}")
    print(f"  trajectory (TUM) {res.files['trajectory']}")
    print(f"  output bag       {res.files.get('bag', '(none)')}   (ros2 bag play it; RViz fixed frame: map)")
    print(f"  evaluation       {out / 'eval' / 'report.json'} + {len(report.get('plots', []))} plots")
    print(f"  input bag        {scene['bag']}")
    return 0
