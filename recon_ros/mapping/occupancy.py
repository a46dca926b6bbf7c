"""A 2D occupancy grid cut from the fused surface in a height band (for Nav2 / map_server).

Input: the fused surface points and their normals (pointing to free space) in the z-up ``map``
frame. Heights are measured from the floor plane (``floor_relative``: the lowest large
upward-facing surface, fitted as a plane so that a slightly tilted ``map`` frame - the first
camera's pitch - does not tilt the band) or from ``map`` z = 0.

A cell is *occupied* when a surface point lies in the band ``[min_height_m, max_height_m]``,
*free* when the floor (an upward-facing surface below the band) was observed there and nothing
lies in the band, and *unknown* otherwise. Values follow nav_msgs/OccupancyGrid: 100, 0, -1;
cell (row 0, column 0) is at ``origin`` (its lower-left corner), rows go along +y.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from recon_ros.mapping.schema import OccupancyConfig

log = logging.getLogger(__name__)

OCCUPIED, FREE, UNKNOWN = 100, 0, -1


@dataclass
class OccupancyGrid:
    data: np.ndarray  # (rows, cols) int8: 100 occupied, 0 free, -1 unknown; row 0 at origin y
    resolution: float  # metres per cell
    origin: tuple[float, float, float]  # x, y of the lower-left corner of cell (0, 0), yaw
    floor_height: Optional[float] = None  # map z of the floor below the origin, when found

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def height(self) -> int:
        return int(self.data.shape[0])


def find_floor(points: np.ndarray, normals: np.ndarray, bin_m: float = 0.02,
               min_fraction: float = 0.05) -> Optional[tuple[np.ndarray, float]]:
    """The floor plane (unit normal n with n_z > 0, offset d: height = n . p - d) of a z-up
    cloud: the lowest height bin of upward-facing points holding at least ``min_fraction`` of
    them, refined by a least-squares plane over the points near it. None when there is none."""
    up = normals[:, 2] > np.cos(np.deg2rad(30.0))
    if np.count_nonzero(up) < 50:
        return None
    p = points[up].astype(np.float64)
    z = p[:, 2]
    lo = z.min()
    hist = np.bincount(((z - lo) / bin_m).astype(np.int64))
    cand = np.nonzero(hist >= min_fraction * len(z))[0]
    if len(cand) == 0:
        return None
    z0 = lo + (cand[0] + 0.5) * bin_m
    n, d = np.array([0.0, 0.0, 1.0]), z0
    band = 0.15
    for _ in range(3):
        near = np.abs(p @ n - d) < band
        if np.count_nonzero(near) < 30:
            break
        q = p[near]
        c = q.mean(0)
        _, _, vt = np.linalg.svd(q - c, full_matrices=False)
        n = vt[2] if vt[2, 2] > 0 else -vt[2]
        d = float(n @ c)
        band = max(0.05, band / 2)
    return n, d


def occupancy_grid(points: np.ndarray, normals: np.ndarray, cfg: OccupancyConfig,
                   resolution: float) -> OccupancyGrid:
    """The grid of a z-up surface cloud (see the module docstring)."""
    res = float(cfg.resolution_m or resolution)
    if cfg.max_height_m <= cfg.min_height_m:
        raise ValueError(f"occupancy band is empty: max_height_m {cfg.max_height_m} <= "
                         f"min_height_m {cfg.min_height_m}")
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    nrm = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return OccupancyGrid(np.full((1, 1), UNKNOWN, np.int8), res, (0.0, 0.0, 0.0))
    floor_z = None
    if cfg.floor_relative:
        plane = find_floor(pts, nrm)
        if plane is None:
            log.warning("occupancy: no floor found; heights are measured from map z = 0")
            h = pts[:, 2]
        else:
            n, d = plane
            h = pts @ n - d
            floor_z = float(d / n[2])
    else:
        h = pts[:, 2]
    lo = np.floor(pts[:, :2].min(0) / res) * res
    ij = np.floor((pts[:, :2] - lo) / res).astype(np.int64)
    cols, rows = ij.max(0) + 1
    grid = np.full((rows, cols), UNKNOWN, np.int8)
    floor = (h < cfg.min_height_m) & (nrm[:, 2] > np.cos(np.deg2rad(30.0)))
    grid[ij[floor, 1], ij[floor, 0]] = FREE
    band = (h >= cfg.min_height_m) & (h <= cfg.max_height_m)
    grid[ij[band, 1], ij[band, 0]] = OCCUPIED
    return OccupancyGrid(grid, res, (float(lo[0]), float(lo[1]), 0.0), floor_z)
