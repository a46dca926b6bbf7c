"""The DUSt3R trunk: ViT encoder, two lock-step cross-attending decoders, two DPT heads.

Registered as the ``dust3r`` sub-module of Spann3R; attribute order reproduces the
checkpoint's key order.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from recon_ros.model.blocks import Block, DecoderBlock, PatchEmbed
from recon_ros.model.config import ArchConfig
from recon_ros.model.dpt import DPTHead, make_dpt_head
from recon_ros.model.rope import RopeCache


class Dust3RTrunk(nn.Module):
    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        self.arch = arch
        eps = arch.norm_eps
        self.mask_token = nn.Parameter(torch.zeros(1, 1, arch.dec_embed_dim))  # unused at inference
        self.patch_embed = PatchEmbed(arch.patch_size, 3, arch.enc_embed_dim)
        self.enc_blocks = nn.ModuleList(
            [Block(arch.enc_embed_dim, arch.enc_num_heads, arch.mlp_ratio, eps) for _ in range(arch.enc_depth)])
        self.enc_norm = nn.LayerNorm(arch.enc_embed_dim, eps=eps)
        self.decoder_embed = nn.Linear(arch.enc_embed_dim, arch.dec_embed_dim)
        self.dec_blocks = nn.ModuleList(
            [DecoderBlock(arch.dec_embed_dim, arch.dec_num_heads, arch.mlp_ratio, eps)
             for _ in range(arch.dec_depth)])
        self.dec_norm = nn.LayerNorm(arch.dec_embed_dim, eps=eps)
        self.dec_blocks2 = nn.ModuleList(
            [DecoderBlock(arch.dec_embed_dim, arch.dec_num_heads, arch.mlp_ratio, eps)
             for _ in range(arch.dec_depth)])
        head_args = (arch.dpt_token_dims, arch.dpt_layer_dims, arch.dpt_hooks, arch.dpt_feature_dim,
                     arch.dpt_last_dim, arch.head_channels, arch.patch_size)
        self.downstream_head1: DPTHead = make_dpt_head(*head_args)
        self.downstream_head2: DPTHead = make_dpt_head(*head_args)
        self.rope = RopeCache(arch.rope_base)

    def encode(self, img: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """[B,3,H,W] -> encoder tokens [B, P, C_enc] (after enc_norm) and the token grid (h, w)."""
        x, grid = self.patch_embed(img)
        table = self.rope.get(grid[0], grid[1], self.arch.enc_embed_dim // self.arch.enc_num_heads, x.device)
        for blk in self.enc_blocks:
            x = blk(x, table)
        return self.enc_norm(x), grid

    def decode(self, f1: torch.Tensor, f2: torch.Tensor, grid: Tuple[int, int]
               ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Both decoders in lock step; each list holds the input then every block output (last normalised)."""
        out1, out2 = [f1], [f2]
        x1, x2 = self.decoder_embed(f1), self.decoder_embed(f2)
        table = self.rope.get(grid[0], grid[1], self.arch.dec_embed_dim // self.arch.dec_num_heads, f1.device)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            x1, x2 = blk1(x1, x2, table, table), blk2(x2, x1, table, table)
            out1.append(x1)
            out2.append(x2)
        out1[-1] = self.dec_norm(out1[-1])
        out2[-1] = self.dec_norm(out2[-1])
        return out1, out2
