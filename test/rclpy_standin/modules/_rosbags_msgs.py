"""Test double support: message classes of a ROS package taken from the rosbags Humble typestore."""
from __future__ import annotations

from rosbags.typesys import Stores, get_typestore

_STORE = get_typestore(Stores.ROS2_HUMBLE)


def package_types(pkg: str) -> dict:
    """{'Image': class, ...} of ``pkg/msg/*``."""
    prefix = f"{pkg}/msg/"
    return {name[len(prefix):]: cls for name, cls in _STORE.types.items() if name.startswith(prefix)}


def typestore():
    return _STORE
