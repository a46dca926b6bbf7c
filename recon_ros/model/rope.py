"""2-D rotary position embedding (RoPE) on a grid of patch tokens.

Per attention head of width D, the first D/2 channels are rotated by the token's row y and the
last D/2 by its column x. Inside each half of width h, channel j pairs with channel j + h/2
("rotate-half" layout) and turns by the angle ``p * base**(-2j/h)``, with integer positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch


def patch_positions(grid_h: int, grid_w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(grid_h*grid_w, 2) int64 positions (row y, column x) of tokens in row-major order."""
    ys, xs = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device),
                            indexing="ij")
    return torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1)


@dataclass(frozen=True)
class RopeTable:
    """cos/sin tables [N, 2, D/2] (float32) for heads of width D on one token grid."""

    cos: torch.Tensor
    sin: torch.Tensor


def rope_table(positions: torch.Tensor, head_dim: int, base: float = 100.0) -> RopeTable:
    """Tables for ``positions`` [N, 2] (y, x) and heads of width ``head_dim``."""
    if head_dim % 4 != 0:
        raise ValueError(f"RoPE-2D needs a head width divisible by 4, got {head_dim}")
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device=positions.device).float() / half))
    ang = positions.float()[..., None] * inv_freq  # [N, 2, half/2]
    ang = torch.cat((ang, ang), dim=-1)  # [N, 2, half]
    return RopeTable(ang.cos(), ang.sin())


class RopeCache:
    """Per-instance cache of :func:`rope_table` keyed by (grid, head width, device)."""

    def __init__(self, base: float = 100.0) -> None:
        self.base = float(base)
        self._tables: Dict[Tuple, RopeTable] = {}

    def get(self, grid_h: int, grid_w: int, head_dim: int, device: torch.device) -> RopeTable:
        key = (grid_h, grid_w, head_dim, str(device))
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) > 32:
                self._tables.clear()
            table = rope_table(patch_positions(grid_h, grid_w, device), head_dim, self.base)
            self._tables[key] = table
        return table


def apply_rope(x: torch.Tensor, table: RopeTable) -> torch.Tensor:
    """Rotate ``x`` [B, heads, N, D] by the positions of ``table``."""
    d = x.shape[-1]
    halves = x.unflatten(-1, (2, d // 2))  # [B, H, N, 2, half]: y half first, then x half
    a, b = halves.chunk(2, dim=-1)
    rotated = torch.cat((-b, a), dim=-1)
    out = halves * table.cos.to(x.dtype) + rotated * table.sin.to(x.dtype)
    return out.flatten(-2)
