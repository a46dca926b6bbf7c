"""``.npz`` files written fast: integer, boolean and text arrays compressed, floats stored.

``numpy.savez_compressed`` deflates every array at zlib level 6. Float pointmaps and
confidences barely compress (a fifth smaller) and take most of a map save's time; images and
masks compress well. :func:`write_npz` writes the same zip container ``numpy.load`` reads,
deflating (at level 1) only the arrays that gain from it.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], compress_floats: bool = False) -> Path:
    """Write ``arrays`` to ``path`` (an ``.npz`` that ``numpy.load`` reads, no pickles);
    ``compress_floats`` for float arrays that are mostly constant (a TSDF volume's empty
    voxels)."""
    path = Path(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1,
                         allowZip64=True) as zf:
        for name, value in arrays.items():
            a = np.asanyarray(value)
            entry = name + ".npy"
            if a.dtype.kind not in "biuUS" and not compress_floats:  # stored as they are
                entry = zipfile.ZipInfo(entry)
                entry.compress_type = zipfile.ZIP_STORED
            with zf.open(entry, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, a, allow_pickle=False)
    return path
