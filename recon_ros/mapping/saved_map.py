"""Saved maps that can be continued (``--resume``, ``map.load_path``) or localized against.

A map folder, as ``recon-ros replay`` and the node's ``~/save_map`` write it, holds the
products (map.ply, mesh.ply, occupancy grid, trajectories) and what is needed to go on:

- ``keyframes/``: one record per keyframe (image, pointmap, confidence, K, pose);
- ``state/volume.npz``: every block of the TSDF volume (signed distance, weight, reading
  count, colour);
- ``state/relocalization.npz``: the frontend's relocalization database (keypoints lifted to
  3D, their descriptors, and the pose, depth and grey image of every database keyframe);
- ``state/manifest.json``: the format name and version, the frontend, the voxel size and the
  size and SHA-256 of every file above.

:func:`load_map` reads and checks everything into memory before anything is handed over, and
raises a one-line :class:`~recon_ros.errors.DataFormatError` when a file is missing, foreign,
corrupt or of another format version; the Reconstructor adopts a :class:`SavedMap` only
once it is complete, so a failed load never leaves a half-loaded map.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from recon_ros import __version__
from recon_ros.errors import DataFormatError
from recon_ros.io.arrays import write_npz
from recon_ros.io.atomic import atomic_path
from recon_ros.mapping.frame import Keyframe

log = logging.getLogger(__name__)

MAP_FORMAT = "recon_ros.map"
MAP_VERSION = 1
STATE_DIR = "state"
MANIFEST = "manifest.json"
VOLUME = "volume.npz"
RELOCALIZATION = "relocalization.npz"
KEYFRAMES_DIR = "keyframes"
_READ_ERRORS = (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile)


@dataclass
class SavedMap:
    """Everything a saved map folder holds for continuing it (all in memory)."""

    path: Path
    frontend: str
    voxel_size_m: float
    volume: dict[str, np.ndarray]
    relocalization: dict[str, np.ndarray]
    keyframes: list[Keyframe] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_map_state(directory: Path, *, frontend: str, voxel_size_m: float,
                   volume: dict[str, np.ndarray], relocalization: Optional[dict[str, np.ndarray]],
                   keyframe_ids: list[int]) -> Path:
    """Write ``directory/state/`` (atomically, as a whole) for a map folder whose
    ``keyframes/`` were written before; the manifest records the checksums of both."""
    directory = Path(directory)
    kf_dir = directory / KEYFRAMES_DIR
    kf_files = sorted(kf_dir.glob("*.npz")) if kf_dir.is_dir() else []
    with atomic_path(directory / STATE_DIR) as tmp:
        tmp.mkdir(parents=True)
        write_npz(tmp / VOLUME, volume, compress_floats=True)  # mostly empty voxels
        write_npz(tmp / RELOCALIZATION, relocalization or {"ids": np.zeros(0, np.int64)})
        files = {f"{STATE_DIR}/{name}": tmp / name for name in (VOLUME, RELOCALIZATION)}
        files.update({f"{KEYFRAMES_DIR}/{p.name}": p for p in kf_files})
        manifest = {
            "format": MAP_FORMAT, "version": MAP_VERSION, "recon_ros": __version__,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "frontend": frontend, "voxel_size_m": float(voxel_size_m),
            "blocks": int(len(volume["coords"])), "keyframes": [int(i) for i in keyframe_ids],
            "relocalization_keyframes": 0 if relocalization is None else int(len(relocalization["ids"])),
            "files": {name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for name, p in files.items()},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory / STATE_DIR


def read_manifest(path: Path) -> dict:
    """The manifest of a map folder, checked for format and version (one-line errors)."""
    path = Path(path)
    if not path.is_dir():
        raise DataFormatError(f"map folder not found: {path}")
    mf = path / STATE_DIR / MANIFEST
    if not mf.is_file():
        raise DataFormatError(f"{path} is not a resumable recon_ros map (no {STATE_DIR}/{MANIFEST}; "
                              "maps are written by recon-ros replay and ~/save_map)")
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"{mf} is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MAP_FORMAT:
        raise DataFormatError(f"{mf} is not a recon_ros map manifest")
    if manifest.get("version") != MAP_VERSION:
        raise DataFormatError(f"{path} is a map of format version {manifest.get('version')} "
                              f"(written by recon_ros {manifest.get('recon_ros', '?')}); this "
                              f"recon_ros {__version__} reads version {MAP_VERSION}")
    for key in ("frontend", "voxel_size_m", "files", "keyframes"):
        if key not in manifest:
            raise DataFormatError(f"{mf} lacks '{key}'")
    return manifest


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except _READ_ERRORS as exc:
        raise DataFormatError(f"{path} is unreadable ({exc})") from None


def load_map(path: Path) -> SavedMap:
    """Read and check a whole map folder (see the module docstring)."""
    from recon_ros.io.outputs import load_keyframes

    path = Path(path).expanduser()
    manifest = read_manifest(path)
    for name, meta in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise DataFormatError(f"map {path} is incomplete: {name} is missing")
        if f.stat().st_size != meta.get("bytes") or _sha256(f) != meta.get("sha256"):
            raise DataFormatError(f"map {path} is corrupt: {name} does not match its checksum")
    kf_dir = path / KEYFRAMES_DIR
    keyframes = load_keyframes(kf_dir) if kf_dir.is_dir() else []
    ids = sorted(kf.id for kf in keyframes)
    if ids != sorted(int(i) for i in manifest["keyframes"]):
        raise DataFormatError(f"map {path}: keyframes/ holds {len(ids)} keyframes, the manifest "
                              f"{len(manifest['keyframes'])}")
    saved = SavedMap(path=path, frontend=str(manifest["frontend"]),
                     voxel_size_m=float(manifest["voxel_size_m"]),
                     volume=_load_npz(path / STATE_DIR / VOLUME),
                     relocalization=_load_npz(path / STATE_DIR / RELOCALIZATION),
                     keyframes=keyframes, manifest=manifest)
    for key in ("coords", "tsdf", "weight", "count", "color", "voxel_size", "block"):
        if key not in saved.volume:
            raise DataFormatError(f"map {path}: {STATE_DIR}/{VOLUME} lacks '{key}'")
    return saved
