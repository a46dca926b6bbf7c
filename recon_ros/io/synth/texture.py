"""Procedural, non-repeating colour textures evaluated at 3D surface points.

Colour is a function of the texture coordinate (the world point, or the object-local point for
a moving object) and the surface id, so every view of a surface sees the same pattern: what
multi-view matching and photometric tracking need. The pattern is hashed value noise at several
scales: large colour blobs with sharp edges (corners for SIFT) plus coloured fine detail (for
ZNCC). Octaves finer than the pixel footprint fade to their mean, as a camera would average them.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

_PRIMES = (np.uint32(0x9E3779B1), np.uint32(0x85EBCA77), np.uint32(0xC2B2AE3D))


def _mix32(h: np.ndarray) -> np.ndarray:
    """A 32-bit integer finaliser (xor-shift-multiply): avalanches every input bit."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def _seed_word(seed: int) -> np.uint32:
    return np.uint32((int(seed) * 0x27D4EB2F + 0x165667B1) % (1 << 32))


def value_noise(p: np.ndarray, cell: float, seed: int, channels: int = 3) -> np.ndarray:
    """``channels`` (<= 3) channels (C, N) of smooth value noise in [0, 1] at points ``p``
    (N, 3); lattice ``cell`` metres.

    Lattice values come from a hash of the integer corner coordinates (no repetition within
    2^32 cells), blended trilinearly with smoothstep weights.
    """
    q = np.asarray(p, dtype=np.float64) / cell
    i0 = np.floor(q)
    f = (q - i0).astype(np.float32)
    w = f * f * (3.0 - 2.0 * f)  # (N, 3) weight of the upper lattice corner per axis
    i0 = i0.astype(np.int64).astype(np.uint32)  # wraps modulo 2^32
    # per-axis terms of corners k and k + 1 (the product distributes modulo 2^32); corner axes
    # lead and points trail so that every operation runs over contiguous memory
    ax = [np.stack([i0[:, a] * _PRIMES[a], (i0[:, a] + np.uint32(1)) * _PRIMES[a]])
          for a in range(3)]
    h = _mix32(ax[0][:, None, None, :] ^ ax[1][None, :, None, :] ^ ax[2][None, None, :, :]
               ^ _seed_word(seed))  # (2, 2, 2, N)
    wx, wy, wz = w[:, 0], w[:, 1], w[:, 2]
    out = np.empty((channels, len(q)), dtype=np.float32)
    for ch, shift in enumerate((0, 10, 20)[:channels]):  # up to three 10-bit channels
        v = ((h >> np.uint32(shift)) & np.uint32(1023)).astype(np.float32)
        v = v[:, :, 0] + wz * (v[:, :, 1] - v[:, :, 0])
        v = v[:, 0] + wy * (v[:, 1] - v[:, 0])
        out[ch] = v[0] + wx * (v[1] - v[0])
    return out * np.float32(1.0 / 1023.0)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    s = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def make_palettes(n_surfaces: int, rng: np.random.Generator) -> np.ndarray:
    """(n_surfaces, 3, 3) saturated RGB colours in [0, 1], three per surface."""
    hue = rng.uniform(0.0, 1.0, size=(n_surfaces, 3))
    hue[:, 1:] = (hue[:, :1] + rng.uniform(0.2, 0.8, size=(n_surfaces, 2))) % 1.0
    sat = rng.uniform(0.45, 0.9, size=(n_surfaces, 3))
    val = rng.uniform(0.35, 0.95, size=(n_surfaces, 3))
    # HSV -> RGB, vectorised
    k = (np.array([5.0, 3.0, 1.0]) + hue[..., None] * 6.0) % 6.0
    rgb = val[..., None] - val[..., None] * sat[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return rgb


def shade_texture(tex_pts: np.ndarray, surface_id: np.ndarray, palettes: np.ndarray, seed: int,
                  scale: float = 1.0, footprint: Optional[np.ndarray] = None) -> np.ndarray:
    """Linear RGB in [0, 1] (N, 3) of the texture at ``tex_pts`` on surfaces ``surface_id``.

    ``footprint`` (N,) is the size (m) of one pixel on the surface; octaves smaller than about
    two pixels fade out. None means full detail (ground-truth surface colours).
    """
    pal = [palettes[:, k, :].T[:, surface_id] for k in range(3)]  # 3 x (3, N)
    blobs = value_noise(tex_pts, 0.55 * scale, seed + 11, channels=2)
    spots = value_noise(tex_pts, 0.16 * scale, seed + 23, channels=3)
    a = _smoothstep(0.42, 0.58, blobs[0])
    b = _smoothstep(0.45, 0.55, spots[1])
    base = pal[0] + a * (pal[1] - pal[0])
    base += b * (pal[2] - base)
    # coloured mid-scale detail, then luminance detail at finer scales
    tint = 0.35 * (value_noise(tex_pts, 0.07 * scale, seed + 37) - 0.5)
    lum = 0.8 + 0.4 * (spots[2] - 0.5) + 0.3 * (blobs[1] - 0.5)
    for k, (cell, amp) in enumerate(((0.03, 0.45), (0.012, 0.35), (0.005, 0.25))):
        cell *= scale
        if footprint is None:
            lum = lum + amp * (value_noise(tex_pts, cell, seed + 101 + k, channels=1)[0] - 0.5)
            continue
        fade = np.clip(cell / np.maximum(footprint, 1e-9) / 1.5 - 1.0, 0.0, 1.0)
        sel = np.flatnonzero(fade > 0)  # only where the octave is resolved
        if len(sel) == len(fade):
            lum = lum + amp * fade * (value_noise(tex_pts, cell, seed + 101 + k, channels=1)[0] - 0.5)
        elif len(sel):
            n = value_noise(tex_pts[sel], cell, seed + 101 + k, channels=1)[0] - 0.5
            lum[sel] += amp * fade[sel] * n
    col = (base + tint * (0.5 + base)) * lum
    return np.clip(col, 0.0, 1.0).T
