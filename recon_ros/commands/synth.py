"""Make a synthetic RGB-D sequence with ground truth, as a rosbag2.

A procedurally textured room rendered by ray casting along a loop that returns near its start.
OUT becomes a rosbag2 folder (the topics of `recon-ros convert`: colour, camera_info, aligned
depth, static TF, ground-truth TF under gt/) with the ground truth beside the recording in
OUT/gt/: gt_surface.ply (visible static surface), gt_trajectory.tum, meta.json.

examples:
  recon-ros synth scene                          120 frames at 320x240
  recon-ros synth big --synth.width 640 --synth.height 480 --synth.depth_noise_m 0.01
  recon-ros synth moving --synth.dynamic_object true
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from recon_ros.config import add_cli_args, group
from recon_ros.io.synth.config import SynthConfig


@dataclass
class SynthArgs:
    """The --synth.* flags."""

    synth: SynthConfig = group(SynthConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="bag folder to create")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3", help="bag storage")
    parser.add_argument("--version", type=int, choices=(8, 9), default=8,
                        help="rosbag2 metadata version (8 plays on Humble and Jazzy)")
    parser.add_argument("--gt-spacing", type=float, default=0.02, metavar="M",
                        help="spacing of the ground-truth surface samples (m)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_cli_args(parser, SynthArgs)


def make_synthetic_bag(cfg, out: Path, *, storage: str = "sqlite3", version: int = 8,
                       gt_spacing: float = 0.02, overwrite: bool = False, progress: bool = True) -> dict:
    """Render ``cfg`` into a bag at ``out`` and its ground truth into ``out/gt``."""
    from recon_ros.io.convert import write_camera_bag
    from recon_ros.io.synth import export_ground_truth, iter_frames, make_scene

    scene = make_scene(cfg)
    bag = write_camera_bag(out, iter_frames(cfg, scene), storage=storage, version=version,
                           overwrite=overwrite, progress=progress, total=cfg.n_frames)
    files = export_ground_truth(scene, cfg, Path(bag) / "gt", spacing=gt_spacing)
    return {"bag": Path(bag), **files}


def run(args: argparse.Namespace) -> int:
    from recon_ros.config import apply_cli_args
    from recon_ros.errors import UserInputError

    if not args.gt_spacing > 0:
        raise UserInputError(f"--gt-spacing must be > 0, got {args.gt_spacing}")
    cfg = apply_cli_args(SynthArgs(), args).synth
    files = make_synthetic_bag(cfg, Path(args.out), storage=args.storage, version=args.version,
                               gt_spacing=args.gt_spacing, overwrite=args.overwrite,
                               progress=not args.no_progress)
    print(f"synthetic scene: {cfg.n_frames} frames at {cfg.width}x{cfg.height}")
    for name, path in files.items():
        print(f"  {name:12s} {path}")
    return 0
