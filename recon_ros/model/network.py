"""Spann3R: the DUSt3R trunk plus key heads, the pointmap value encoder and memory-read norms.

``Spann3RNet`` holds the weights and computes one pair step; the per-frame loop and its
state live in :mod:`recon_ros.model.stream`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from recon_ros.model.blocks import Block, PatchEmbed
from recon_ros.model.config import ArchConfig, full_arch
from recon_ros.model.memory import InsertResult, ReadResult, SpatialMemory
from recon_ros.model.trunk import Dust3RTrunk


def _key_head(arch: ArchConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(arch.key_hidden_dim, arch.key_hidden_dim), nn.GELU(),
                         nn.Linear(arch.key_hidden_dim, arch.enc_embed_dim))


@dataclass
class PairOutput:
    """Everything one pair step (frame i, frame i+1) computes."""

    enc1: torch.Tensor  # encoder tokens of frame i
    enc2: torch.Tensor  # encoder tokens of frame i+1
    dec_in1: torch.Tensor  # tokens given to decoder 1 (frame i's encoder tokens or the memory read)
    dec1_last: torch.Tensor
    dec2_last: torch.Tensor
    feat_k1: torch.Tensor
    feat_k2: torch.Tensor
    cur_v: torch.Tensor
    res1: Dict[str, torch.Tensor]  # frame i: pts3d [B,H,W,3], conf [B,H,W] (float32)
    res2: Dict[str, torch.Tensor]  # frame i+1
    read: Optional[ReadResult]
    insert: InsertResult


class Spann3RNet(nn.Module):
    def __init__(self, arch: Optional[ArchConfig] = None) -> None:
        super().__init__()
        arch = arch or full_arch()
        self.arch = arch
        c = arch.enc_embed_dim
        self.dust3r = Dust3RTrunk(arch)
        self.value_encoder = nn.ModuleList(
            [Block(c, arch.value_num_heads, arch.mlp_ratio, arch.norm_eps) for _ in range(arch.value_depth)])
        self.value_norm = nn.LayerNorm(c, eps=arch.norm_eps)
        self.value_out = nn.Linear(c, c)
        self.pos_patch_embed = PatchEmbed(arch.patch_size, 3, c)
        self.norm_q = nn.LayerNorm(c, eps=arch.mem_norm_eps)
        self.norm_k = nn.LayerNorm(c, eps=arch.mem_norm_eps)
        self.norm_v = nn.LayerNorm(c, eps=arch.mem_norm_eps)
        self.attn_head_1 = _key_head(arch)
        self.attn_head_2 = _key_head(arch)

    # ------------------------------------------------------------------ pieces
    def encode(self, img: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        return self.dust3r.encode(img)

    def encode_value(self, pts3d: torch.Tensor) -> torch.Tensor:
        """Memory value tokens from a pointmap [B,H,W,3] (no RoPE)."""
        x, _ = self.pos_patch_embed(pts3d.permute(0, 3, 1, 2).to(self.pos_patch_embed.proj.weight.dtype))
        for blk in self.value_encoder:
            x = blk(x)
        return self.value_out(self.value_norm(x))

    def read_memory(self, memory: SpatialMemory, q: torch.Tensor) -> ReadResult:
        with torch.autocast(device_type=q.device.type, enabled=False):
            return memory.read(q.float(), self.norm_q, self.norm_k, self.norm_v)

    # ------------------------------------------------------------------ one step
    def pair_front(self, enc1: torch.Tensor, enc2: torch.Tensor, fused: torch.Tensor,
                   grid: Tuple[int, int], image_hw: Tuple[int, int]) -> "PairFront":
        """Decoders, key heads and DPT heads of one pair step (everything before the memory write)."""
        dec1, dec2 = self.dust3r.decode(fused, enc2, grid)
        feat_k1 = self.attn_head_1(torch.cat([enc1, dec1[-1]], dim=-1))
        feat_k2 = self.attn_head_2(torch.cat([enc2, dec2[-1]], dim=-1))
        res1 = self.dust3r.downstream_head1(dec1, image_hw)
        res2 = self.dust3r.downstream_head2(dec2, image_hw)
        return PairFront(dec1_last=dec1[-1], dec2_last=dec2[-1], feat_k1=feat_k1, feat_k2=feat_k2,
                         res1=res1, res2=res2)

    def memory_entry(self, pts3d1: torch.Tensor, feat_k1: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cur_v, key, value) of the memory insert from head 1's pointmap and key:
        key = feat_k1, value = cur_v + feat_k1 (both float32)."""
        cur_v = self.encode_value(pts3d1)
        return cur_v, feat_k1.float(), cur_v.float() + feat_k1.float()

    def pair_step(self, memory: SpatialMemory, enc1: torch.Tensor, img2: torch.Tensor,
                  prev_feat_k2: Optional[torch.Tensor], image_hw: Tuple[int, int]) -> PairOutput:
        """Step for the pair (frame i, frame i+1): enc1 = frame i's encoder tokens,
        prev_feat_k2 = frame i's head-2 key from the previous step (None at step 0)."""
        enc2, grid = self.encode(img2)
        read: Optional[ReadResult] = None
        if prev_feat_k2 is None:
            fused = enc1
        else:
            read = self.read_memory(memory, prev_feat_k2)
            fused = read.out.to(enc1.dtype)
        front = self.pair_front(enc1, enc2, fused, grid, image_hw)
        cur_v, key, value = self.memory_entry(front.res1["pts3d"], front.feat_k1)
        with torch.autocast(device_type=enc1.device.type, enabled=False):
            ins = memory.insert(key, value)
        return PairOutput(enc1=enc1, enc2=enc2, dec_in1=fused, dec1_last=front.dec1_last,
                          dec2_last=front.dec2_last, feat_k1=front.feat_k1, feat_k2=front.feat_k2,
                          cur_v=cur_v, res1=front.res1, res2=front.res2, read=read, insert=ins)


@dataclass
class PairFront:
    """The part of a pair step before the memory write."""

    dec1_last: torch.Tensor
    dec2_last: torch.Tensor
    feat_k1: torch.Tensor
    feat_k2: torch.Tensor
    res1: Dict[str, torch.Tensor]
    res2: Dict[str, torch.Tensor]


def build_model(arch: Optional[ArchConfig] = None, device: torch.device | str = "cpu") -> Spann3RNet:
    """Construct the network in eval mode. ``device='meta'`` allocates no memory."""
    with torch.device(device):
        model = Spann3RNet(arch)
    return model.eval()


def state_dict_shapes(model: nn.Module) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@torch.no_grad()
def init_random_weights(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Fill every parameter with a quick random initialisation (benchmarks and smoke tests only):
    normal(0, std) weights, zero biases, unit LayerNorm scales."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, nn.LayerNorm):
                p.fill_(1.0 if name == "weight" else 0.0)
            elif name == "bias":
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def build_random_model(arch: Optional[ArchConfig] = None, device: torch.device | str = "cpu",
                       seed: int = 0) -> Spann3RNet:
    """A network with random weights, built on the meta device and materialised once on ``device``."""
    model = build_model(arch, device="meta").to_empty(device=device)
    return init_random_weights(model, seed).eval()
