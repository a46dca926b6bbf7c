"""Print the configuration schema as commented YAML (every parameter with its default,
documentation and range).

examples:
  recon-ros config                 the reconstruction core (for replay --config)
  recon-ros config --node          recon_node's ROS parameter file (config/recon.yaml)
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", action="store_true",
                        help="recon_node's full parameter file (core + ROS groups, /**: ros__parameters:)")
    parser.add_argument("--refiner", action="store_true", help="recon_refiner's parameter file")


def render(node: bool = False, refiner: bool = False) -> str:
    """The YAML text; ``node`` gives config/recon.yaml exactly."""
    from recon_ros.config import dump_yaml

    if refiner:
        from recon_ros.ros.schema import refiner_node_schema
        return refiner_node_schema().dump_yaml()
    if node:
        from recon_ros.ros.schema import recon_node_schema
        return recon_node_schema().dump_yaml()
    from recon_ros.mapping.reconstructor import ReconConfig
    return dump_yaml(ReconConfig, header="recon_ros core configuration (recon-ros replay --config FILE)")


def run(args: argparse.Namespace) -> int:
    print(render(node=args.node, refiner=args.refiner), end="")
    return 0
