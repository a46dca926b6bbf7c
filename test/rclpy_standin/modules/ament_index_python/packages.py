"""Test double for ament_index_python.packages: the share directory of recon_ros is the source
tree (launch/, config/, rviz/ sit where an install puts them under share/recon_ros)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[4]


class PackageNotFoundError(KeyError):
    pass


def get_package_share_directory(package_name: str) -> str:
    if package_name == "recon_ros":
        return str(REPO)
    raise PackageNotFoundError(package_name)
