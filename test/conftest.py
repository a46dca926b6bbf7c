"""Shared pytest fixtures and paths.

The test data lives in test/data (see test/data/README.md). ``RECON_SPANN3R_FIXTURES`` points
the Spann3R parity tests at another fixture set of the same format.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "test" / "data"


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
