"""Convert a dataset to a rosbag2 (sqlite3 or MCAP) that `ros2 bag play` and `recon-ros replay` read.

Writes colour (rgb8 Image, or jpeg CompressedImage with --compress), camera_info, aligned depth
(16UC1 mm), a static TF chain base_link -> camera_link -> camera_color_optical_frame and the
ground-truth camera trajectory as TF gt/world -> gt/camera.

examples:
  recon-ros convert scannet scans/scene0000_00 scene0000_00_bag --max-frames 300 --stride 2
  recon-ros convert arkitscenes raw/Training/41069025 arkit_bag --storage mcap --version 9
  recon-ros convert images my_photos photos_bag --fov 60 --fps 10
"""
from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["scannet", "arkitscenes", "images", "video"],
                        help="what SRC is")
    parser.add_argument("src", help="dataset folder (a ScanNet scene, an ARKitScenes video folder, a "
                                    "folder of images) or a video file")
    parser.add_argument("out", help="output bag directory (must not exist unless --overwrite)")
    parser.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3",
                        help="bag storage plugin (default sqlite3; mcap needs rosbag2_storage_mcap on Humble)")
    parser.add_argument("--version", type=int, choices=[8, 9], default=8,
                        help="rosbag2 metadata version: 8 plays on Humble and Jazzy, 9 on Jazzy only")
    parser.add_argument("--compress", action="store_true", help="write colour as jpeg CompressedImage")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--stride", type=int, default=1, help="keep every n-th input frame")
    parser.add_argument("--resize", default=None, metavar="WxH", help="resize frames, e.g. 640x480")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = parser.add_argument_group("source options")
    g.add_argument("--align", choices=["depth", "color"], default="depth",
                   help="ScanNet: resample colour onto the depth grid (default) or depth onto the colour grid")
    g.add_argument("--traj-tolerance", type=float, default=0.05,
                   help="ARKitScenes: max seconds between an image and its trajectory sample")
    g.add_argument("--fps", type=float, default=30.0, help="images: frame rate for the stamps")
    g.add_argument("--fov", type=float, default=None,
                   help="images/video: horizontal field of view in degrees (gives camera_info)")


def run(args: argparse.Namespace) -> int:
    from recon_ros.errors import UserInputError
    from recon_ros.io.convert import convert_to_bag

    if args.max_frames is not None and args.max_frames < 1:
        raise UserInputError("--max-frames must be at least 1")
    opts: dict = {}
    if args.kind == "scannet":
        opts = {"align": args.align}
    elif args.kind == "arkitscenes":
        opts = {"traj_tolerance_s": args.traj_tolerance}
    elif args.kind == "images":
        opts = {"fps": args.fps, "fov_deg": args.fov}
    elif args.kind == "video":
        opts = {"fov_deg": args.fov}
    path, source = convert_to_bag(args.kind, args.src, args.out, storage=args.storage, version=args.version,
                                  compress=args.compress, max_frames=args.max_frames, stride=args.stride,
                                  resize=args.resize, overwrite=args.overwrite,
                                  progress=not args.no_progress, source_opts=opts)
    logger.info("wrote %s%s", path,
                f" (skipped: {source.skips.summary()})" if source.skips.total else "")
    return 0
