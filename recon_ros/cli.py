"""The ``recon-ros`` command: the reconstruction core without ROS.

Every sub-command lives in :mod:`recon_ros.commands` and is listed in ``COMMANDS``.
Errors in the user's input are printed on one line (exit status 2), never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from recon_ros import __version__
from recon_ros.errors import ReconError

# (name, module, one-line summary)
COMMANDS: list[tuple[str, str, str]] = [
    ("demo", "recon_ros.commands.demo", "synthetic scene -> online reconstruction -> evaluation (no ROS/GPU/weights)"),
    ("replay", "recon_ros.commands.replay", "reconstruct a bag / dataset folder / images / video offline"),
    ("synth", "recon_ros.commands.synth", "make a synthetic RGB-D scene with ground truth as a rosbag2"),
    ("convert", "recon_ros.commands.convert", "convert ScanNet / ARKitScenes / images / video to a rosbag2"),
    ("eval", "recon_ros.commands.eval", "evaluate a trajectory / point cloud against ground truth"),
    ("config", "recon_ros.commands.config", "print the configuration schema as commented YAML"),
]

EPILOG = """\
examples:
  recon-ros demo                          synthetic scene -> reconstruction -> evaluation
  recon-ros <command> --help              options of one command
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recon-ros",
        description="Online learned 3D reconstruction (Spann3R) without ROS: replay bags and "
                    "datasets, make synthetic scenes, convert data to rosbag2, evaluate.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"recon-ros {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, summary in COMMANDS:
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=summary, description=(module.__doc__ or summary).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _setup_logging(args.verbose, args.quiet)
    try:
        return int(args._module.run(args) or 0)
    except ReconError as exc:
        print(f"recon-ros {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"recon-ros {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
