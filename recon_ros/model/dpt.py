"""DPT head: decoder token lists -> dense 4-channel map, and the pointmap/confidence mapping.

The head reads four entries of the 13-entry decoder list, reassembles each into a feature
map at 1/4, 1/8, 1/16 and 1/32 of the input resolution, fuses them coarse to fine with
residual conv units and bilinear (align_corners=True) upsampling, and outputs xyz + conf.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class Upsample2x(nn.Module):
    """Bilinear x2 upsampling with align_corners=True (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class ResidualConvUnit(nn.Module):
    """conv2(relu(conv1(relu(x)))) + x with biased 3x3 convolutions."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FusionBlock(nn.Module):
    """(main [+ RCU1(skip)]) -> RCU2 -> bilinear x2 -> 1x1 out_conv."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1, bias=True)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    """Projection convs (registered under two names each, as in the checkpoints) and fusion blocks."""

    def __init__(self, layer_dims: Sequence[int], features: int) -> None:
        super().__init__()
        convs = [nn.Conv2d(d, features, 3, padding=1, bias=False) for d in layer_dims]
        self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn = convs
        self.layer_rn = nn.ModuleList(convs)  # the same modules again: aliased checkpoint keys
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features)


class DPT(nn.Module):
    """Dense prediction from the hooked entries of a decoder token list."""

    def __init__(self, token_dims: Sequence[int], layer_dims: Sequence[int], hooks: Sequence[int],
                 feature_dim: int, last_dim: int, out_channels: int, patch_size: int) -> None:
        super().__init__()
        self.hooks = tuple(hooks)
        self.patch_size = patch_size
        self.scratch = Scratch(layer_dims, feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            Upsample2x(),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, out_channels, 1),
        )
        d0, d1, d2, d3 = layer_dims
        t0, t1, t2, t3 = token_dims
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(t0, d0, 1), nn.ConvTranspose2d(d0, d0, 4, stride=4)),
            nn.Sequential(nn.Conv2d(t1, d1, 1), nn.ConvTranspose2d(d1, d1, 2, stride=2)),
            nn.Sequential(nn.Conv2d(t2, d2, 1)),
            nn.Sequential(nn.Conv2d(t3, d3, 1), nn.Conv2d(d3, d3, 3, stride=2, padding=1)),
        ])

    def forward(self, tokens: Sequence[torch.Tensor], image_hw: Tuple[int, int]) -> torch.Tensor:
        gh, gw = image_hw[0] // self.patch_size, image_hw[1] // self.patch_size
        maps = []
        for i, hook in enumerate(self.hooks):
            t = tokens[hook]
            fmap = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], gh, gw)
            maps.append(self.scratch.layer_rn[i](self.act_postprocess[i](fmap)))
        l1, l2, l3, l4 = maps
        path = self.scratch.refinenet4(l4)[:, :, : l3.shape[2], : l3.shape[3]]
        path = self.scratch.refinenet3(path, l3)
        path = self.scratch.refinenet2(path, l2)
        path = self.scratch.refinenet1(path, l1)
        return self.head(path)


class DPTHead(nn.Module):
    """``downstream_head{1,2}``: the DPT module under the name ``dpt``."""

    def __init__(self, dpt: DPT) -> None:
        super().__init__()
        self.dpt = dpt

    def forward(self, tokens: Sequence[torch.Tensor], image_hw: Tuple[int, int]) -> Dict[str, torch.Tensor]:
        """Runs in float32 with autocast off; returns ``pts3d`` [B,H,W,3] and ``conf`` [B,H,W]."""
        device_type = tokens[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            out = self.dpt([t.float() for t in tokens], image_hw)
        return postprocess(out)


def postprocess(out: torch.Tensor) -> Dict[str, torch.Tensor]:
    """[B,4,H,W] -> pts3d = xyz/|xyz| * expm1(|xyz|), conf = 1 + exp(c)."""
    fmap = out.permute(0, 2, 3, 1)
    xyz = fmap[..., 0:3]
    d = xyz.norm(dim=-1, keepdim=True)
    pts = xyz / d.clamp(min=1e-8) * torch.expm1(d)
    conf = 1.0 + fmap[..., 3].exp()
    return {"pts3d": pts, "conf": conf}


def make_dpt_head(token_dims: Sequence[int], layer_dims: Sequence[int], hooks: Sequence[int],
                  feature_dim: int, last_dim: int, out_channels: int, patch_size: int) -> DPTHead:
    return DPTHead(DPT(token_dims, layer_dims, hooks, feature_dim, last_dim, out_channels, patch_size))


__all__: List[str] = ["DPTHead", "DPT", "make_dpt_head", "postprocess"]
