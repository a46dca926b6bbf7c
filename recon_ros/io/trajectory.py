"""TUM trajectory files: ``stamp tx ty tz qx qy qz qw`` per line, camera-to-world poses.

Stamps are written in seconds with nine decimals and read back exactly to integer nanoseconds
(parsed as text, not through a float, which would lose ~0.2 us at today's epoch).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from recon_ros.errors import DataFormatError, UserInputError
from recon_ros.geometry.transforms import make_T, matrix_to_quat, quat_to_matrix
from recon_ros.io.atomic import write_text_atomic


@dataclass
class Trajectory:
    """Stamped poses: ``stamps_ns`` (N,) int64 and ``poses`` (N, 4, 4) float64 (T_world_cam)."""

    stamps_ns: np.ndarray
    poses: np.ndarray

    def __len__(self) -> int:
        return int(self.stamps_ns.shape[0])

    def nearest(self, stamp_ns: int, tolerance_ns: int) -> Optional[int]:
        """Index of the pose nearest to ``stamp_ns`` if within ``tolerance_ns``, else None."""
        if len(self) == 0:
            return None
        order = np.argsort(self.stamps_ns, kind="stable")
        s = self.stamps_ns[order]
        j = int(np.searchsorted(s, stamp_ns))
        cands = [k for k in (j - 1, j) if 0 <= k < len(s)]
        k = min(cands, key=lambda k: abs(int(s[k]) - int(stamp_ns)))
        return int(order[k]) if abs(int(s[k]) - int(stamp_ns)) <= tolerance_ns else None


def ns_to_text(ns: int) -> str:
    ns = int(ns)
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    return f"{sign}{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def text_to_ns(text: str) -> int:
    """Decimal seconds (or an exponent form) -> integer nanoseconds, exactly for plain decimals."""
    t = text.strip()
    if "e" in t.lower():
        return int(round(float(t) * 1e9))
    neg = t.startswith("-")
    t = t.lstrip("+-")
    whole, _, frac = t.partition(".")
    if not (whole or frac) or not (whole or "0").isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"not a time stamp: {text!r}")
    frac = (frac + "000000000")[:9]
    ns = int(whole or "0") * 1_000_000_000 + int(frac)
    return -ns if neg else ns


def format_tum(stamps_ns: Sequence[int], poses: np.ndarray, header: Optional[str] = None) -> str:
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
    if len(stamps_ns) != poses.shape[0]:
        raise UserInputError(f"{len(stamps_ns)} stamps for {poses.shape[0]} poses")
    q = matrix_to_quat(poses[:, :3, :3]) if len(poses) else np.zeros((0, 4))
    t = poses[:, :3, 3]
    lines = [f"# {line}" for line in (header.splitlines() if header else [])]
    lines += [f"{ns_to_text(s)} {t[i, 0]:.9f} {t[i, 1]:.9f} {t[i, 2]:.9f} "
              f"{q[i, 0]:.9f} {q[i, 1]:.9f} {q[i, 2]:.9f} {q[i, 3]:.9f}"
              for i, s in enumerate(stamps_ns)]
    return "\n".join(lines) + "\n"


def write_tum(path: Union[str, os.PathLike], stamps_ns: Sequence[int], poses: np.ndarray,
              header: Optional[str] = None) -> Path:
    """Write a TUM file atomically (``header`` lines become ``#`` comments)."""
    return write_text_atomic(path, format_tum(stamps_ns, poses, header))


def read_tum(path: Union[str, os.PathLike]) -> Trajectory:
    """Read a TUM file; ``#`` comments and blank lines are ignored."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"trajectory file {p} does not exist")
    stamps, vals = [], []
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 8:
            raise DataFormatError(f"{p}:{lineno}: a TUM line has 8 numbers (stamp tx ty tz qx qy qz qw), "
                                  f"found {len(parts)}")
        try:
            stamps.append(text_to_ns(parts[0]))
            vals.append([float(x) for x in parts[1:]])
        except ValueError:
            raise DataFormatError(f"{p}:{lineno}: not a number in {line!r}") from None
    if not vals:
        return Trajectory(np.zeros(0, dtype=np.int64), np.zeros((0, 4, 4)))
    v = np.asarray(vals)
    if not np.all(np.isfinite(v)):
        raise DataFormatError(f"{p}: the trajectory contains non-finite values")
    try:
        R = quat_to_matrix(v[:, 3:7])
    except ValueError:
        raise DataFormatError(f"{p}: the trajectory contains a zero quaternion") from None
    poses = np.stack([make_T(R[i], v[i, :3]) for i in range(len(v))])
    stamps_arr = np.asarray(stamps, dtype=np.int64)
    order = np.argsort(stamps_arr, kind="stable")  # files from other tools need not be sorted
    return Trajectory(stamps_arr[order], poses[order])
