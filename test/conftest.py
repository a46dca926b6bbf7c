"""Shared pytest fixtures and paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECON_SHARED", REPO.parent / "shared"))


def spann3r_fixture_dir() -> Path:
    """Directory of the Spann3R parity fixtures ($RECON_SPANN3R_FIXTURES overrides)."""
    return Path(os.environ.get("RECON_SPANN3R_FIXTURES", SHARED / "fixtures" / "spann3r"))


@pytest.fixture(scope="session")
def spann3r_fixtures() -> Path:
    d = spann3r_fixture_dir()
    if not d.is_dir():
        pytest.fail(f"Spann3R fixtures not found at {d} (set RECON_SPANN3R_FIXTURES)")
    return d


@pytest.fixture(scope="session")
def jazzy_bag() -> Path:
    d = SHARED / "fixtures" / "bags" / "room_jazzy_mcap"
    if not d.is_dir():
        pytest.fail(f"ROS 2 recorded bag fixture not found at {d}")
    return d
