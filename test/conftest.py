"""Shared pytest fixtures, paths and marker handling.

The test data lives in test/data (see test/data/README.md). ``RECON_SPANN3R_FIXTURES`` points
the Spann3R parity tests at another fixture set of the same format.

Tests marked ``gpu`` or ``ros`` need hardware or software a plain machine lacks: they run only
when the ``-m`` expression names their marker (``-m gpu``, ``-m ros``, ``-m "ros or gpu"``).
Any other expression, such as ``-m "not slow"``, applies on top of that default.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "test" / "data"


OPT_IN_MARKERS = ("gpu", "ros")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    expr = config.getoption("markexpr") or ""
    opt_out = [m for m in OPT_IN_MARKERS if not re.search(rf"\b{m}\b", expr)]
    drop = [it for it in items if any(it.get_closest_marker(m) for m in opt_out)]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [it for it in items if it not in drop]


def spann3r_fixture_dir() -> Path:
    """Directory of the Spann3R parity fixtures ($RECON_SPANN3R_FIXTURES overrides test/data/spann3r)."""
    return Path(os.environ.get("RECON_SPANN3R_FIXTURES") or DATA / "spann3r")


@pytest.fixture(scope="session")
def spann3r_fixtures() -> Path:
    d = spann3r_fixture_dir()
    if not d.is_dir():
        pytest.fail(f"Spann3R fixtures not found at {d} (RECON_SPANN3R_FIXTURES names another set)")
    return d


@pytest.fixture(scope="session")
def jazzy_bag() -> Path:
    """An MCAP rosbag2 recorded by ROS 2 Jazzy's ``ros2 bag record`` (8 frames, see test/data)."""
    d = DATA / "room_jazzy_mcap"
    if not d.is_dir():
        pytest.fail(f"ROS 2 recorded bag fixture not found at {d}")
    return d
