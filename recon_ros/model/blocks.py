"""Transformer building blocks: patch embedding, MLP, self/cross attention, encoder and decoder blocks.

Attribute names follow the checkpoint keys (``attn.qkv``, ``cross_attn.projq``, ``mlp.fc1``, ...).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from recon_ros.model.rope import RopeTable, apply_rope


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens [B, h*w, C] in row-major order (no norm, no position)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.proj(x)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        return x.flatten(2).transpose(1, 2), grid


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, N, C] -> [B, heads, N, C/heads]."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, d] -> [B, N, heads*d]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (q, k, v each span all heads)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Optional[RopeTable] = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Multi-head attention of x's queries over another token set (separate q/k/v projections)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                rope_q: Optional[RopeTable] = None, rope_k: Optional[RopeTable] = None) -> torch.Tensor:
        q = _heads(self.projq(query), self.num_heads)
        k = _heads(self.projk(key), self.num_heads)
        v = _heads(self.projv(value), self.num_heads)
        if rope_q is not None:
            q = apply_rope(q, rope_q)
        if rope_k is not None:
            k = apply_rope(k, rope_k)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class Block(nn.Module):
    """Pre-norm transformer block: x += Attn(LN(x)); x += MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rope: Optional[RopeTable] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Self-attention, cross-attention to the other view (normalised by ``norm_y``), MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor, rope_x: Optional[RopeTable] = None,
                rope_y: Optional[RopeTable] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope_x)
        y = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y, y, rope_x, rope_y)
        return x + self.mlp(self.norm3(x))
