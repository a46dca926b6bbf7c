"""Reconstruct a recording frame by frame, exactly as the ROS node would run live.

INPUT is a rosbag2 (folder, .mcap or .db3), a ScanNet or ARKitScenes scene folder, an image
folder or a video file. Writes into --out: map.ply (fused surface points with normals),
mesh.ply (triangle mesh), occupancy.pgm + occupancy.yaml (2D grid for Nav2's map_server),
trajectory.tum (every frame), keyframes.tum + keyframes/ (keyframe records), recon_bag/ (fused
cloud, poses, path and TF for `ros2 bag play` + RViz, in recon_node's frames:
--frames.base_frame / --frames.odom_frame read the mounting and the odometry from the bag's TF
as the node does), gt_trajectory.tum when the input carries ground truth, config.yaml (the
effective configuration) and summary.json. Ctrl-C stops early and still writes complete
outputs of what was processed.

With --refine the background stages run on the refiner node's schedule (in stream time):
sparse global alignment of the keyframes re-anchors the map, MVS refinement replaces keyframe
depth where it passes the checks, and transient points leave the map; trajectory_before.tum
and map_before.ply keep the frontend-only results for comparison.

Every output folder is also a saved map (keyframes/ and state/): --resume MAP_DIR continues
it with a new recording (rgbd frontend; the first frames are relocalized in the saved map,
then mapping goes on in its frame), and with --mapping.mode localization the saved map stays
frozen and the recording is only located in it. The map folder itself is never written.

examples:
  recon-ros replay scene.bag --frontend rgbd --out out/scene
  recon-ros replay scans/scene0000_00 --checkpoint spann3r.pth --device cuda --stride 5
  recon-ros replay scene.bag --config my.yaml --map.voxel_size_m 0.01
  recon-ros replay scene.bag --frontend rgbd --refine --schedule.align_period_s 2
  recon-ros replay robot.bag --frontend rgbd --frames.base_frame base_link --frames.odom_frame odom
  recon-ros replay part2.bag --frontend rgbd --resume out/part1 --out out/both
  recon-ros replay again.bag --frontend rgbd --resume out/both --mapping.mode localization
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from recon_ros.config import add_cli_args, group
from recon_ros.refine.schema import RefineConfig, ScheduleConfig
from recon_ros.ros.schema import OutputFramesConfig


@dataclass
class FramesArgs:
    """The --frames.* flags: the output bag's TF frames, as recon_node's."""

    frames: OutputFramesConfig = group(OutputFramesConfig)


@dataclass
class RefineArgs:
    """The --refine.* and --schedule.* flags (used with --refine)."""

    refine: RefineConfig = group(RefineConfig)
    schedule: ScheduleConfig = group(ScheduleConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from recon_ros.mapping.reconstructor import ReconConfig

    parser.add_argument("input", metavar="INPUT", help="bag, dataset folder, image folder or video")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: recon_out/<input name>)")
    parser.add_argument("--config", metavar="YAML", help="configuration file (plain or ROS parameter YAML)")
    parser.add_argument("--frontend", choices=("spann3r", "rgbd"), help="shortcut for --frontend.name")
    parser.add_argument("--checkpoint", metavar="PTH", help="Spann3R weights (spann3r.pth); shortcut for --model.checkpoint")
    parser.add_argument("--device", metavar="DEV", help="torch device: auto, cpu, cuda, cuda:N (model.runtime.device)")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N input frames")
    parser.add_argument("--stride", type=int, default=1, metavar="N", help="use every N-th input frame")
    parser.add_argument("--kind", choices=("bag", "scannet", "arkitscenes", "images", "video"),
                        help="input kind (default: detected)")
    parser.add_argument("--image-topic", metavar="TOPIC", help="bag: colour topic (default: detected)")
    parser.add_argument("--camera-info-topic", metavar="TOPIC", help="bag: CameraInfo topic")
    parser.add_argument("--depth-topic", metavar="TOPIC", help="bag: aligned depth topic")
    parser.add_argument("--no-depth", action="store_true", help="ignore depth even when the input has it")
    parser.add_argument("--no-bag", action="store_true", help="do not write the output bag")
    parser.add_argument("--bag-storage", choices=("sqlite3", "mcap"), default="sqlite3",
                        help="storage of the output bag (default sqlite3, plays on Humble and Jazzy)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--refine", action="store_true",
                        help="run global alignment, MVS refinement and transient removal periodically")
    parser.add_argument("--no-transients", action="store_true", help="with --refine: keep transient points (--refine.transients.enabled false)")
    parser.add_argument("--resume", metavar="MAP_DIR",
                        help="continue the saved map in MAP_DIR (an earlier --out folder); "
                             "shortcut for --map.load_path")
    add_cli_args(parser, ReconConfig)
    add_cli_args(parser, RefineArgs)
    add_cli_args(parser, FramesArgs)


def build_config(args: argparse.Namespace):
    """The effective configuration: defaults < --config file < shortcuts < --group.name flags."""
    from recon_ros.config import apply_cli_args, load_yaml, set_value
    from recon_ros.mapping.reconstructor import ReconConfig

    cfg = load_yaml(ReconConfig, args.config) if args.config else ReconConfig()
    if args.frontend:
        set_value(cfg, "frontend.name", args.frontend)
    if args.checkpoint:
        set_value(cfg, "model.checkpoint", args.checkpoint)
    if args.device:
        set_value(cfg, "model.runtime.device", args.device)
    if args.resume:
        set_value(cfg, "map.load_path", args.resume)
    cfg = apply_cli_args(cfg, args)
    if cfg.map.load_path and not args.frontend and cfg.frontend.name == "spann3r":
        # spann3r cannot continue a map: take the frontend that made it
        from recon_ros.mapping.saved_map import read_manifest
        set_value(cfg, "frontend.name", str(read_manifest(Path(cfg.map.load_path).expanduser())["frontend"]))
    return cfg


def open_input(args: argparse.Namespace, use_depth: bool, frames: Optional[OutputFramesConfig] = None):
    from recon_ros.errors import UserInputError
    from recon_ros.io.sources import detect_source_kind, open_source

    path = Path(args.input)
    if not path.exists():
        raise UserInputError(f"input not found: {path}")
    if args.stride < 1:
        raise UserInputError(f"--stride must be >= 1, got {args.stride}")
    if args.max_frames is not None and args.max_frames < 1:
        raise UserInputError(f"--max-frames must be >= 1, got {args.max_frames}")
    kind = args.kind or detect_source_kind(path)
    opts = dict(stride=args.stride, max_frames=args.max_frames)
    if kind == "bag":
        opts.update(image_topic=args.image_topic, camera_info_topic=args.camera_info_topic,
                    depth_topic=args.depth_topic, use_depth=use_depth)
        if frames is not None:  # TF from the bag: the mounting and the odometry, as the node reads them
            opts.update(base_frame=frames.base_frame or None, odom_frame=frames.odom_frame or None)
    elif frames is not None and (frames.base_frame or frames.odom_frame):
        raise UserInputError(f"--frames.base_frame and --frames.odom_frame need TF: a bag input, not {kind}")
    return open_source(path, kind=kind, **opts)


def run(args: argparse.Namespace) -> int:
    import logging

    from recon_ros.mapping.reconstructor import Reconstructor
    from recon_ros.pipeline.replay import run_replay

    log = logging.getLogger("recon_ros.replay")
    cfg = build_config(args)
    refinement = None
    if args.refine:
        from recon_ros.config import apply_cli_args, set_value
        from recon_ros.refine.periodic import PeriodicRefinement
        rargs = apply_cli_args(RefineArgs(), args)
        if args.no_transients:
            set_value(rargs, "refine.transients.enabled", False)
        refinement = PeriodicRefinement(rargs.refine, rargs.schedule, map_cfg=cfg.map)
    from recon_ros.config import apply_cli_args
    frames = apply_cli_args(FramesArgs(), args).frames
    source = open_input(args, use_depth=not args.no_depth, frames=frames)
    out = Path(args.out) if args.out else Path("recon_out") / Path(args.input).resolve().name
    if cfg.map.load_path and out.resolve() == Path(cfg.map.load_path).expanduser().resolve():
        from recon_ros.errors import UserInputError
        raise UserInputError(f"--out {out} is the map being loaded; write to another folder "
                             "(the loaded map stays as it was saved)")
    with source:
        recon = Reconstructor(cfg)
        log.info("replaying %s with the %s frontend into %s", source.describe(), recon.frontend.name, out)
        res = run_replay(recon, source, out, total=len(source) or None, bag=not args.no_bag,
                         bag_storage=args.bag_storage, progress=not args.no_progress,
                         source_skips=source.skips, refinement=refinement, tf_frames=frames)
    st = res.stats
    print(f"{res.frames_in} frames in {res.seconds:.1f} s ({res.fps:.1f} frames/s): "
          f"{st['keyframes']} keyframes, {st['map_points']} map points, scale {st['scale']:.4f}"
          + (f", {st['skipped']} frames skipped" if st["skipped"] else ""))
    for name, path in res.files.items():
        print(f"  {name:20s} {path}")
    return 130 if res.interrupted else 0
